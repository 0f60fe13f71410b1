"""Theano's CPU MRG31k3p generator (`mrg_uniform`, used by stochastic BinaryConnect's weight draws), the same
numbers on all cores and in SIMD lanes (docs/speed.md).

Theano's C code walks the output once, element i drawing from stream i mod S, reading and writing that stream's
six state words for every element: one core, and 38 % of a stochastic BinaryConnect MNIST step here. Every stream's
sequence depends only on its own state, so the loop here runs stream by stream (element s, s + S, s + 2S, ... in
that order), the streams split over OpenMP threads and each state held in registers.

Sixteen neighbouring streams step side by side, one per SIMD lane (`#pragma omp simd`): their samples at each step
are 16 neighbouring elements, one cache line written at once, where one stream at a time wrote a word into a
different line at every sample. The recurrences run in unsigned 32-bit arithmetic, the same bits as Theano's
wrapping int32 sums, and Theano's `y < 0 || y >= M` becomes one unsigned compare. Streams left over (a last group of
fewer than 16, and the one extra sample of a group's first streams) run one lane at a time. Every sample and the
final states are bit for bit Theano's (tests/test_parallel_mrg.py). `install()` (called by plumbing/compat.py) swaps
the op's C code in, and computes the streams' start states in NumPy (the same integers; below).
"""
import numpy as np
from theano.sandbox import rng_mrg

PARALLEL_MIN_ELEMENTS = 100000  # fewer samples than this: one thread (starting threads costs more)

_LOOP = """
#ifndef BINARYNET_MRG_STEP
#define BINARYNET_MRG_STEP
#define MRG_LANES 16
#define MRG_M1 2147483647u      /* 2^31 - 1 */
#define MRG_M2 2147462579u      /* 2^31 - 21069 */
/* Theano's `if (y < 0 || y >= M) y -= M;` on the wrapped int32 y: as unsigned, y >= M covers both tests. */
#define MRG_REDUCE(y, M) ((y) >= (M) ? (y) - (M) : (y))
/* One step of lane l: Theano's recurrences, in unsigned arithmetic (the same bits as its wrapping int32 sums);
   leaves the sample's integer, in (0, M1], in `draw`. */
#define MRG_STEP(l) { \
    npy_uint32 y1 = ((x12[l] & 511u) << 22) + (x12[l] >> 9) + ((x13[l] & 16777215u) << 7) + (x13[l] >> 24); \
    y1 = MRG_REDUCE(y1, MRG_M1); \
    y1 += x13[l]; \
    y1 = MRG_REDUCE(y1, MRG_M1); \
    x13[l] = x12[l]; x12[l] = x11[l]; x11[l] = y1; \
    npy_uint32 z1 = ((x21[l] & 65535u) << 15) + 21069u * (x21[l] >> 16); \
    z1 = MRG_REDUCE(z1, MRG_M2); \
    npy_uint32 z2 = ((x23[l] & 65535u) << 15) + 21069u * (x23[l] >> 16); \
    z2 = MRG_REDUCE(z2, MRG_M2); \
    z2 += x23[l]; \
    z2 = MRG_REDUCE(z2, MRG_M2); \
    z2 += z1; \
    z2 = MRG_REDUCE(z2, MRG_M2); \
    x23[l] = x22[l]; x22[l] = x21[l]; x21[l] = z2; \
    npy_int32 a = (npy_int32) x11[l], b = (npy_int32) z2; \
    draw = a <= b ? a - b + (npy_int32) MRG_M1 : a - b; }
#endif

/* Streams s0 .. s0 + lanes - 1 (lanes <= MRG_LANES): stream s fills elements s, s + S, s + 2S, ... in that order. */
static void mrg_group_%(dtype)s(%(dtype)s* sample_data, npy_int32* state_data, npy_int64 n_elements, int n_streams,
                                int s0, int lanes) {
    npy_uint32 x11[MRG_LANES], x12[MRG_LANES], x13[MRG_LANES], x21[MRG_LANES], x22[MRG_LANES], x23[MRG_LANES];
    for (int l = 0; l < lanes; ++l) {
        const npy_int32* state = state_data + 6 * (npy_int64) (s0 + l);
        x11[l] = state[0]; x12[l] = state[1]; x13[l] = state[2];
        x21[l] = state[3]; x22[l] = state[4]; x23[l] = state[5];
    }
    /* Steps every lane makes: the last stream's count. Its 16 samples per step are 16 neighbouring elements. */
    npy_int64 last = s0 + MRG_LANES - 1;
    npy_int64 full = (lanes == MRG_LANES && last < n_elements) ? (n_elements - 1 - last) / n_streams + 1 : 0;
    for (npy_int64 k = 0; k < full; ++k) {
        %(dtype)s* out = sample_data + s0 + k * n_streams;
        #pragma omp simd
        for (int l = 0; l < MRG_LANES; ++l) {
            npy_int32 draw;
            MRG_STEP(l)
            out[l] = draw * %(norm)s;
        }
    }
    /* The rest, lane by lane: partial groups, and the one extra sample of a group's first lanes. */
    for (int l = 0; l < lanes; ++l) {
        for (npy_int64 i = s0 + l + full * n_streams; i < n_elements; i += n_streams) {
            npy_int32 draw;
            MRG_STEP(l)
            sample_data[i] = draw * %(norm)s;
        }
    }
    for (int l = 0; l < lanes; ++l) {
        npy_int32* state = state_data + 6 * (npy_int64) (s0 + l);
        state[0] = x11[l]; state[1] = x12[l]; state[2] = x13[l];
        state[3] = x21[l]; state[4] = x22[l]; state[5] = x23[l];
    }
}

void cpu_rng_mrg_uniform_%(dtype)s(PyArrayObject* o_sample, PyArrayObject* o_rstate,
                                   npy_int64 n_elements, int n_streams) {
    %(dtype)s* sample_data = (%(dtype)s*) PyArray_DATA(o_sample);
    npy_int32* state_data = (npy_int32*) PyArray_DATA(o_rstate);
    int groups = (n_streams + MRG_LANES - 1) / MRG_LANES;
    #pragma omp parallel for schedule(static) if (n_elements >= %(min_elements)d)
    for (int g = 0; g < groups; ++g) {
        int s0 = g * MRG_LANES;
        mrg_group_%(dtype)s(sample_data, state_data, n_elements, n_streams, s0,
                            n_streams - s0 < MRG_LANES ? n_streams - s0 : MRG_LANES);
    }
}
"""


def _support_code(self):
    return "\n".join(_LOOP % dict(dtype=dtype, norm=norm, min_elements=PARALLEL_MIN_ELEMENTS) for dtype, norm in (
        ("npy_float32", "4.6566126e-10f"), ("npy_float64", "4.656612873077392578125e-10")))


def _compile_args(self):
    return ["-fopenmp"]


def _cache_version(self):
    return (10, "binarynet-archive parallel streams", 3)


THEANOS = {name: getattr(rng_mrg.mrg_uniform, name)
           for name in ("c_support_code", "c_compile_args", "c_code_cache_version")}  # kept for the tests
THEANOS_STARTS = {"multMatVect": rng_mrg.multMatVect,
                  "get_substream_rstates": rng_mrg.MRG_RandomStreams.get_substream_rstates}

# The streams' start states: stream i starts 2^72 steps after stream i - 1, i.e. state_i = A^i state_0 mod M for
# each of the generator's two components (A = Theano's A1p72 and A2p72). Theano computes them one after the other
# through a small compiled Theano function (0.5 s to compile, then a call per stream: about 1 s per process here).
# The same integers in NumPy: exact modular arithmetic (each product of a state word and a matrix entry, both below
# 2^31, is below 2^62 and reduced before the three are added), so every start state is Theano's.
START_BLOCK = 64  # states computed one by one; then whole blocks of this many are advanced at once


def _mod_products(matrix, vectors, modulus):
    """(matrix @ vectors) mod modulus, exactly, for an int64 (3, 3) matrix and (3, n) vectors of residues."""
    return ((matrix[:, :, None] * vectors[None, :, :]) % modulus).sum(axis=1) % modulus


def mult_mat_vect(v, A, m1, B, m2):
    """Theano's multMatVect: (A @ v[:3] mod m1, B @ v[3:] mod m2) as int32, without compiling a Theano function."""
    v = np.asarray(v, dtype=np.int64).reshape(6, 1)
    first = _mod_products(np.asarray(A, np.int64), v[:3], np.int64(m1))
    second = _mod_products(np.asarray(B, np.int64), v[3:], np.int64(m2))
    return np.concatenate([first, second])[:, 0].astype(np.int32)


def _matrix_power_mod(matrix, exponent, modulus):
    """matrix ** exponent mod modulus (int64 3x3, by repeated exact products)."""
    result = np.eye(3, dtype=np.int64)
    for _ in range(exponent):
        result = _mod_products(matrix, result, modulus)
    return result


def substream_start_states(state, n_streams):
    """int32 (n_streams, 6): row i is `state` advanced by i jumps of 2^72 steps, Theano's rows exactly."""
    out = np.zeros((n_streams, 6), dtype=np.int64)
    out[0] = state
    components = [(rng_mrg.A1p72, rng_mrg.M1, slice(0, 3)), (rng_mrg.A2p72, rng_mrg.M2, slice(3, 6))]
    for matrix, modulus, words in components:
        matrix, modulus = np.asarray(matrix, np.int64), np.int64(modulus)
        first = min(n_streams, START_BLOCK)
        for i in range(1, first):
            out[i, words] = _mod_products(matrix, out[i - 1, words].reshape(3, 1), modulus)[:, 0]
        jump = _matrix_power_mod(matrix, START_BLOCK, modulus)
        for start in range(START_BLOCK, n_streams, START_BLOCK):
            stop = min(n_streams, start + START_BLOCK)
            previous = out[start - START_BLOCK:stop - START_BLOCK, words].T
            out[start:stop, words] = _mod_products(jump, previous, modulus).T
    return out.astype(np.int32)


def _get_substream_rstates(self, n_streams, dtype, inc_rstate=True):
    """MRG_RandomStreams.get_substream_rstates with the start states computed in NumPy (the same integers)."""
    assert isinstance(dtype, str) and 0 < n_streams < 2 ** 72
    states = substream_start_states(self.rstate, n_streams)
    if inc_rstate:
        self.inc_rstate()
    return states


def install():
    """Replace the C loop of Theano's CPU mrg_uniform (for every graph compiled afterwards) and compute the streams'
    start states in NumPy."""
    rng_mrg.multMatVect = mult_mat_vect
    rng_mrg.MRG_RandomStreams.get_substream_rstates = _get_substream_rstates
    rng_mrg.mrg_uniform.c_support_code = _support_code
    rng_mrg.mrg_uniform.c_compile_args = _compile_args
    rng_mrg.mrg_uniform.c_code_cache_version = _cache_version
