/*
 * packed_net.c -- the fast run-time path of a BinaryNet MLP (docs/runtime.md, "The fast path"): every layer of
 * a batch in one native pass, threads over the batch. Built on first use by kernels/packed_net.py.
 *
 * Layer 0 takes 8-bit pixels p (the network's inputs are x = 2p/255 - 1) and computes the exact integer
 *     P = sum_i p_i w_i = 2 * sum_b 2^b popcount(plane_b AND wbits) - sum_i p_i        (w_i = +1 <=> wbit_i = 1)
 * from the 8 bit planes of the pixels ([BNN] §2.5, the first-layer scheme: binary products weighted by powers
 * of two). Hidden layers: s = n - 2 popcount(a XOR w) (ORIGINALS.md §4.3). A unit of layer 0 .. L-2 is on (+1)
 * iff its integer value (P, or s) lies in [lo, hi]: the exact batch norm + sign of the Python side
 * (binary_inference.first_layer_thresholds, fold_threshold) as bounds, so padding units (lo > hi) stay off.
 * Output layer: y = ((s + b) - mean) * scale + beta in float32, in this order and without contraction into
 * fused multiply-adds (the library is built with -ffp-contract=off), then argmax (first maximum).
 *
 * Layouts (uint64 words, bit j of word w = element 64w + j, padding bits 0):
 *   activations: rows of ceil(n / 64) words;  planes of one example: word w of plane b at [8w + b]
 *   weights of a layer with `words` input words: panels of 32 units, panel p = words x 32 (word w of unit
 *   32p + c at [32w + c]); units past the layer's width are 0. A tile of 6 examples x 32 units broadcasts one
 *   activation word per example and XORs (ANDs) it with the 4 vectors of the panel's word: every vector lane
 *   accumulates one (example, unit) count, so no horizontal sums are needed.
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

#define CHUNK 48  /* examples per task: a task runs all layers for its examples */
#define ROWS 6    /* examples per tile */
#define PANEL 32  /* units per tile (4 vectors of 8 lanes) */
#define INLINE static inline __attribute__((always_inline))

EXPORT int bnn_fast_path(void)
{
    return BNN_AVX512 ? PATH_AVX512 : PATH_PORTABLE;
}

static int64_t words_for(int64_t bits) { return (bits + 63) / 64; }

EXPORT int64_t bnn_panel_units(void) { return PANEL; }

typedef struct {
    const uint8_t *pixels;
    int64_t n_examples, n_layers;
    const int64_t *widths;              /* n_layers + 1: inputs, then the units of each layer */
    const uint64_t *const *weights;     /* n_layers, panels */
    const int64_t *const *lo;           /* n_layers - 1, panels x 32 */
    const int64_t *const *hi;
    const float *out_bn;                /* 4 x units of the last layer: b, mean, scale, beta */
    int32_t *predictions;
    float *scores;                      /* optional: n_examples x units of the last layer */
    uint64_t *first_bits;               /* optional: n_examples x ceil(widths[1] / 64) */
    int64_t next_chunk;
    int failed;
} net_t;

/* Where a tile's results go: the next layer's activations (on iff lo <= value <= hi), or integer values. */
typedef struct {
    uint64_t *out;                      /* rows of out_words, zeroed by the caller */
    int64_t out_words;
    const int64_t *lo, *hi;             /* per unit, the panel's 32 at lo + u0 */
    int64_t *values;                    /* output layer: rows of `units` values, or NULL */
    int64_t units;
} sink_t;

/* Pointers to the rows of examples e0 .. e0+ROWS-1 (rows of `words`); rows past `ne` repeat the last one. */
static void tile_rows(const uint64_t *base, int64_t words, int64_t e0, int64_t ne, const uint64_t *rows[ROWS])
{
    for (int r = 0; r < ROWS; r++)
        rows[r] = base + (e0 + r < ne ? e0 + r : ne - 1) * words;
}

#if BNN_AVX512
/* Keep a vector in a register: without this, GCC 12 re-reads operands from memory for every product. */
#define IN_REGISTER(v) __asm__("" : "+v"(v))

/* h[r][v] lane j = sum over words of popcount(x_r[w] XOR panel[32w + 8v + j]). */
INLINE void tile_xor(const uint64_t *const x[ROWS], const uint64_t *panel, int64_t words, __m512i h[ROWS][4])
{
    for (int r = 0; r < ROWS; r++)
        for (int v = 0; v < 4; v++)
            h[r][v] = _mm512_setzero_si512();
    for (int64_t w = 0; w < words; w++) {
        __m512i b[4];
        for (int v = 0; v < 4; v++) {
            b[v] = _mm512_loadu_si512(panel + 32 * w + 8 * v);
            IN_REGISTER(b[v]);
        }
        for (int r = 0; r < ROWS; r++) {
            const __m512i a = _mm512_set1_epi64((long long)x[r][w]);
            for (int v = 0; v < 4; v++)
                h[r][v] = _mm512_add_epi64(h[r][v], _mm512_popcnt_epi64(_mm512_xor_si512(a, b[v])));
        }
    }
}

/* h[r][v] lane j = sum_b 2^b sum_w popcount(plane_b(x_r)[w] AND panel[32w + 8v + j]), planes by Horner's rule. */
INLINE void tile_planes(const uint64_t *const x[ROWS], const uint64_t *panel, int64_t wp, __m512i h[ROWS][4])
{
    for (int r = 0; r < ROWS; r++)
        for (int v = 0; v < 4; v++)
            h[r][v] = _mm512_setzero_si512();
    for (int b = 7; b >= 0; b--) {
        for (int r = 0; r < ROWS; r++)
            for (int v = 0; v < 4; v++)
                h[r][v] = _mm512_slli_epi64(h[r][v], 1);
        for (int64_t w = 0; w < wp; w++) {
            __m512i y[4];
            for (int v = 0; v < 4; v++) {
                y[v] = _mm512_loadu_si512(panel + 32 * w + 8 * v);
                IN_REGISTER(y[v]);
            }
            for (int r = 0; r < ROWS; r++) {
                const __m512i a = _mm512_set1_epi64((long long)x[r][8 * w + b]);
                for (int v = 0; v < 4; v++)
                    h[r][v] = _mm512_add_epi64(h[r][v], _mm512_popcnt_epi64(_mm512_and_si512(a, y[v])));
            }
        }
    }
}

/* value = offset_r + sign * 2h per lane; bits of the units with lo <= value <= hi, or the values themselves. */
INLINE void emit(const sink_t *s, int64_t e0, int64_t ne, int64_t u0, __m512i h[ROWS][4], int sign,
                 const int64_t offset[ROWS])
{
    for (int r = 0; r < ROWS && e0 + r < ne; r++) {
        uint64_t bits = 0;
        for (int v = 0; v < 4; v++) {
            const __m512i twice = _mm512_add_epi64(h[r][v], h[r][v]), base = _mm512_set1_epi64((long long)offset[r]);
            const __m512i value = sign > 0 ? _mm512_add_epi64(base, twice) : _mm512_sub_epi64(base, twice);
            if (s->values) {
                int64_t lanes[8];
                _mm512_storeu_si512(lanes, value);
                for (int j = 0; j < 8 && u0 + 8 * v + j < s->units; j++)
                    s->values[(e0 + r) * s->units + u0 + 8 * v + j] = lanes[j];
                continue;
            }
            const __mmask8 on = _mm512_cmpge_epi64_mask(value, _mm512_loadu_si512(s->lo + u0 + 8 * v)) &
                                _mm512_cmple_epi64_mask(value, _mm512_loadu_si512(s->hi + u0 + 8 * v));
            bits |= (uint64_t)on << (8 * v);
        }
        if (!s->values)
            s->out[(e0 + r) * s->out_words + u0 / 64] |= bits << (u0 % 64);
    }
}

static void layer_xor(const uint64_t *act, int64_t ne, int64_t n, const uint64_t *w, const sink_t *s)
{
    const int64_t words = words_for(n);
    int64_t offset[ROWS];
    for (int r = 0; r < ROWS; r++)
        offset[r] = n;
    for (int64_t u0 = 0; u0 < s->units; u0 += PANEL) {
        const uint64_t *panel = w + (u0 / PANEL) * words * PANEL;
        for (int64_t e0 = 0; e0 < ne; e0 += ROWS) {
            const uint64_t *x[ROWS];
            __m512i h[ROWS][4];
            tile_rows(act, words, e0, ne, x);
            tile_xor(x, panel, words, h);
            emit(s, e0, ne, u0, h, -2, offset);  /* s = n - 2 h */
        }
    }
}

static void layer_planes(const uint64_t *planes, const int64_t *pixel_sums, int64_t ne, int64_t n0,
                         const uint64_t *w, const sink_t *s)
{
    const int64_t wp = words_for(n0);
    for (int64_t u0 = 0; u0 < s->units; u0 += PANEL) {
        const uint64_t *panel = w + (u0 / PANEL) * wp * PANEL;
        for (int64_t e0 = 0; e0 < ne; e0 += ROWS) {
            const uint64_t *x[ROWS];
            __m512i h[ROWS][4];
            int64_t offset[ROWS];
            for (int r = 0; r < ROWS; r++)
                offset[r] = -pixel_sums[e0 + r < ne ? e0 + r : ne - 1];
            tile_rows(planes, 8 * wp, e0, ne, x);
            tile_planes(x, panel, wp, h);
            emit(s, e0, ne, u0, h, 2, offset);  /* P = 2 h - sum of the pixels */
        }
    }
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
        sum += _mm512_reduce_add_epi64(_mm512_sad_epu8(v, _mm512_setzero_si512()));
    }
    return sum;
}
#else
/* The same results in plain C: value = scale * count + offset per (example, unit). */
static void emit_value(const sink_t *s, int64_t e, int64_t u, int64_t value)
{
    if (s->values)
        s->values[e * s->units + u] = value;
    else if (value >= s->lo[u] && value <= s->hi[u])
        s->out[e * s->out_words + u / 64] |= (uint64_t)1 << (u % 64);
}

static void layer_xor(const uint64_t *act, int64_t ne, int64_t n, const uint64_t *w, const sink_t *s)
{
    const int64_t words = words_for(n);
    for (int64_t u = 0; u < s->units; u++) {
        const uint64_t *column = w + (u / PANEL) * words * PANEL + u % PANEL;
        for (int64_t e = 0; e < ne; e++) {
            int64_t count = 0;
            for (int64_t i = 0; i < words; i++)
                count += __builtin_popcountll(act[e * words + i] ^ column[PANEL * i]);
            emit_value(s, e, u, n - 2 * count);
        }
    }
}

static void layer_planes(const uint64_t *planes, const int64_t *pixel_sums, int64_t ne, int64_t n0,
                         const uint64_t *w, const sink_t *s)
{
    const int64_t wp = words_for(n0);
    for (int64_t u = 0; u < s->units; u++) {
        const uint64_t *column = w + (u / PANEL) * wp * PANEL + u % PANEL;
        for (int64_t e = 0; e < ne; e++) {
            int64_t count = 0;
            for (int64_t i = 0; i < wp; i++)
                for (int b = 0; b < 8; b++)
                    count += (int64_t)__builtin_popcountll(planes[e * 8 * wp + 8 * i + b] & column[PANEL * i]) << b;
            emit_value(s, e, u, 2 * count - pixel_sums[e]);
        }
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

/* Output layer: float32 batch norm of the integer sums, written to y (ne x units), then argmax per example. */
static void output_scores(const int64_t *sums, int64_t ne, int64_t units, const float *bn, float *y,
                          int32_t *predictions)
{
    const float *bias = bn, *mean = bn + units, *scale = bn + 2 * units, *beta = bn + 3 * units;
    for (int64_t e = 0; e < ne; e++) {
        int32_t best = 0;
        for (int64_t u = 0; u < units; u++) {
            const float s = (float)sums[e * units + u];
            y[e * units + u] = ((s + bias[u]) - mean[u]) * scale[u] + beta[u];
            if (y[e * units + u] > y[e * units + best])
                best = (int32_t)u;
        }
        predictions[e] = best;
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* One task = all layers for CHUNK examples; workers take tasks from a shared counter.                      */

typedef struct {
    uint64_t *planes, *act[2];
    int64_t *pixel_sums, *sums;
    float *y;
} scratch_t;

static void free_scratch(scratch_t *s)
{
    free(s->planes);
    free(s->act[0]);
    free(s->act[1]);
    free(s->pixel_sums);
    free(s->sums);
    free(s->y);
}

static int alloc_scratch(const net_t *net, scratch_t *s)
{
    int64_t widest = 0;
    for (int64_t k = 1; k < net->n_layers; k++)
        if (words_for(net->widths[k]) > widest)
            widest = words_for(net->widths[k]);
    const int64_t classes = net->widths[net->n_layers];
    memset(s, 0, sizeof *s);
    s->planes = malloc((size_t)(CHUNK * 8 * words_for(net->widths[0])) * sizeof(uint64_t));
    s->act[0] = malloc((size_t)(CHUNK * widest) * sizeof(uint64_t));
    s->act[1] = malloc((size_t)(CHUNK * widest) * sizeof(uint64_t));
    s->pixel_sums = malloc(CHUNK * sizeof(int64_t));
    s->sums = malloc((size_t)(CHUNK * classes) * sizeof(int64_t));
    s->y = malloc((size_t)(CHUNK * classes) * sizeof(float));
    if (!s->planes || !s->act[0] || !s->act[1] || !s->pixel_sums || !s->sums || !s->y) {
        free_scratch(s);
        return ERR_MEMORY;
    }
    return OK;
}

static void run_chunk(const net_t *net, scratch_t *s, int64_t first)
{
    const int64_t ne = net->n_examples - first < CHUNK ? net->n_examples - first : CHUNK;
    const int64_t n0 = net->widths[0], L = net->n_layers, classes = net->widths[L];
    for (int64_t e = 0; e < ne; e++)
        s->pixel_sums[e] = pack_planes(net->pixels + (first + e) * n0, n0, s->planes + e * 8 * words_for(n0));
    int cur = 0;
    int64_t words = words_for(net->widths[1]);
    memset(s->act[cur], 0, (size_t)(ne * words) * sizeof(uint64_t));
    sink_t sink = {s->act[cur], words, net->lo[0], net->hi[0], L == 1 ? s->sums : NULL, net->widths[1]};
    layer_planes(s->planes, s->pixel_sums, ne, n0, net->weights[0], &sink);
    if (net->first_bits)
        memcpy(net->first_bits + first * words, s->act[cur], (size_t)(ne * words) * sizeof(uint64_t));
    for (int64_t k = 1; k < L; k++) {
        const int64_t next_words = words_for(net->widths[k + 1]);
        const int last = k == L - 1;
        if (!last)
            memset(s->act[1 - cur], 0, (size_t)(ne * next_words) * sizeof(uint64_t));
        sink_t next = {s->act[1 - cur], next_words, last ? NULL : net->lo[k], last ? NULL : net->hi[k],
                       last ? s->sums : NULL, net->widths[k + 1]};
        layer_xor(s->act[cur], ne, net->widths[k], net->weights[k], &next);
        cur = 1 - cur;
    }
    output_scores(s->sums, ne, classes, net->out_bn, s->y, net->predictions + first);
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
 * weights[k]: panels of layer k (ceil(widths[k+1] / 32) x ceil(widths[k] / 64) x 32 words);
 * lo[k], hi[k] for k = 0 .. n_layers-2 (ceil(widths[k+1] / 32) * 32 each); out_bn = 4 x widths[n_layers].
 * threads >= 1. Returns 0, 1 for bad arguments, 2 when scratch memory could not be allocated.
 */
EXPORT int bnn_run(const uint8_t *pixels, int64_t n_examples, int64_t n_layers, const int64_t *widths,
                   const uint64_t *const *weights, const int64_t *const *lo, const int64_t *const *hi,
                   const float *out_bn, int32_t *predictions, float *scores, uint64_t *first_bits, int threads)
{
    if (n_examples < 0 || n_layers < 2 || threads < 1)
        return ERR_ARGUMENTS;
    for (int64_t k = 0; k <= n_layers; k++)
        if (widths[k] < 1)
            return ERR_ARGUMENTS;
    net_t net = {pixels, n_examples, n_layers, widths, weights, lo, hi, out_bn, predictions, scores,
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
