/*
 * xnor_cpu.c -- CPU kernels for binarynet-archive (ORIGINALS.md section 4, ENVIRONMENT.md "CPU XNOR-popcount GEMM").
 *
 * Conventions (section 4.1, with 64-bit words instead of the original 32-bit ones):
 *   C (m x k) = A (m x n) . B (n x k), all float32 row-major.
 *   A value v is encoded as bit 1 when v >= 0 (+1; zero counts as +1) and bit 0 when v < 0 (-1; NaN too).
 *   Element 64*w + j of a row goes to bit j of word w (least significant bit first).
 *   Both operands are packed along the inner dimension K = n: A row by row, B column by column (that is, the
 *   rows of B transposed), each into words = ceil(n / 64) uint64.
 *
 * Padding: when n is not a multiple of 64, the unused high bits of the last word are 0 in BOTH operands, so
 * their XOR is 0 and they never count as a mismatch.  The GEMM therefore uses the true n:
 *   C[i, j] = n - 2 * popcount(Apacked[i] xor Bpacked[j])      (dot of two +-1 vectors with h mismatches).
 *
 * Code paths, chosen at run time: PATH_AVX512 (AVX-512F + VPOPCNTDQ intrinsics, 4x4 register blocking; the
 * functions carry a target attribute so the file compiles with plain -O3 and no -march) and PATH_PORTABLE
 * (__builtin_popcountll, cloned for CPUs with and without the POPCNT instruction).  Work is spread over
 * pthreads that take tiles from a shared counter.
 *
 * baseline_gemm_f32 is the "unoptimized baseline kernel" of the paper transposed to the CPU: the 16x16 tiled
 * GEMM of section 4.3 written as plain scalar loops, compiled at -O2 without auto-vectorisation.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <immintrin.h>

#define EXPORT __attribute__((visibility("default")))
#define AVX512 __attribute__((target("avx512f,avx512vpopcntdq")))
#define INLINE static inline __attribute__((always_inline))

enum { PATH_AUTO = 0, PATH_AVX512 = 1, PATH_PORTABLE = 2 };
enum { OK = 0, ERR_PATH_UNAVAILABLE = 1, ERR_BAD_PATH = 2, ERR_THREADS = 3 };

EXPORT int xnor_has_avx512_vpopcntdq(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
}

EXPORT int xnor_has_popcnt(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("popcnt");
}

/* Resolve PATH_AUTO; returns -1 when the requested path cannot run on this CPU. */
static int resolve_path(int path)
{
    if (path == PATH_AUTO)
        return xnor_has_avx512_vpopcntdq() ? PATH_AVX512 : PATH_PORTABLE;
    if (path == PATH_AVX512)
        return xnor_has_avx512_vpopcntdq() ? PATH_AVX512 : -1;
    if (path == PATH_PORTABLE)
        return PATH_PORTABLE;
    return -2;
}

/* ------------------------------------------------------------------------------------------------------ */
/* A tiny parallel-for: `ntasks` tasks handed out by an atomic counter to `threads` workers.                */

typedef void (*task_fn)(const void *ctx, int64_t task);

typedef struct {
    task_fn fn;
    const void *ctx;
    int64_t ntasks;
    int64_t next;
} job_t;

static void *worker(void *arg)
{
    job_t *job = (job_t *)arg;
    for (;;) {
        int64_t t = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (t >= job->ntasks)
            break;
        job->fn(job->ctx, t);
    }
    return NULL;
}

/* Smallest work per thread (floats packed, word pairs xor-popcounted, float multiply-adds): ~100 us each. */
#define MIN_PACK_WORK (1 << 20)
#define MIN_GEMM_WORK (1 << 22)
#define MIN_BASELINE_WORK (1 << 19)

static int default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Run tasks 0..ntasks-1 on `threads` threads (never more than ntasks).  threads <= 0 means "all CPUs, but
 * at most one thread per `min_work` units of `work`": starting a thread costs tens of microseconds, and a
 * helper the OS schedules late (busy cores) would delay a tiny product by a whole time slice.  An explicit
 * thread count is used as given. */
static int parallel_for(int threads, int64_t ntasks, task_fn fn, const void *ctx, double work, double min_work)
{
    job_t job = {fn, ctx, ntasks, 0};
    if (threads <= 0) {
        threads = default_threads();
        if (work < min_work * threads)
            threads = work < min_work ? 1 : (int)(work / min_work);
    }
    if (threads > ntasks)
        threads = ntasks > 0 ? (int)ntasks : 1;
    pthread_t ids[threads > 1 ? threads - 1 : 1];
    int started = 0;
    for (int t = 0; t < threads - 1; t++) {
        if (pthread_create(&ids[t], NULL, worker, &job) != 0)
            break; /* fewer helpers: the caller still finishes every task */
        started++;
    }
    worker(&job);
    for (int t = 0; t < started; t++)
        pthread_join(ids[t], NULL);
    return OK;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Bit-packing.                                                                                             */

static uint64_t pack_word_portable(const float *x, int count)
{
    uint64_t word = 0;
    for (int j = 0; j < count; j++)
        word |= (uint64_t)(x[j] >= 0.0f) << j;
    return word;
}

AVX512 static uint64_t pack_word_avx512(const float *x, int count)
{
    uint64_t word = 0;
    const __m512 zero = _mm512_setzero_ps();
    for (int q = 0; q * 16 < count; q++) {
        int left = count - 16 * q;
        __mmask16 valid = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        __m512 v = _mm512_maskz_loadu_ps(valid, x + 16 * q);
        __mmask16 bits = _mm512_mask_cmp_ps_mask(valid, v, zero, _CMP_GE_OQ);
        word |= (uint64_t)bits << (16 * q);
    }
    return word;
}

typedef struct {
    const float *src;
    int64_t rows, cols, words;
    uint64_t *dst;
    int path;
} pack_ctx;

enum { PACK_ROWS_PER_TASK = 16, PACK_COLS_CHUNK = 1024 };

/* Task t packs rows [16t, 16t + 16) of a (rows x cols) matrix into (rows x words). */
static void pack_rows_task(const void *vctx, int64_t t)
{
    const pack_ctx *c = (const pack_ctx *)vctx;
    int64_t end = (t + 1) * PACK_ROWS_PER_TASK < c->rows ? (t + 1) * PACK_ROWS_PER_TASK : c->rows;
    for (int64_t r = t * PACK_ROWS_PER_TASK; r < end; r++) {
        const float *row = c->src + r * c->cols;
        for (int64_t w = 0; w < c->words; w++) {
            int64_t left = c->cols - 64 * w;
            int count = left >= 64 ? 64 : (int)left;
            c->dst[r * c->words + w] = c->path == PATH_AVX512 ? pack_word_avx512(row + 64 * w, count)
                                                              : pack_word_portable(row + 64 * w, count);
        }
    }
}

/* Column packing, portable: columns [j0, j1) of a (rows x cols) matrix, word group w (source rows 64w..). */
static void pack_cols_block_portable(const pack_ctx *c, int64_t w, int64_t j0, int64_t j1, uint64_t *acc)
{
    int64_t rows = c->rows - 64 * w < 64 ? c->rows - 64 * w : 64;
    memset(acc, 0, sizeof(uint64_t) * (size_t)(j1 - j0));
    for (int64_t r = 0; r < rows; r++) {
        const float *row = c->src + (64 * w + r) * c->cols;
        for (int64_t j = j0; j < j1; j++)
            acc[j - j0] |= (uint64_t)(row[j] >= 0.0f) << r;
    }
}

/* Same with AVX-512, 64 columns (four cache lines of each source row) at a time: the comparison mask of 16
 * columns sets bit r of their 16 words, held in 8 registers while the 64 source rows stream past. */
AVX512 INLINE __mmask16 valid16(int64_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

AVX512 static void pack_cols_block_avx512(const pack_ctx *c, int64_t w, int64_t j0, int64_t j1, uint64_t *acc)
{
    int64_t rows = c->rows - 64 * w < 64 ? c->rows - 64 * w : 64;
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t j = j0; j < j1; j += 64) {
        __mmask16 valid[4];
        __m512i word[8];
        for (int q = 0; q < 4; q++)
            valid[q] = valid16(j1 - j - 16 * q);
        for (int q = 0; q < 8; q++)
            word[q] = _mm512_setzero_si512();
        for (int64_t r = 0; r < rows; r++) {
            const float *src = c->src + (64 * w + r) * c->cols + j;
            const __m512i bit_r = _mm512_set1_epi64((long long)(1ULL << r));
            for (int q = 0; q < 4; q++) {
                __mmask16 bits = _mm512_mask_cmp_ps_mask(valid[q], _mm512_maskz_loadu_ps(valid[q], src + 16 * q),
                                                         zero, _CMP_GE_OQ);
                word[2 * q] = _mm512_mask_or_epi64(word[2 * q], (__mmask8)(bits & 0xFF), word[2 * q], bit_r);
                word[2 * q + 1] = _mm512_mask_or_epi64(word[2 * q + 1], (__mmask8)(bits >> 8), word[2 * q + 1], bit_r);
            }
        }
        for (int q = 0; q < 4; q++) {
            _mm512_mask_storeu_epi64(acc + (j - j0) + 16 * q, (__mmask8)(valid[q] & 0xFF), word[2 * q]);
            _mm512_mask_storeu_epi64(acc + (j - j0) + 16 * q + 8, (__mmask8)(valid[q] >> 8), word[2 * q + 1]);
        }
    }
}

/* Task t packs word group t (source rows 64t .. 64t + 63) of all columns of B (rows = n, cols = k) into
 * Bt packed (k x words), reading whole source rows in order (strided column reads are slow from DRAM). */
static void pack_cols_task(const void *vctx, int64_t t)
{
    const pack_ctx *c = (const pack_ctx *)vctx;
    uint64_t acc[PACK_COLS_CHUNK];
    for (int64_t j0 = 0; j0 < c->cols; j0 += PACK_COLS_CHUNK) {
        int64_t j1 = j0 + PACK_COLS_CHUNK < c->cols ? j0 + PACK_COLS_CHUNK : c->cols;
        if (c->path == PATH_AVX512)
            pack_cols_block_avx512(c, t, j0, j1, acc);
        else
            pack_cols_block_portable(c, t, j0, j1, acc);
        for (int64_t j = j0; j < j1; j++)
            c->dst[j * c->words + t] = acc[j - j0];
    }
}

/* Pack the rows of A (m x n) into out (m x ceil(n/64)). */
EXPORT int xnor_pack_rows(const float *A, int64_t m, int64_t n, uint64_t *out, int threads, int path)
{
    pack_ctx c = {A, m, n, (n + 63) / 64, out, resolve_path(path)};
    if (c.path < 0)
        return c.path == -1 ? ERR_PATH_UNAVAILABLE : ERR_BAD_PATH;
    return parallel_for(threads, (m + PACK_ROWS_PER_TASK - 1) / PACK_ROWS_PER_TASK, pack_rows_task, &c,
                        (double)m * n, MIN_PACK_WORK);
}

/* Pack the columns of B (n x k) into out (k x ceil(n/64)), i.e. the rows of B transposed. */
EXPORT int xnor_pack_cols(const float *B, int64_t n, int64_t k, uint64_t *out, int threads, int path)
{
    pack_ctx c = {B, n, k, (n + 63) / 64, out, resolve_path(path)};
    if (c.path < 0)
        return c.path == -1 ? ERR_PATH_UNAVAILABLE : ERR_BAD_PATH;
    return parallel_for(threads, (n + 63) / 64, pack_cols_task, &c,
                        (double)n * k, MIN_PACK_WORK);
}

/* ------------------------------------------------------------------------------------------------------ */
/* XNOR-popcount GEMM.  Ap (m x words), Bp (k x words): C[i, j] = n - 2 popcount(Ap[i] ^ Bp[j]).          */

typedef struct {
    const uint64_t *A, *B;
    int64_t m, k, words, n;
    float *C;
    int64_t row_tiles, col_block; /* tasks = row_tiles x ceil(k / col_block) */
} gemm_ctx;

enum { ROWS_PER_TASK = 32 };

/* --- portable path ------------------------------------------------------------------------------------ */

/* One output element; target_clones builds a POPCNT-instruction copy and a generic one (chosen at load). */
__attribute__((target_clones("popcnt", "default"))) static void
gemm_tile_portable(const gemm_ctx *c, int64_t i0, int64_t i1, int64_t j0, int64_t j1)
{
    const int64_t W = c->words;
    for (int64_t i = i0; i < i1; i++) {
        const uint64_t *a = c->A + i * W;
        for (int64_t j = j0; j < j1; j++) {
            const uint64_t *b = c->B + j * W;
            int64_t mismatches = 0;
            for (int64_t w = 0; w < W; w++)
                mismatches += __builtin_popcountll(a[w] ^ b[w]);
            c->C[i * c->k + j] = (float)(c->n - 2 * mismatches);
        }
    }
}

/* --- AVX-512 path -------------------------------------------------------------------------------------- */

AVX512 INLINE __mmask8 tail_mask(int64_t W)
{
    return (__mmask8)((1u << (W % 8)) - 1);
}

/* Sum of the 8 lanes of each of 8 accumulators: returns [sum(v0), ..., sum(v7)] (transpose-and-add). */
AVX512 INLINE __m512i reduce8(__m512i v0, __m512i v1, __m512i v2, __m512i v3, __m512i v4, __m512i v5,
                              __m512i v6, __m512i v7)
{
    /* Within each 128-bit lane: [a0+a1, b0+b1] etc. */
    __m512i p01 = _mm512_add_epi64(_mm512_unpacklo_epi64(v0, v1), _mm512_unpackhi_epi64(v0, v1));
    __m512i p23 = _mm512_add_epi64(_mm512_unpacklo_epi64(v2, v3), _mm512_unpackhi_epi64(v2, v3));
    __m512i p45 = _mm512_add_epi64(_mm512_unpacklo_epi64(v4, v5), _mm512_unpackhi_epi64(v4, v5));
    __m512i p67 = _mm512_add_epi64(_mm512_unpacklo_epi64(v6, v7), _mm512_unpackhi_epi64(v6, v7));
    /* Add 128-bit lanes pairwise: lanes (0+1, 2+3) of the first operand, then of the second. */
    __m512i q0 = _mm512_add_epi64(_mm512_shuffle_i64x2(p01, p23, 0x88), _mm512_shuffle_i64x2(p01, p23, 0xDD));
    __m512i q1 = _mm512_add_epi64(_mm512_shuffle_i64x2(p45, p67, 0x88), _mm512_shuffle_i64x2(p45, p67, 0xDD));
    /* q0 lanes: [v0v1 words 0-3, v0v1 words 4-7, v2v3 0-3, v2v3 4-7]; the same step once more finishes. */
    return _mm512_add_epi64(_mm512_shuffle_i64x2(q0, q1, 0x88), _mm512_shuffle_i64x2(q0, q1, 0xDD));
}

/* Store n - 2h for 8 sums h = [row r: 4 columns, row r+1: 4 columns]. */
AVX512 INLINE void store_pair(const gemm_ctx *c, __m512i h, int64_t i, int64_t j)
{
    __m256i h32 = _mm512_cvtepi64_epi32(h);
    __m256i val = _mm256_sub_epi32(_mm256_set1_epi32((int)c->n), _mm256_add_epi32(h32, h32));
    __m256 f = _mm256_cvtepi32_ps(val);
    _mm_storeu_ps(c->C + i * c->k + j, _mm256_castps256_ps128(f));
    _mm_storeu_ps(c->C + (i + 1) * c->k + j, _mm256_extractf128_ps(f, 1));
}

/* 4 rows x 4 columns of C, 16 accumulators of 8 x uint64 mismatch counts. */
AVX512 static void micro_4x4(const gemm_ctx *c, int64_t i, int64_t j)
{
    const int64_t W = c->words;
    const uint64_t *a0 = c->A + i * W, *a1 = a0 + W, *a2 = a1 + W, *a3 = a2 + W;
    const uint64_t *b0 = c->B + j * W, *b1 = b0 + W, *b2 = b1 + W, *b3 = b2 + W;
    __m512i s00 = _mm512_setzero_si512(), s01 = s00, s02 = s00, s03 = s00, s10 = s00, s11 = s00, s12 = s00,
            s13 = s00, s20 = s00, s21 = s00, s22 = s00, s23 = s00, s30 = s00, s31 = s00, s32 = s00, s33 = s00;
#define XPOP(x, y) _mm512_popcnt_epi64(_mm512_xor_si512(x, y))
#define STEP(LOAD)                                                                                          \
    do {                                                                                                    \
        __m512i A0 = LOAD(a0), A1 = LOAD(a1), A2 = LOAD(a2), A3 = LOAD(a3);                                 \
        __m512i B = LOAD(b0);                                                                               \
        s00 = _mm512_add_epi64(s00, XPOP(A0, B)); s10 = _mm512_add_epi64(s10, XPOP(A1, B));                 \
        s20 = _mm512_add_epi64(s20, XPOP(A2, B)); s30 = _mm512_add_epi64(s30, XPOP(A3, B));                 \
        B = LOAD(b1);                                                                                       \
        s01 = _mm512_add_epi64(s01, XPOP(A0, B)); s11 = _mm512_add_epi64(s11, XPOP(A1, B));                 \
        s21 = _mm512_add_epi64(s21, XPOP(A2, B)); s31 = _mm512_add_epi64(s31, XPOP(A3, B));                 \
        B = LOAD(b2);                                                                                       \
        s02 = _mm512_add_epi64(s02, XPOP(A0, B)); s12 = _mm512_add_epi64(s12, XPOP(A1, B));                 \
        s22 = _mm512_add_epi64(s22, XPOP(A2, B)); s32 = _mm512_add_epi64(s32, XPOP(A3, B));                 \
        B = LOAD(b3);                                                                                       \
        s03 = _mm512_add_epi64(s03, XPOP(A0, B)); s13 = _mm512_add_epi64(s13, XPOP(A1, B));                 \
        s23 = _mm512_add_epi64(s23, XPOP(A2, B)); s33 = _mm512_add_epi64(s33, XPOP(A3, B));                 \
    } while (0)
    int64_t w = 0;
#define FULL(p) _mm512_loadu_si512((const void *)((p) + w))
    for (; w + 8 <= W; w += 8)
        STEP(FULL);
#define TAIL(p) _mm512_maskz_loadu_epi64(tail, (const void *)((p) + w))
    if (w < W) {
        __mmask8 tail = tail_mask(W);
        STEP(TAIL);
    }
#undef FULL
#undef TAIL
#undef STEP
    store_pair(c, reduce8(s00, s01, s02, s03, s10, s11, s12, s13), i, j);
    store_pair(c, reduce8(s20, s21, s22, s23, s30, s31, s32, s33), i + 2, j);
}

/* One element of C (edges of the tile grid). */
AVX512 static void micro_1x1(const gemm_ctx *c, int64_t i, int64_t j)
{
    const int64_t W = c->words;
    const uint64_t *a = c->A + i * W, *b = c->B + j * W;
    __m512i s = _mm512_setzero_si512();
    int64_t w = 0;
    for (; w + 8 <= W; w += 8)
        s = _mm512_add_epi64(s, XPOP(_mm512_loadu_si512((const void *)(a + w)),
                                     _mm512_loadu_si512((const void *)(b + w))));
    if (w < W) {
        __mmask8 tail = tail_mask(W);
        s = _mm512_add_epi64(s, XPOP(_mm512_maskz_loadu_epi64(tail, a + w), _mm512_maskz_loadu_epi64(tail, b + w)));
    }
#undef XPOP
    c->C[i * c->k + j] = (float)(c->n - 2 * _mm512_reduce_add_epi64(s));
}

AVX512 static void gemm_tile_avx512(const gemm_ctx *c, int64_t i0, int64_t i1, int64_t j0, int64_t j1)
{
    int64_t i_end4 = i0 + (i1 - i0) / 4 * 4, j_end4 = j0 + (j1 - j0) / 4 * 4;
    /* Four B rows stay in L1 while the 32 A rows of the task (also in L1 or L2) stream past them. */
    for (int64_t j = j0; j < j_end4; j += 4)
        for (int64_t i = i0; i < i_end4; i += 4)
            micro_4x4(c, i, j);
    for (int64_t i = i_end4; i < i1; i++)
        for (int64_t j = j0; j < j1; j++)
            micro_1x1(c, i, j);
    for (int64_t i = i0; i < i_end4; i++)
        for (int64_t j = j_end4; j < j1; j++)
            micro_1x1(c, i, j);
}

/* Task t covers rows [i0, i1) and columns [j0, j1) of C: row tiles vary fastest. */
static void run_gemm_task(const gemm_ctx *c, int64_t t,
                          void (*tile)(const gemm_ctx *, int64_t, int64_t, int64_t, int64_t))
{
    int64_t rt = t % c->row_tiles, ct = t / c->row_tiles;
    int64_t i0 = rt * ROWS_PER_TASK, i1 = i0 + ROWS_PER_TASK < c->m ? i0 + ROWS_PER_TASK : c->m;
    int64_t j0 = ct * c->col_block, j1 = j0 + c->col_block < c->k ? j0 + c->col_block : c->k;
    tile(c, i0, i1, j0, j1);
}

static void gemm_task_avx512(const void *vctx, int64_t t)
{
    run_gemm_task((const gemm_ctx *)vctx, t, gemm_tile_avx512);
}

static void gemm_task_portable(const void *vctx, int64_t t)
{
    run_gemm_task((const gemm_ctx *)vctx, t, gemm_tile_portable);
}

/* C (m x k, float32) from Ap (m x words) and Bp (k x words), words = ceil(n / 64), padding bits zero. */
EXPORT int xnor_gemm_packed(const uint64_t *Ap, const uint64_t *Bp, int64_t m, int64_t k, int64_t n, float *C,
                            int threads, int path)
{
    int p = resolve_path(path);
    if (p < 0)
        return p == -1 ? ERR_PATH_UNAVAILABLE : ERR_BAD_PATH;
    gemm_ctx c = {Ap, Bp, m, k, (n + 63) / 64, n, C, (m + ROWS_PER_TASK - 1) / ROWS_PER_TASK, 0};
    /* Column blocks of B sized to about 256 KiB of packed rows (in L2), a multiple of 4 columns. */
    int64_t cols = (256 * 1024) / (c.words * 8 > 0 ? c.words * 8 : 1);
    c.col_block = cols < 4 ? 4 : cols / 4 * 4;
    int64_t ntasks = c.row_tiles * ((k + c.col_block - 1) / c.col_block);
    return parallel_for(threads, ntasks, p == PATH_AVX512 ? gemm_task_avx512 : gemm_task_portable, &c,
                        (double)m * k * c.words, MIN_GEMM_WORK);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Baseline float GEMM: the 16x16 tiled kernel of section 4.3 as plain loops (no intrinsics, no vectorising). */

enum { TILE = 16 };

typedef struct {
    const float *A, *B;
    float *C;
    int64_t m, n, k, col_tiles;
} base_ctx;

/* Task t computes the 16x16 tile of C at tile row t / col_tiles, tile column t % col_tiles, looping over
 * 16-wide tiles of the inner dimension like the thread block of the GPU kernel (acc[ty][tx] += As.Bs). */
__attribute__((optimize("O2", "no-tree-vectorize"))) static void baseline_task(const void *vctx, int64_t t)
{
    const base_ctx *c = (const base_ctx *)vctx;
    int64_t i0 = (t / c->col_tiles) * TILE, j0 = (t % c->col_tiles) * TILE;
    int64_t rows = c->m - i0 < TILE ? c->m - i0 : TILE, cols = c->k - j0 < TILE ? c->k - j0 : TILE;
    float acc[TILE][TILE];
    memset(acc, 0, sizeof(acc));
    for (int64_t p0 = 0; p0 < c->n; p0 += TILE) {
        int64_t depth = c->n - p0 < TILE ? c->n - p0 : TILE;
        for (int64_t ty = 0; ty < rows; ty++)
            for (int64_t tx = 0; tx < cols; tx++) {
                float sum = acc[ty][tx];
                for (int64_t p = 0; p < depth; p++)
                    sum += c->A[(i0 + ty) * c->n + p0 + p] * c->B[(p0 + p) * c->k + j0 + tx];
                acc[ty][tx] = sum;
            }
    }
    for (int64_t ty = 0; ty < rows; ty++)
        for (int64_t tx = 0; tx < cols; tx++)
            c->C[(i0 + ty) * c->k + j0 + tx] = acc[ty][tx];
}

EXPORT int baseline_gemm_f32(const float *A, const float *B, float *C, int64_t m, int64_t n, int64_t k, int threads)
{
    base_ctx c = {A, B, C, m, n, k, (k + TILE - 1) / TILE};
    return parallel_for(threads, ((m + TILE - 1) / TILE) * c.col_tiles, baseline_task, &c, (double)m * n * k,
                        MIN_BASELINE_WORK);
}
