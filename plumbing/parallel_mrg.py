"""Theano's CPU MRG31k3p generator (`mrg_uniform`, used by stochastic BinaryConnect's weight draws), the same
numbers on all cores (docs/speed.md).

Theano's C code walks the output once, element i drawing from stream i mod S, reading and writing that stream's
six state words for every element: one core, and 38 % of a stochastic BinaryConnect MNIST step here. Every stream's
sequence depends only on its own state, so the loop here runs stream by stream (element s, s + S, s + 2S, ... in
that order), the streams split over OpenMP threads and each state held in registers: every sample and the final
states are bit for bit Theano's. `install()` (called by plumbing/compat.py) swaps the op's C code in.
"""
from theano.sandbox import rng_mrg

PARALLEL_MIN_ELEMENTS = 100000  # fewer samples than this: one thread (starting threads costs more)

_LOOP = """
void cpu_rng_mrg_uniform_%(dtype)s(PyArrayObject* o_sample, PyArrayObject* o_rstate,
                                   npy_int64 n_elements, int n_streams) {
    const npy_int32 M1 = 2147483647;      // 2^31 - 1
    const npy_int32 M2 = 2147462579;      // 2^31 - 21069
    const npy_int32 MASK12 = 511;         // 2^9 - 1
    const npy_int32 MASK13 = 16777215;    // 2^24 - 1
    const npy_int32 MASK2 = 65535;        // 2^16 - 1
    const npy_int32 MULT2 = 21069;
    %(dtype)s* sample_data = (%(dtype)s*) PyArray_DATA(o_sample);
    npy_int32* state_data = (npy_int32*) PyArray_DATA(o_rstate);
    #pragma omp parallel for schedule(static) if (n_elements >= %(min_elements)d)
    for (int s = 0; s < n_streams; ++s) {
        npy_int32* state = state_data + 6 * (npy_int64) s;
        npy_int32 x11 = state[0], x12 = state[1], x13 = state[2], x21 = state[3], x22 = state[4], x23 = state[5];
        npy_int32 y1, y2;
        for (npy_int64 i = s; i < n_elements; i += n_streams) {
            // component 1: x1 <- (2^22 x12 + 2^7 x13 + x13) mod M1, the same steps as Theano's loop
            y1 = ((x12 & MASK12) << 22) + (x12 >> 9) + ((x13 & MASK13) << 7) + (x13 >> 24);
            if (y1 < 0 || y1 >= M1) y1 -= M1;
            y1 += x13;
            if (y1 < 0 || y1 >= M1) y1 -= M1;
            x13 = x12; x12 = x11; x11 = y1;
            // component 2: x2 <- (2^15 x21 + 21069 x21 + 2^15 x23 + 21069 x23 + x23) mod M2
            y1 = ((x21 & MASK2) << 15) + (MULT2 * (x21 >> 16));
            if (y1 < 0 || y1 >= M2) y1 -= M2;
            y2 = ((x23 & MASK2) << 15) + (MULT2 * (x23 >> 16));
            if (y2 < 0 || y2 >= M2) y2 -= M2;
            y2 += x23;
            if (y2 < 0 || y2 >= M2) y2 -= M2;
            y2 += y1;
            if (y2 < 0 || y2 >= M2) y2 -= M2;
            x23 = x22; x22 = x21; x21 = y2;
            sample_data[i] = (x11 <= x21 ? x11 - x21 + M1 : x11 - x21) * %(norm)s;
        }
        state[0] = x11; state[1] = x12; state[2] = x13; state[3] = x21; state[4] = x22; state[5] = x23;
    }
}
"""


def _support_code(self):
    return "\n".join(_LOOP % dict(dtype=dtype, norm=norm, min_elements=PARALLEL_MIN_ELEMENTS) for dtype, norm in (
        ("npy_float32", "4.6566126e-10f"), ("npy_float64", "4.656612873077392578125e-10")))


def _compile_args(self):
    return ["-fopenmp"]


def _cache_version(self):
    return (10, "binarynet-archive parallel streams", 1)


THEANOS = {name: getattr(rng_mrg.mrg_uniform, name)
           for name in ("c_support_code", "c_compile_args", "c_code_cache_version")}  # kept for the tests


def install():
    """Replace the C loop of Theano's CPU mrg_uniform (for every graph compiled afterwards)."""
    rng_mrg.mrg_uniform.c_support_code = _support_code
    rng_mrg.mrg_uniform.c_compile_args = _compile_args
    rng_mrg.mrg_uniform.c_code_cache_version = _cache_version
