/*
 * packed_net.c -- the fast run-time path of a BinaryNet MLP (docs/runtime.md, "The fast path"): every layer of
 * a batch in one native pass, threads over the batch. Built on first use by kernels/packed_net.py.
 *
 * Layer 0 takes 8-bit pixels p (the network's inputs are x = 2p/255 - 1) and computes the exact integer
 *     P = sum_i p_i w_i = 2 * sum_b 2^b popcount(plane_b AND wbits) - sum_i p_i        (w_i = +1 <=> wbit_i = 1)
 * from the 8 bit planes of the pixels ([BNN] §2.5, the first-layer scheme: binary products weighted by powers
 * of two). The unit is on (+1) iff dir0 * P >= tau0, the exact threshold of BN(2P/255 - S + b) (Python side).
 * Hidden layers: s = n - 2 popcount(a XOR w) (ORIGINALS.md §4.3); on iff dir * s >= tau (fold_threshold).
 * Output layer: y = ((s + b) - mean) * scale + beta in float32, in this order and without contraction into
 * fused multiply-adds (the library is built with -ffp-contract=off), then argmax (first maximum).
 *
 * Layouts (uint64 words, bit j of word w = element 64w + j, padding bits 0):
 *   planes of one example: 8 words per input word, word w of plane b at [8w + b]      (wp = ceil(n0 / 64))
 *   w0: units x wp (the sign bits of the first layer's weights, as kernels.cpu.pack_cols writes them)
 *   input activations and weights of layer k >= 1: rows of stride_k words, stride_k = ceil(n_k / 64) rounded
 *   up to a multiple of 8 (one 512-bit vector); the padding words are 0 in both, so they never mismatch.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VPOPCNTDQ__) && !defined(BNN_PORTABLE)
#define BNN_AVX512 1
#include <immintrin.h>
#else
#define BNN_AVX512 0
#endif

enum { PATH_AVX512 = 1, PATH_PORTABLE = 2 };
enum { OK = 0, ERR_ARGUMENTS = 1, ERR_MEMORY = 2 };

#define CHUNK 64  /* examples per task: a task runs all layers for its examples */
#define TILE 4    /* register block: 4 examples x 4 units */

EXPORT int bnn_fast_path(void)
{
    return BNN_AVX512 ? PATH_AVX512 : PATH_PORTABLE;
}

static int64_t words_for(int64_t bits) { return (bits + 63) / 64; }

/* Words per activation row of a layer with n inputs: whole 512-bit vectors. */
EXPORT int64_t bnn_stride(int64_t n) { return (words_for(n) + 7) / 8 * 8; }

typedef struct {
    const uint8_t *pixels;
    int64_t n_examples, n_layers;
    const int64_t *widths;              /* n_layers + 1: inputs, then the units of each layer */
    const uint64_t *const *weights;     /* n_layers */
    const int32_t *const *taus;         /* n_layers - 1 */
    const int8_t *const *dirs;          /* n_layers - 1 */
    const float *out_bn;                /* 4 x units of the last layer: b, mean, scale, beta */
    int32_t *predictions;
    float *scores;                      /* optional: n_examples x units of the last layer */
    uint64_t *first_bits;               /* optional: n_examples x stride(widths[1]) */
    int64_t next_chunk;
    int failed;
} net_t;

/* ------------------------------------------------------------------------------------------------------ */
/* Dot products of a 4 x 4 block: rows x[0..3] against rows y[0..3]; missing rows repeat the last one.     */

#if BNN_AVX512
#define INLINE static inline __attribute__((always_inline))
/* Keep a loaded vector in a register: without this, GCC 12 re-reads both operands from memory for each of the
 * 16 products of a step (32 loads instead of 8, and the loads become the bottleneck). */
#define IN_REGISTER(v) __asm__("" : "+v"(v))

/* Horizontal sums of 8 vectors at once: lane i of the result = sum of the 8 lanes of v[i]. */
INLINE __m512i sum8(const __m512i v[8])
{
    __m512i t[4], s[2];
    for (int i = 0; i < 4; i++)  /* per 128-bit chunk c: (v[2i] lanes 2c+2c+1, v[2i+1] lanes 2c+2c+1) */
        t[i] = _mm512_add_epi64(_mm512_unpacklo_epi64(v[2 * i], v[2 * i + 1]),
                                _mm512_unpackhi_epi64(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; i++)  /* chunks (t[2i] c0+c1, t[2i] c2+c3, t[2i+1] c0+c1, t[2i+1] c2+c3) */
        s[i] = _mm512_add_epi64(_mm512_shuffle_i64x2(t[2 * i], t[2 * i + 1], 0x88),
                                _mm512_shuffle_i64x2(t[2 * i], t[2 * i + 1], 0xDD));
    return _mm512_add_epi64(_mm512_shuffle_i64x2(s[0], s[1], 0x88), _mm512_shuffle_i64x2(s[0], s[1], 0xDD));
}

/* out[4i + j] = sum over `vectors` 512-bit vectors of popcount(x_i XOR y_j). */
INLINE void block_xor(const uint64_t *const x[TILE], const uint64_t *const y[TILE], int64_t vectors,
                      int64_t out[TILE * TILE])
{
    __m512i acc[TILE * TILE];
    for (int i = 0; i < TILE * TILE; i++)
        acc[i] = _mm512_setzero_si512();
    for (int64_t v = 0; v < vectors; v++) {
        __m512i a0 = _mm512_loadu_si512(x[0] + 8 * v), a1 = _mm512_loadu_si512(x[1] + 8 * v);
        __m512i a2 = _mm512_loadu_si512(x[2] + 8 * v), a3 = _mm512_loadu_si512(x[3] + 8 * v);
        __m512i b[TILE] = {_mm512_loadu_si512(y[0] + 8 * v), _mm512_loadu_si512(y[1] + 8 * v),
                                 _mm512_loadu_si512(y[2] + 8 * v), _mm512_loadu_si512(y[3] + 8 * v)};
        IN_REGISTER(a0); IN_REGISTER(a1); IN_REGISTER(a2); IN_REGISTER(a3);
        IN_REGISTER(b[0]); IN_REGISTER(b[1]); IN_REGISTER(b[2]); IN_REGISTER(b[3]);
        for (int j = 0; j < TILE; j++) {
            acc[j] = _mm512_add_epi64(acc[j], _mm512_popcnt_epi64(_mm512_xor_si512(a0, b[j])));
            acc[4 + j] = _mm512_add_epi64(acc[4 + j], _mm512_popcnt_epi64(_mm512_xor_si512(a1, b[j])));
            acc[8 + j] = _mm512_add_epi64(acc[8 + j], _mm512_popcnt_epi64(_mm512_xor_si512(a2, b[j])));
            acc[12 + j] = _mm512_add_epi64(acc[12 + j], _mm512_popcnt_epi64(_mm512_xor_si512(a3, b[j])));
        }
    }
    _mm512_storeu_si512(out, sum8(acc));
    _mm512_storeu_si512(out + 8, sum8(acc + 8));
}

/* out[4i + j] = sum_b 2^b sum_w popcount(plane_b(x_i)[w] AND y_j[w]): one vector holds the 8 planes of word w. */
INLINE void block_planes(const uint64_t *const x[TILE], const uint64_t *const y[TILE], int64_t wp,
                         int64_t out[TILE * TILE])
{
    __m512i acc[TILE * TILE];
    for (int i = 0; i < TILE * TILE; i++)
        acc[i] = _mm512_setzero_si512();
    for (int64_t w = 0; w < wp; w++) {
        __m512i a0 = _mm512_loadu_si512(x[0] + 8 * w), a1 = _mm512_loadu_si512(x[1] + 8 * w);
        __m512i a2 = _mm512_loadu_si512(x[2] + 8 * w), a3 = _mm512_loadu_si512(x[3] + 8 * w);
        __m512i b[TILE] = {_mm512_set1_epi64((long long)y[0][w]), _mm512_set1_epi64((long long)y[1][w]),
                                 _mm512_set1_epi64((long long)y[2][w]), _mm512_set1_epi64((long long)y[3][w])};
        IN_REGISTER(a0); IN_REGISTER(a1); IN_REGISTER(a2); IN_REGISTER(a3);
        IN_REGISTER(b[0]); IN_REGISTER(b[1]); IN_REGISTER(b[2]); IN_REGISTER(b[3]);
        for (int j = 0; j < TILE; j++) {
            acc[j] = _mm512_add_epi64(acc[j], _mm512_popcnt_epi64(_mm512_and_si512(a0, b[j])));
            acc[4 + j] = _mm512_add_epi64(acc[4 + j], _mm512_popcnt_epi64(_mm512_and_si512(a1, b[j])));
            acc[8 + j] = _mm512_add_epi64(acc[8 + j], _mm512_popcnt_epi64(_mm512_and_si512(a2, b[j])));
            acc[12 + j] = _mm512_add_epi64(acc[12 + j], _mm512_popcnt_epi64(_mm512_and_si512(a3, b[j])));
        }
    }
    const __m512i plane_shift = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    for (int i = 0; i < TILE * TILE; i++)
        acc[i] = _mm512_sllv_epi64(acc[i], plane_shift);
    _mm512_storeu_si512(out, sum8(acc));
    _mm512_storeu_si512(out + 8, sum8(acc + 8));
}

/* Planes of one example (n0 pixels): bit b of 64 pixels at a time, by a byte test per plane. */
static int64_t pack_planes(const uint8_t *pixels, int64_t n0, uint64_t *planes)
{
    int64_t sum = 0;
    for (int64_t w = 0; w < words_for(n0); w++) {
        const int64_t count = n0 - 64 * w < 64 ? n0 - 64 * w : 64;
        const __mmask64 valid = count == 64 ? ~(__mmask64)0 : (((__mmask64)1 << count) - 1);
        const __m512i v = _mm512_maskz_loadu_epi8(valid, pixels + 64 * w);
        for (int b = 0; b < 8; b++)
            planes[8 * w + b] = (uint64_t)_mm512_test_epi8_mask(v, _mm512_set1_epi8((char)(1 << b)));
        const __m512i sums = _mm512_sad_epu8(v, _mm512_setzero_si512());
        sum += _mm512_reduce_add_epi64(sums);
    }
    return sum;
}
#else
static void block_xor(const uint64_t *const x[TILE], const uint64_t *const y[TILE], int64_t vectors,
                      int64_t out[TILE * TILE])
{
    for (int i = 0; i < TILE; i++)
        for (int j = 0; j < TILE; j++) {
            int64_t count = 0;
            for (int64_t w = 0; w < 8 * vectors; w++)
                count += __builtin_popcountll(x[i][w] ^ y[j][w]);
            out[TILE * i + j] = count;
        }
}

static void block_planes(const uint64_t *const x[TILE], const uint64_t *const y[TILE], int64_t wp,
                         int64_t out[TILE * TILE])
{
    for (int i = 0; i < TILE; i++)
        for (int j = 0; j < TILE; j++) {
            int64_t count = 0;
            for (int64_t w = 0; w < wp; w++)
                for (int b = 0; b < 8; b++)
                    count += (int64_t)__builtin_popcountll(x[i][8 * w + b] & y[j][w]) << b;
            out[TILE * i + j] = count;
        }
}

static int64_t pack_planes(const uint8_t *pixels, int64_t n0, uint64_t *planes)
{
    int64_t sum = 0;
    memset(planes, 0, (size_t)(8 * words_for(n0)) * sizeof(uint64_t));
    for (int64_t i = 0; i < n0; i++) {
        const unsigned p = pixels[i];
        sum += p;
        for (int b = 0; b < 8; b++)
            planes[8 * (i / 64) + b] |= (uint64_t)((p >> b) & 1u) << (i % 64);
    }
    return sum;
}
#endif

/* Pointers to rows first..first+3 of a matrix (rows of `stride` words); rows past `count` repeat the last. */
static void tile_rows(const uint64_t *base, int64_t stride, int64_t first, int64_t count, const uint64_t *rows[TILE])
{
    for (int i = 0; i < TILE; i++) {
        const int64_t r = first + i < count ? first + i : count - 1;
        rows[i] = base + r * stride;
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Layers on a chunk of `ne` examples.                                                                      */

/* Integer pre-activations of a layer, block by block; `emit` receives each block. */
typedef struct {
    uint64_t *out;          /* next activations (ne x out_stride), zeroed by the caller */
    int64_t out_stride;
    const int32_t *tau;
    const int8_t *dir;
} threshold_t;

/* Set bit u of example e's next activation when dir_u * value >= tau_u (branch-free: the bits are random).
 * u0 is a multiple of TILE, which divides 64, so the TILE bits of one example land in one word. */
static void emit_bits(const threshold_t *t, int64_t e0, int64_t ne, int64_t u0, int64_t units,
                      const int64_t value[TILE * TILE])
{
    const int64_t valid_units = units - u0 < TILE ? units - u0 : TILE;
    const uint64_t keep = ((uint64_t)1 << valid_units) - 1;
    int64_t dir[TILE], tau[TILE];
    for (int j = 0; j < TILE; j++) {
        const int64_t u = u0 + j < units ? u0 + j : units - 1;
        dir[j] = t->dir[u];
        tau[j] = t->tau[u];
    }
    for (int i = 0; i < TILE && e0 + i < ne; i++) {
        uint64_t bits = 0;
        for (int j = 0; j < TILE; j++)
            bits |= (uint64_t)(dir[j] * value[TILE * i + j] >= tau[j]) << j;
        t->out[(e0 + i) * t->out_stride + u0 / 64] |= (bits & keep) << (u0 % 64);
    }
}

static void first_layer(const uint64_t *planes, const int64_t *pixel_sums, int64_t ne, int64_t n0,
                        const uint64_t *w0, int64_t units, const threshold_t *t)
{
    const int64_t wp = words_for(n0);
    for (int64_t u0 = 0; u0 < units; u0 += TILE) {
        const uint64_t *y[TILE];
        tile_rows(w0, wp, u0, units, y);
        for (int64_t e0 = 0; e0 < ne; e0 += TILE) {
            const uint64_t *x[TILE];
            int64_t value[TILE * TILE];
            tile_rows(planes, 8 * wp, e0, ne, x);
            block_planes(x, y, wp, value);
            for (int i = 0; i < TILE; i++)
                for (int j = 0; j < TILE; j++)
                    value[TILE * i + j] = 2 * value[TILE * i + j] - pixel_sums[e0 + i < ne ? e0 + i : ne - 1];
            emit_bits(t, e0, ne, u0, units, value);
        }
    }
}

static void hidden_layer(const uint64_t *act, int64_t ne, int64_t n, const uint64_t *w, int64_t units,
                         const threshold_t *t)
{
    const int64_t stride = bnn_stride(n);
    for (int64_t u0 = 0; u0 < units; u0 += TILE) {
        const uint64_t *y[TILE];
        tile_rows(w, stride, u0, units, y);
        for (int64_t e0 = 0; e0 < ne; e0 += TILE) {
            const uint64_t *x[TILE];
            int64_t value[TILE * TILE];
            tile_rows(act, stride, e0, ne, x);
            block_xor(x, y, stride / 8, value);
            for (int i = 0; i < TILE; i++)
                for (int j = 0; j < TILE; j++)
                    value[TILE * i + j] = n - 2 * value[TILE * i + j];
            emit_bits(t, e0, ne, u0, units, value);
        }
    }
}

/* Output layer: float32 batch norm of the integer sums, written to y (ne x units), then argmax per example. */
static void output_layer(const uint64_t *act, int64_t ne, int64_t n, const uint64_t *w, int64_t units,
                         const float *bn, float *y, int32_t *predictions)
{
    const int64_t stride = bnn_stride(n);
    const float *bias = bn, *mean = bn + units, *scale = bn + 2 * units, *beta = bn + 3 * units;
    for (int64_t u0 = 0; u0 < units; u0 += TILE) {
        const uint64_t *wy[TILE];
        tile_rows(w, stride, u0, units, wy);
        for (int64_t e0 = 0; e0 < ne; e0 += TILE) {
            const uint64_t *x[TILE];
            int64_t value[TILE * TILE];
            tile_rows(act, stride, e0, ne, x);
            block_xor(x, wy, stride / 8, value);
            for (int i = 0; i < TILE && e0 + i < ne; i++)
                for (int j = 0; j < TILE && u0 + j < units; j++) {
                    const int64_t u = u0 + j;
                    const float s = (float)(n - 2 * value[TILE * i + j]);
                    y[(e0 + i) * units + u] = ((s + bias[u]) - mean[u]) * scale[u] + beta[u];
                }
        }
    }
    for (int64_t e = 0; e < ne; e++) {
        int32_t best = 0;
        for (int64_t u = 1; u < units; u++)
            if (y[e * units + u] > y[e * units + best])
                best = (int32_t)u;
        predictions[e] = best;
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* One task = all layers for CHUNK examples; workers take tasks from a shared counter.                      */

typedef struct {
    uint64_t *planes, *act[2];
    int64_t *pixel_sums;
    float *y;
} scratch_t;

static void free_scratch(scratch_t *s)
{
    free(s->planes);
    free(s->act[0]);
    free(s->act[1]);
    free(s->pixel_sums);
    free(s->y);
}

static int alloc_scratch(const net_t *net, scratch_t *s)
{
    int64_t widest = 0;
    for (int64_t k = 1; k < net->n_layers; k++)
        if (bnn_stride(net->widths[k]) > widest)
            widest = bnn_stride(net->widths[k]);
    memset(s, 0, sizeof *s);
    s->planes = malloc((size_t)(CHUNK * 8 * words_for(net->widths[0])) * sizeof(uint64_t));
    s->act[0] = malloc((size_t)(CHUNK * widest) * sizeof(uint64_t));
    s->act[1] = malloc((size_t)(CHUNK * widest) * sizeof(uint64_t));
    s->pixel_sums = malloc(CHUNK * sizeof(int64_t));
    s->y = malloc((size_t)(CHUNK * net->widths[net->n_layers]) * sizeof(float));
    if (!s->planes || !s->act[0] || !s->act[1] || !s->pixel_sums || !s->y) {
        free_scratch(s);
        return ERR_MEMORY;
    }
    return OK;
}

static void run_chunk(const net_t *net, scratch_t *s, int64_t first)
{
    const int64_t ne = net->n_examples - first < CHUNK ? net->n_examples - first : CHUNK;
    const int64_t n0 = net->widths[0], L = net->n_layers;
    for (int64_t e = 0; e < ne; e++)
        s->pixel_sums[e] = pack_planes(net->pixels + (first + e) * n0, n0, s->planes + e * 8 * words_for(n0));
    int cur = 0;
    int64_t stride = bnn_stride(net->widths[1]);
    memset(s->act[cur], 0, (size_t)(ne * stride) * sizeof(uint64_t));
    threshold_t t = {s->act[cur], stride, net->taus[0], net->dirs[0]};
    first_layer(s->planes, s->pixel_sums, ne, n0, net->weights[0], net->widths[1], &t);
    if (net->first_bits)
        memcpy(net->first_bits + first * stride, s->act[cur], (size_t)(ne * stride) * sizeof(uint64_t));
    for (int64_t k = 1; k < L - 1; k++) {
        const int64_t next_stride = bnn_stride(net->widths[k + 1]);
        memset(s->act[1 - cur], 0, (size_t)(ne * next_stride) * sizeof(uint64_t));
        threshold_t tk = {s->act[1 - cur], next_stride, net->taus[k], net->dirs[k]};
        hidden_layer(s->act[cur], ne, net->widths[k], net->weights[k], net->widths[k + 1], &tk);
        cur = 1 - cur;
    }
    const int64_t classes = net->widths[L];
    output_layer(s->act[cur], ne, net->widths[L - 1], net->weights[L - 1], classes, net->out_bn, s->y,
                 net->predictions + first);
    if (net->scores)
        memcpy(net->scores + first * classes, s->y, (size_t)(ne * classes) * sizeof(float));
}

static void *worker(void *arg)
{
    net_t *net = (net_t *)arg;
    scratch_t s;
    if (alloc_scratch(net, &s) != OK) {
        __atomic_store_n(&net->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (;;) {
        const int64_t first = __atomic_fetch_add(&net->next_chunk, CHUNK, __ATOMIC_RELAXED);
        if (first >= net->n_examples)
            break;
        run_chunk(net, &s, first);
    }
    free_scratch(&s);
    return NULL;
}

/*
 * Run the network on n_examples rows of pixels (n_examples x widths[0] bytes). n_layers >= 2.
 * weights[0] = w0 (widths[1] x ceil(widths[0]/64)); weights[k] = widths[k+1] x bnn_stride(widths[k]) for k >= 1.
 * taus[k], dirs[k] for k = 0 .. n_layers-2; out_bn = 4 x widths[n_layers]. threads >= 1.
 * Returns 0, 1 for bad arguments, 2 when scratch memory could not be allocated.
 */
EXPORT int bnn_run(const uint8_t *pixels, int64_t n_examples, int64_t n_layers, const int64_t *widths,
                   const uint64_t *const *weights, const int32_t *const *taus, const int8_t *const *dirs,
                   const float *out_bn, int32_t *predictions, float *scores, uint64_t *first_bits, int threads)
{
    if (n_examples < 0 || n_layers < 2 || threads < 1)
        return ERR_ARGUMENTS;
    for (int64_t k = 0; k <= n_layers; k++)
        if (widths[k] < 1)
            return ERR_ARGUMENTS;
    net_t net = {pixels, n_examples, n_layers, widths, weights, taus, dirs, out_bn, predictions, scores,
                 first_bits, 0, 0};
    const int64_t chunks = (n_examples + CHUNK - 1) / CHUNK;
    if (threads > chunks)
        threads = chunks > 0 ? (int)chunks : 1;
    pthread_t ids[threads];
    int started = 0;
    for (int t = 0; t < threads - 1; t++) {
        if (pthread_create(&ids[t], NULL, worker, &net) != 0)
            break; /* fewer helpers: this thread still finishes every chunk */
        started++;
    }
    worker(&net);
    for (int t = 0; t < started; t++)
        pthread_join(ids[t], NULL);
    return net.failed ? ERR_MEMORY : OK;
}
