"""BinaryNet's binary x binary convolution through the XNOR-popcount GEMM, the same numbers as Theano's CorrMM.

    XnorConv2D(pad=(p, q))(x, w) == theano.tensor.nnet.corr.CorrMM(border_mode=(p, q))(x, w)
                                    for x, w with every element +1 or -1 (stride 1, dilation 1, one group)

Why it is exact (docs/speed.md, "What changed"): CorrMM sums products of +1, -1 and the zeros of its padding; every
partial sum is an integer of magnitude <= K = C * kh * kw < 2^24, so its float32 result is that integer whatever the
order of the sums, and so is ours:
- each pixel's channel signs are packed into whole 64-bit words (NHWC bits, bit c = [x[c] >= 0]); the K-bit row of
  an output position is the kh * kw word runs of the pixels under the kernel, the weights are packed in the same
  (i, j, c) order, so one XNOR-popcount GEMM gives  sum over taps of (matches - mismatches);
- channel positions past C are 0 bits in both operands: kh * kw * (64 * words - C) matches too many, subtracted;
- padding pixels are all +1 bits (real channels), so a padded tap (i, j) adds S[m, i, j] = sum_c w[m, c, i, j]
  where CorrMM adds 0: correction[m, y, x] = sum of S[m, i, j] over the taps of (y, x) that fall into the padding,
  subtracted (zero away from the border).
The gradients are Theano's own: grad returns the CorrMM_gradInputs and CorrMM_gradWeights that CorrMM.grad builds.
"""
from plumbing import compat  # noqa: F401  (Theano flags must be set before theano is imported)
from plumbing.compat import T, np, theano
from theano.tensor.nnet.corr import CorrMM

from kernels import cpu
from kernels.cpu import KernelError

__all__ = ["XnorConv2D", "xnor_conv2d", "pack_pixels", "pack_filters", "border_correction"]


def _words(channels):
    return (channels + 63) // 64


def pack_pixels(x, pad, threads=None):
    """Signs of x (N, C, H, W) as uint64 (N, H + 2p, W + 2q, words): bit c of a pixel's words = [x[c] >= 0];
    padding pixels have bits 0..C-1 set; bits past C are 0. Each image is the (C, H * W) matrix whose columns
    kernels.cpu.pack_cols packs (C code, several times faster than NumPy's packbits on the transposed tensor)."""
    n, c, h, w = x.shape
    p, q = pad
    words = _words(c)
    out = np.empty((n, h + 2 * p, w + 2 * q, words), dtype=np.uint64)
    if p or q:
        out[...] = _padding_word_run(c)
    x = np.ascontiguousarray(x, dtype=np.float32)
    for i in range(n):
        out[i, p:p + h, q:q + w] = cpu.pack_cols(x[i].reshape(c, h * w), threads=threads).reshape(h, w, words)
    return out


def _padding_word_run(channels):
    """The words of a padding pixel: bits 0..C-1 set, the bits past C zero."""
    bits = np.zeros(64 * _words(channels), dtype=bool)
    bits[:channels] = True
    return _bytes_to_words(np.packbits(bits, bitorder="little"), channels)


def pack_filters(w):
    """Signs of w (M, C, kh, kw) as uint64 (M, kh * kw * words), taps in (i, j) order, channels as pack_pixels."""
    m, c, kh, kw = w.shape
    packed = _bytes_to_words(np.packbits(w.transpose(0, 2, 3, 1) >= 0, axis=-1, bitorder="little"), c)
    return packed.reshape(m, kh * kw * _words(c))


def _bytes_to_words(packed, channels):
    """Little-endian bytes (..., ceil(C/8)) -> uint64 words (..., ceil(C/64)), zero bytes appended."""
    nbytes = 8 * _words(channels)
    if packed.shape[-1] != nbytes:
        packed = np.concatenate([packed, np.zeros(packed.shape[:-1] + (nbytes - packed.shape[-1],), np.uint8)], -1)
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def unfold_words(pixels, kh, kw, out_h, out_w):
    """The packed im2col: (N * out_h * out_w, kh * kw * words), row (n, y, x) = the word runs of pixels
    (y + i, x + j) of the padded image for i < kh, j < kw."""
    n, _, _, words = pixels.shape
    s = pixels.strides
    view = np.lib.stride_tricks.as_strided(pixels, (n, out_h, out_w, kh, kw, words),
                                           (s[0], s[1], s[2], s[1], s[2], s[3]), writeable=False)
    return view.reshape(n * out_h * out_w, kh * kw * words)


def border_correction(w, image_shape, pad):
    """float32 (M, out_h, out_w): sum of S[m, i, j] = sum_c w[m, c, i, j] over the taps (i, j) whose input pixel
    (y + i - p, x + j - q) lies in the padding."""
    m, _, kh, kw = w.shape
    h, wd = image_shape
    p, q = pad
    out_h, out_w = h + 2 * p - kh + 1, wd + 2 * q - kw + 1
    # S[m, i, j] as a product with a row of ones (10x faster than NumPy's sum over the middle axis); exact in any
    # order: integers of magnitude <= C < 2^24
    taps = np.matmul(np.ones((1, w.shape[1]), np.float32), w.reshape(m, w.shape[1], kh * kw)).reshape(m, kh, kw)
    ys, xs = np.arange(out_h), np.arange(out_w)
    corr = np.zeros((m, out_h, out_w), dtype=np.float32)
    for i in range(kh):
        outside_y = (ys + i - p < 0) | (ys + i - p >= h)
        for j in range(kw):
            outside_x = (xs + j - q < 0) | (xs + j - q >= wd)
            outside = outside_y[:, None] | outside_x[None, :]
            if outside.any():
                corr += taps[:, i, j, None, None] * outside[None]
    return corr


def xnor_conv2d(x, w, pad, threads=None):
    """CorrMM(border_mode=pad)(x, w) for x (N, C, H, W), w (M, C, kh, kw) of +1/-1 float32, in NumPy + C."""
    n, c, h, wd = x.shape
    m, c_w, kh, kw = w.shape
    p, q = pad
    out_h, out_w = h + 2 * p - kh + 1, wd + 2 * q - kw + 1
    if c != c_w or out_h < 1 or out_w < 1:
        raise KernelError(f"XnorConv2D: image {x.shape} and filters {w.shape} with pad {pad} give no output "
                          "(channels must match, the padded image must hold the kernel)")
    words = _words(c)
    k_bits = kh * kw * words * 64
    rows = unfold_words(pack_pixels(x, pad, threads), kh, kw, out_h, out_w)
    filters = pack_filters(w)
    out = np.empty((n, m, out_h, out_w), dtype=np.float32)
    if n * out_h * out_w == 0 or m == 0:
        return out
    flat = cpu.xnor_gemm_packed(filters, rows, k_bits, threads=threads)  # (M, N * out_h * out_w)
    extra = np.float32(kh * kw * (64 * words - c)) + border_correction(w, (h, wd), pad)  # (M, out_h, out_w)
    np.subtract(flat.reshape(m, n, out_h, out_w).transpose(1, 0, 2, 3), extra[None], out=out)
    return out


class XnorConv2D(theano.Op):
    """CorrMM(border_mode=pad, subsample=(1, 1)) for +1/-1 inputs and filters, forward by XNOR-popcount, gradients
    by Theano's CorrMM_gradInputs / CorrMM_gradWeights (ORIGINALS.md §4: BinaryNet's binary products)."""

    __props__ = ("border_mode", "subsample", "filter_dilation")

    def __init__(self, border_mode=(0, 0), subsample=(1, 1), filter_dilation=(1, 1)):
        border_mode, subsample, filter_dilation = tuple(border_mode), tuple(subsample), tuple(filter_dilation)
        if len(border_mode) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in border_mode):
            raise KernelError(f"XnorConv2D border_mode must be two non-negative integers, got {border_mode!r}")
        if subsample != (1, 1) or filter_dilation != (1, 1):
            raise KernelError(f"XnorConv2D supports stride 1 and dilation 1 only, got subsample {subsample} and "
                              f"filter_dilation {filter_dilation} (use CorrMM)")
        self.border_mode = tuple(int(v) for v in border_mode)
        self.subsample, self.filter_dilation = subsample, filter_dilation

    def _corr(self):
        return CorrMM(border_mode=self.border_mode, subsample=self.subsample, filter_dilation=self.filter_dilation)

    def make_node(self, x, w):
        x, w = T.as_tensor_variable(x), T.as_tensor_variable(w)
        for name, v in (("x", x), ("w", w)):
            if v.ndim != 4 or v.dtype != "float32":
                raise KernelError(f"XnorConv2D input '{name}' must be a float32 4-D tensor, got {v.dtype} with "
                                  f"{v.ndim} dimensions")
        out = T.TensorType("float32", (x.broadcastable[0], w.broadcastable[0], False, False))()
        return theano.Apply(self, [x, w], [out])

    def infer_shape(self, node, shapes):
        (n, _, h, wd), (m, _, kh, kw) = shapes
        p, q = self.border_mode
        return [(n, m, h + 2 * p - kh + 1, wd + 2 * q - kw + 1)]

    def perform(self, node, inputs, output_storage):
        x, w = inputs
        output_storage[0][0] = xnor_conv2d(x, w, self.border_mode)

    def grad(self, inputs, output_grads):
        """Exactly the ops of CorrMM.grad: CorrMM_gradInputs(w, gz, x.shape[-2:]), CorrMM_gradWeights(x, gz,
        w.shape[-2:]) with this op's border_mode, subsample and filter_dilation."""
        return self._corr().grad(inputs, output_grads)
