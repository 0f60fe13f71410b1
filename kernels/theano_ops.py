"""Theano ops and a Lasagne dense layer running on the CPU kernels (ORIGINALS.md §4.4, CPU instead of GPU).

    XnorGemm()(a, b)     = sign(a) . sign(b) as float32, sign(0) = +1   (XNOR-popcount GEMM, kernels.cpu)
    BaselineGemm()(a, b) = a . b as float32                               (naive tiled C GEMM, kernels.cpu)

Both take two float32 matrices and are inference-only, as in the original: asking for their gradient
raises NoGradientError.  Import `compat` before this module (it configures Theano).
"""
from plumbing import compat  # noqa: F401  (Theano flags must be set before theano is imported)
from plumbing.compat import T, lasagne, theano

from kernels import cpu
from kernels.cpu import KernelError

__all__ = ["XnorGemm", "BaselineGemm", "DenseLayer", "NoGradientError", "KernelError", "KERNELS"]

KERNELS = ("blas", "baseline", "xnor")


class NoGradientError(KernelError):
    """A gradient was requested through an inference-only op."""


class _CpuGemm(theano.Op):
    """Common part: two float32 matrices in, one float32 matrix (rows of a, columns of b) out."""

    __props__ = ("threads",)

    def __init__(self, threads=None):
        self.threads = threads

    def make_node(self, a, b):
        a, b = T.as_tensor_variable(a), T.as_tensor_variable(b)
        for name, v in (("a", a), ("b", b)):
            if v.ndim != 2 or v.dtype != "float32":
                raise KernelError(f"{type(self).__name__} input '{name}' must be a float32 matrix, got {v.dtype} "
                                  f"with {v.ndim} dimensions (cast with T.cast(x, 'float32'))")
        out = T.TensorType("float32", (a.broadcastable[0], b.broadcastable[1]))()
        return theano.Apply(self, [a, b], [out])

    def infer_shape(self, node, shapes):
        return [(shapes[0][0], shapes[1][1])]

    def grad(self, inputs, output_grads):
        raise NoGradientError(f"{type(self).__name__} is inference-only (as in the original run-time code) and has no "
                              "gradient; train with T.dot and swap the kernel in at test time")

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = self.compute(*inputs)


class XnorGemm(_CpuGemm):
    """sign(a) . sign(b) with sign(0) = +1, as float32 (exact integers); XNOR-popcount GEMM, packing included."""

    __props__ = ("threads", "path")

    def __init__(self, threads=None, path="auto"):
        super(XnorGemm, self).__init__(threads)
        self.path = path

    def compute(self, a, b):
        return cpu.xnor_gemm(a, b, threads=self.threads, path=self.path)


class BaselineGemm(_CpuGemm):
    """a . b as float32 with the paper-style naive baseline kernel (scalar 16x16-tiled loops)."""

    def compute(self, a, b):
        return cpu.baseline_gemm(a, b, threads=self.threads)


class DenseLayer(lasagne.layers.DenseLayer):
    """Lasagne dense layer whose product is chosen by `kernel` (§4.4): nonlinearity(input . W + b).

    kernel='blas' uses T.dot (the BLAS Theano links, MKL via compat; the original's "theano"), 'baseline' the
    BaselineGemm op and 'xnor' the XnorGemm op (signs of input and W only).  The last two are inference-only.
    """

    def __init__(self, incoming, num_units, kernel="blas", **kwargs):
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        super(DenseLayer, self).__init__(incoming, num_units, **kwargs)
        self.kernel = kernel

    def product(self, x):
        if self.kernel == "xnor":
            return XnorGemm()(x, self.W)
        if self.kernel == "baseline":
            return BaselineGemm()(x, self.W)
        return T.dot(x, self.W)

    def get_output_for(self, input, **kwargs):
        if input.ndim > 2:
            input = input.flatten(2)
        activation = self.product(input)
        if self.b is not None:
            activation = activation + self.b.dimshuffle("x", 0)
        return self.nonlinearity(activation)
