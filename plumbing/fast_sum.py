"""Batch norm's statistics, Theano's float64-accumulated sums of a float32 tensor over the batch (and pixel) axes,
with several output elements summed side by side: the same numbers, bit for bit (docs/speed.md).

    Sum{axis=[0, 2, 3], acc_dtype=float64} of x (N, C, H, W) -> (C,)       (ConvNet batch norm, per channel)
    Sum{axis=[0], acc_dtype=float64}       of x (N, J)       -> (J,)       (MLP batch norm, per unit)

Theano's loop (CAReduce) takes one output element at a time and adds its inputs into one float64 accumulator,
starting from 0, in the order n, then h, then w: one chain of dependent additions, each waiting for the last.
The replacement keeps, for every output element, exactly that chain (start 0, same inputs, same order, each
float32 widened to float64 and added with one rounding), but runs the chains of 8 neighbouring output elements
interleaved, so that the processor overlaps them. The blocks of 8 are split over OpenMP threads (from 200,000
inputs); a block's chains never cross threads, so the order stays. The result is converted to the output type as
Theano's PyArray_CopyInto does (a C cast). tests/test_fast_sum.py compares both shapes with Theano's own code.

`install()` (called by plumbing/compat.py) puts the code into every matching Sum compiled afterwards and adds a tag
to its cache version; other reductions keep Theano's code. BINARYNET_FAST_SUM=0 leaves Theano's code in place.
"""
from theano import scalar
from theano.tensor import elemwise

from plumbing.switches import switch_on

VERSION = ("binarynet-archive fast sum", 4)
SWITCH = "BINARYNET_FAST_SUM"
THEANOS = {name: getattr(elemwise.CAReduce, name) for name in ("c_code", "c_code_cache_version_apply")}
BLOCK = 8  # output elements whose chains run interleaved
PARALLEL_MIN = 200000  # inputs from which the blocks are split over OpenMP threads (Theano's openmp_elemwise_minsize)

CODE = """
{
    PyArrayObject* fs_x = <X>;
    const int fs_nd = PyArray_NDIM(fs_x);
    const npy_intp* fs_dims = PyArray_DIMS(fs_x);
    const npy_intp* fs_strides = PyArray_STRIDES(fs_x);
    /* x viewed as (N, K, H, W): a matrix (N, J) has H = W = 1 */
    const npy_intp fs_n = fs_dims[0], fs_k = fs_dims[1];
    const npy_intp fs_h = fs_nd == 4 ? fs_dims[2] : 1, fs_w = fs_nd == 4 ? fs_dims[3] : 1;
    const npy_intp fs_s0 = fs_strides[0], fs_s1 = fs_strides[1];
    const npy_intp fs_s2 = fs_nd == 4 ? fs_strides[2] : 0, fs_s3 = fs_nd == 4 ? fs_strides[3] : 0;
    if (<Z> == NULL || PyArray_NDIM(<Z>) != 1 || PyArray_DIMS(<Z>)[0] != fs_k
        || !PyArray_IS_C_CONTIGUOUS(<Z>)) {
        Py_XDECREF(<Z>);
        npy_intp fs_out_dims[1] = {fs_k};
        <Z> = (PyArrayObject*)PyArray_EMPTY(1, fs_out_dims, <OUT_TYPENUM>, 0);
        if (<Z> == NULL) {
            PyErr_SetString(PyExc_MemoryError, "fast sum: cannot allocate the output");
            <FAIL>
        }
    }
    <OUT_TYPE>* fs_out = (<OUT_TYPE>*)PyArray_DATA(<Z>);
    const char* fs_data = (const char*)PyArray_DATA(fs_x);
    const npy_intp fs_blocks = (fs_k + <BLOCK> - 1) / <BLOCK>;
    #pragma omp parallel for schedule(static) if (fs_n * fs_k * fs_h * fs_w >= <PARALLEL_MIN>)
    for (npy_intp fs_block = 0; fs_block < fs_blocks; fs_block++) {
        const npy_intp fs_k0 = fs_block * <BLOCK>;
        const int fs_nb = fs_k - fs_k0 < <BLOCK> ? (int)(fs_k - fs_k0) : <BLOCK>;
        double fs_acc[<BLOCK>];
        for (int b = 0; b < <BLOCK>; b++) fs_acc[b] = 0;
        for (npy_intp n = 0; n < fs_n; n++) {
            for (npy_intp i = 0; i < fs_h; i++) {
                for (npy_intp j = 0; j < fs_w; j++) {
                    const char* fs_p = fs_data + n * fs_s0 + fs_k0 * fs_s1 + i * fs_s2 + j * fs_s3;
                    if (fs_nb == <BLOCK>) {
#pragma GCC unroll <BLOCK>
                        for (int b = 0; b < <BLOCK>; b++)
                            fs_acc[b] = fs_acc[b] + (double)*(const npy_float32*)(fs_p + b * fs_s1);
                    } else {
                        for (int b = 0; b < fs_nb; b++)
                            fs_acc[b] = fs_acc[b] + (double)*(const npy_float32*)(fs_p + b * fs_s1);
                    }
                }
            }
        }
        for (int b = 0; b < fs_nb; b++) fs_out[fs_k0 + b] = (<OUT_TYPE>)fs_acc[b];
    }
}
"""


def matches(op, node):
    """True for a float64-accumulated sum of a float32 (N, C, H, W) over axes (0, 2, 3) or (N, J) over axis 0."""
    x, out = node.inputs[0], node.outputs[0]
    axes = tuple(sorted(op.axis)) if op.axis is not None else None
    return (isinstance(op.scalar_op, scalar.Add) and getattr(op, "acc_dtype", None) == "float64"
            and x.dtype == "float32" and out.dtype in ("float32", "float64")
            and ((x.ndim == 4 and axes == (0, 2, 3)) or (x.ndim == 2 and axes == (0,))))


def _c_code(self, node, name, inames, onames, sub):
    if not matches(self, node):
        return THEANOS["c_code"](self, node, name, inames, onames, sub)
    out_type, typenum = {"float32": ("npy_float32", "NPY_FLOAT32"), "float64": ("npy_float64", "NPY_FLOAT64")}[
        node.outputs[0].dtype]
    fields = {"<X>": inames[0], "<Z>": onames[0], "<FAIL>": sub["fail"], "<OUT_TYPE>": out_type,
              "<OUT_TYPENUM>": typenum, "<BLOCK>": str(BLOCK), "<PARALLEL_MIN>": str(PARALLEL_MIN)}
    code = CODE
    for field, value in fields.items():
        code = code.replace(field, value)
    return code


def _compile_args(self):
    """OpenMP for the block loop. Theano's CAReduce declares no compile arguments of its own."""
    return ["-fopenmp"]


def _cache_version(self, node):
    version = THEANOS["c_code_cache_version_apply"](self, node)
    if not version or not matches(self, node):
        return version
    return tuple(version) + VERSION


def enabled():
    """False where BINARYNET_FAST_SUM=0 asks for Theano's own loop."""
    return switch_on(SWITCH)


def install():
    """Swap the loop of matching sums (for every graph compiled afterwards), unless switched off."""
    if not enabled():
        return
    elemwise.CAReduce.c_code = _c_code
    elemwise.CAReduce.c_code_cache_version_apply = _cache_version
    elemwise.CAReduce.c_compile_args = _compile_args
