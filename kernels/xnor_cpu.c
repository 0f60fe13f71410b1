/*
 * xnor_cpu.c -- CPU kernels for binarynet-archive (ORIGINALS.md section 4; docs/kernels.md).
 *
 * Conventions (section 4.1, with 64-bit words instead of the original 32-bit ones):
 *   C (m x k) = A (m x n) . B (n x k), all float32 row-major.
 *   A value v is encoded as bit 1 when v >= 0 (+1; zero counts as +1) and bit 0 when v < 0 (-1; NaN too).
 *   Element 64*w + j of a row goes to bit j of word w (least significant bit first).
 *   Both operands are packed along the inner dimension n: A row by row, B column by column, each into
 *   W = ceil(n / 64) words.  Padding bits past n are 0 in both operands, so they never count as mismatches:
 *       C[i, j] = n - 2 * popcount(Apacked[i] xor Bpacked[j])     (dot of two +-1 vectors, h mismatches).
 *
 * Code paths, chosen at run time (path 'auto' takes the first that runs on this CPU):
 *   avx512    AVX-512 F/DQ/VL/BW + VPOPCNTDQ: xor, vpopcntq, add per 512-bit product.
 *   avx2      AVX2 only: Harley-Seal carry-save adder over 8 products, then one nibble-lookup (vpshufb) popcount.
 *   neon      AArch64 Advanced SIMD: veor, vcnt (byte popcount), byte adds widened with pairwise adds.
 *   portable  plain C (__builtin_popcountll); on x86 cloned for CPUs with and without the POPCNT instruction.
 * The x86 functions carry target attributes, so the file builds with plain -O3 (no -march) and the library
 * runs on any x86-64; the NEON code is compiled only for AArch64.
 *
 * GEMM layout ("lanes are columns"): A stays packed row by row (m x W words); B is rearranged into panels of
 * NB columns, word-interleaved: panel p holds words [w][c] for columns p*NB + c.  A micro tile of MR rows x NB
 * columns broadcasts one word of each A row and XORs it with the NB/8 (AVX-512) vectors of the panel, so each
 * accumulator lane is one element of C: no horizontal sums, C is stored with plain vector stores.
 *
 * Scheduling: C is cut into column blocks of B (block 0 a quarter of the columns, the others equal, each within a
 * share of L2), and each block into row groups of A; tasks are taken in block-major order from a shared counter by
 * the threads.  The packing is fused into that pipeline: block 0 of B is packed first (by all threads); the tasks of
 * block b pack block b + 1 of B in slices, the tasks of block 0 pack the rows of A of their thread's next task, in
 * units of a few KiB between the micro tiles, and each micro tile prefetches the lines of the units packed after the
 * next tile, so the memory reads overlap the popcount work (docs/kernels.md).
 *
 * baseline_gemm_f32 is the "unoptimized baseline kernel" of the paper transposed to the CPU: the 16x16 tiled
 * GEMM of section 4.3 written as plain scalar loops, compiled at -O2 without auto-vectorisation.
 */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#define XNOR_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define XNOR_NEON 1
#include <arm_neon.h>
#endif

#define EXPORT __attribute__((visibility("default")))
#define INLINE static inline __attribute__((always_inline))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

enum { PATH_AUTO = 0, PATH_AVX512 = 1, PATH_PORTABLE = 2, PATH_AVX2 = 3, PATH_NEON = 4, PATH_COUNT = 5 };
enum { OK = 0, ERR_PATH_UNAVAILABLE = 1, ERR_BAD_PATH = 2, ERR_THREADS = 3, ERR_MEMORY = 4 };

/* ------------------------------------------------------------------------------------------------------ */
/* CPU features and the tuning chosen from them.                                                          */

#ifdef XNOR_X86
#define AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx512vpopcntdq,avx2,fma,popcnt")))
#define AVX2 __attribute__((target("avx2,fma,popcnt")))

static int x86_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vpopcntdq");
}

static int x86_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#endif

EXPORT int xnor_has_avx512_vpopcntdq(void)
{
#ifdef XNOR_X86
    return x86_has_avx512();
#else
    return 0;
#endif
}

EXPORT int xnor_has_popcnt(void)
{
#ifdef XNOR_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("popcnt");
#else
    return 0;
#endif
}

/* 1 when `path` (not auto) can run on this CPU. */
EXPORT int xnor_path_available(int path)
{
    switch (path) {
    case PATH_PORTABLE:
        return 1;
#ifdef XNOR_X86
    case PATH_AVX512:
        return x86_has_avx512();
    case PATH_AVX2:
        return x86_has_avx2();
#endif
#ifdef XNOR_NEON
    case PATH_NEON:
        return 1; /* Advanced SIMD is part of every AArch64 CPU */
#endif
    default:
        return 0;
    }
}

/* Resolve PATH_AUTO; -1 when the requested path cannot run on this CPU, -2 for an unknown code. */
static int resolve_path(int path)
{
    if (path == PATH_AUTO) {
        static const int order[] = {PATH_AVX512, PATH_AVX2, PATH_NEON, PATH_PORTABLE};
        for (int i = 0; i < 4; i++)
            if (xnor_path_available(order[i]))
                return order[i];
    }
    if (path <= PATH_AUTO || path >= PATH_COUNT)
        return -2;
    return xnor_path_available(path) ? path : -1;
}

/* The microarchitecture family the tuning is chosen for. */
enum { UARCH_OTHER = 0, UARCH_INTEL_AVX512 = 1, UARCH_AMD_ZEN4 = 2, UARCH_AMD_ZEN5 = 3, UARCH_INTEL = 4,
       UARCH_AMD = 5, UARCH_ARM = 6 };
static const char *const UARCH_NAMES[] = {
    "other", "Intel with AVX-512 (512-bit ops on ports 0 and 5, vpopcntq on port 5 only)",
    "AMD Zen 4 (512-bit ops split into two 256-bit halves)", "AMD Zen 5 (four 512-bit vector pipes)",
    "Intel without AVX-512 VPOPCNTDQ", "AMD without AVX-512", "AArch64"};

static int detect_uarch(void)
{
#ifdef XNOR_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return UARCH_OTHER;
    char vendor[13];
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    vendor[12] = 0;
    __get_cpuid(1, &a, &b, &c, &d);
    unsigned family = (a >> 8) & 0xF;
    if (family == 0xF)
        family += (a >> 20) & 0xFF;
    int avx512 = x86_has_avx512();
    if (strcmp(vendor, "GenuineIntel") == 0)
        return avx512 ? UARCH_INTEL_AVX512 : UARCH_INTEL;
    if (strcmp(vendor, "AuthenticAMD") == 0 || strcmp(vendor, "HygonGenuine") == 0) {
        if (avx512 && family >= 0x1A)
            return UARCH_AMD_ZEN5;
        if (avx512)
            return UARCH_AMD_ZEN4;
        return UARCH_AMD;
    }
    return UARCH_OTHER;
#elif defined(XNOR_NEON)
    return UARCH_ARM;
#else
    return UARCH_OTHER;
#endif
}

/* Tuning: rows of A per task and the bytes of packed B a column block may take (a share of L2). */
typedef struct {
    int uarch;
    int64_t l2_bytes;
    int task_rows;       /* rows of A per task (a multiple of every kernel's MR) */
    double block_share;  /* a column block of packed B after block 0 takes at most this share of L2 */
    double first_block;  /* block 0 = this share of B's columns (packed before any product; all of A is
                            packed while block 0 is computed, so it must not be too small either) */
    int prefetch;        /* 1: prefetch the packing's inputs inside the micro kernel */
    int overlap;         /* 1: pack between micro tiles (pipeline); 0: pack everything first, then multiply */
} tuning_t;

static tuning_t choose_tuning(void)
{
    tuning_t t = {detect_uarch(), 0, 48, 0.5, 0.25, 1, 1};
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    t.l2_bytes = l2 > 0 ? l2 : 1 << 20;
    switch (t.uarch) {
    case UARCH_INTEL_AVX512: /* 2 MiB L2 (Sapphire Rapids); keep B's block to a quarter (A rows + C share it) */
        t.block_share = 0.25;
        break;
    case UARCH_AMD_ZEN4:
    case UARCH_AMD_ZEN5: /* 1 MiB private L2 (this machine: measured best at half) */
        t.block_share = 0.5;
        break;
    default:
        break;
    }
    return t;
}

static tuning_t tuning;
static pthread_once_t tuning_once = PTHREAD_ONCE_INIT;

static void init_tuning(void)
{
    tuning = choose_tuning();
}

static const tuning_t *get_tuning(void)
{
    pthread_once(&tuning_once, init_tuning);
    return &tuning;
}

/* The microarchitecture name and the tuning values, for reports.  Returns the uarch code. */
EXPORT int xnor_tuning_info(char *name, int name_len, int64_t *l2_bytes, int *task_rows, double *block_share,
                            double *first_block, int *overlap)
{
    const tuning_t *t = get_tuning();
    if (name && name_len > 0) {
        strncpy(name, UARCH_NAMES[t->uarch], (size_t)name_len - 1);
        name[name_len - 1] = 0;
    }
    if (l2_bytes)
        *l2_bytes = t->l2_bytes;
    if (task_rows)
        *task_rows = t->task_rows;
    if (block_share)
        *block_share = t->block_share;
    if (first_block)
        *first_block = t->first_block;
    if (overlap)
        *overlap = t->overlap;
    return t->uarch;
}

/* Override the tuning (benchmarks, tests): values <= 0 (prefetch < 0) keep the current one. */
EXPORT void xnor_set_tuning(int task_rows, double block_share, int prefetch, double first_block, int overlap)
{
    get_tuning();
    if (task_rows > 0)
        tuning.task_rows = (task_rows + 23) / 24 * 24;
    if (block_share > 0)
        tuning.block_share = block_share;
    if (prefetch >= 0)
        tuning.prefetch = prefetch;
    if (first_block > 0)
        tuning.first_block = MIN(first_block, 1.0);
    if (overlap >= 0)
        tuning.overlap = overlap;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Threads: `threads` workers run fn(ctx) (the caller is one of them).                                      */

#define MIN_PACK_WORK (1 << 20) /* floats packed per thread, at least */
#define MIN_GEMM_WORK (1 << 22) /* word pairs per thread, at least */
#define MIN_BASELINE_WORK (1 << 19)

static int default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* threads <= 0: all CPUs, but at most one thread per `min_work` units of `work` (a thread costs tens of
 * microseconds to start and may be scheduled late on a busy machine); never more than `max_threads`. */
static int thread_count(int threads, double work, double min_work, int64_t max_threads)
{
    if (threads <= 0) {
        threads = default_threads();
        if (work < min_work * threads)
            threads = work < min_work ? 1 : (int)(work / min_work);
    }
    if (threads > max_threads)
        threads = max_threads > 0 ? (int)max_threads : 1;
    return threads;
}

typedef void *(*worker_fn)(void *);

static void run_workers(int threads, worker_fn fn, void *ctx)
{
    pthread_t ids[threads > 1 ? threads - 1 : 1];
    int started = 0;
    for (int t = 0; t < threads - 1; t++) {
        if (pthread_create(&ids[t], NULL, fn, ctx) != 0)
            break; /* fewer helpers: the caller still finishes every task */
        started++;
    }
    fn(ctx);
    for (int t = 0; t < started; t++)
        pthread_join(ids[t], NULL);
}

/* A parallel for: tasks 0..ntasks-1 handed out by an atomic counter. */
typedef void (*task_fn)(const void *ctx, int64_t task);
typedef struct {
    task_fn fn;
    const void *ctx;
    int64_t ntasks, next;
} job_t;

static void *job_worker(void *arg)
{
    job_t *job = (job_t *)arg;
    for (int64_t t; (t = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED)) < job->ntasks;)
        job->fn(job->ctx, t);
    return NULL;
}

static int parallel_for(int threads, int64_t ntasks, task_fn fn, const void *ctx, double work, double min_work)
{
    job_t job = {fn, ctx, ntasks, 0};
    run_workers(thread_count(threads, work, min_work, ntasks), job_worker, &job);
    return OK;
}

INLINE void cpu_relax(void)
{
#ifdef XNOR_X86
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Wait until *value >= target (acquire), spinning briefly, then yielding the CPU. */
static void wait_for(const int64_t *value, int64_t target)
{
    for (int spins = 0; __atomic_load_n(value, __ATOMIC_ACQUIRE) < target; spins++) {
        if (spins < 4096)
            cpu_relax();
        else
            sched_yield();
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Packing one row: float[n] -> words dst[0], dst[stride], ... (bit j of word w = [x[64w + j] >= 0]).          */

typedef void (*pack_row_fn)(const float *x, int64_t n, uint64_t *dst, int64_t stride);

static void pack_row_portable(const float *x, int64_t n, uint64_t *dst, int64_t stride)
{
    for (int64_t w = 0; w * 64 < n; w++) {
        int count = (int)MIN(64, n - 64 * w);
        uint64_t word = 0;
        for (int j = 0; j < count; j++)
            word |= (uint64_t)(x[64 * w + j] >= 0.0f) << j;
        dst[w * stride] = word;
    }
}

#ifdef XNOR_X86
AVX512 static void pack_row_avx512(const float *x, int64_t n, uint64_t *dst, int64_t stride)
{
    const __m512 zero = _mm512_setzero_ps();
    int64_t w = 0;
    for (; 64 * w + 64 <= n; w++) {
        const float *p = x + 64 * w;
        __mmask16 b0 = _mm512_cmp_ps_mask(_mm512_loadu_ps(p), zero, _CMP_GE_OQ);
        __mmask16 b1 = _mm512_cmp_ps_mask(_mm512_loadu_ps(p + 16), zero, _CMP_GE_OQ);
        __mmask16 b2 = _mm512_cmp_ps_mask(_mm512_loadu_ps(p + 32), zero, _CMP_GE_OQ);
        __mmask16 b3 = _mm512_cmp_ps_mask(_mm512_loadu_ps(p + 48), zero, _CMP_GE_OQ);
        /* the four masks joined in mask registers (kunpck), one move to a general register */
        dst[w * stride] = _cvtmask64_u64(_mm512_kunpackd(_mm512_kunpackw(b3, b2), _mm512_kunpackw(b1, b0)));
    }
    if (64 * w < n) {
        uint64_t word = 0;
        for (int q = 0; 64 * w + 16 * q < n; q++) {
            int64_t left = n - 64 * w - 16 * q;
            __mmask16 valid = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
            __m512 v = _mm512_maskz_loadu_ps(valid, x + 64 * w + 16 * q);
            word |= (uint64_t)_mm512_mask_cmp_ps_mask(valid, v, zero, _CMP_GE_OQ) << (16 * q);
        }
        dst[w * stride] = word;
    }
}

AVX2 static void pack_row_avx2(const float *x, int64_t n, uint64_t *dst, int64_t stride)
{
    const __m256 zero = _mm256_setzero_ps();
    int64_t w = 0;
    for (; 64 * w + 64 <= n; w++) {
        uint64_t word = 0;
        for (int q = 0; q < 8; q++)
            word |= (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + 64 * w + 8 * q), zero,
                                                               _CMP_GE_OQ)) << (8 * q);
        dst[w * stride] = word;
    }
    if (64 * w < n)
        pack_row_portable(x + 64 * w, n - 64 * w, dst + w * stride, stride);
}

/* transpose64 with AVX-512 F: rows 8q .. 8q + 7 in register q, the same six rounds of block swaps, each a select
 * (vpternlogq) between a row and its partner shifted by j.  Rounds 32, 16, 8 pair registers; rounds 4, 2, 1 pair
 * the lanes of one register (the partner comes from a lane permute). */
#define SELECT 0xD8 /* vpternlogq: c ? b : a */
AVX512 static void transpose64_avx512(uint64_t a[64])
{
    static const uint64_t masks[6] = {0x00000000FFFFFFFFULL, 0x0000FFFF0000FFFFULL, 0x00FF00FF00FF00FFULL,
                                      0x0F0F0F0F0F0F0F0FULL, 0x3333333333333333ULL, 0x5555555555555555ULL};
    __m512i x[8];
    for (int q = 0; q < 8; q++)
        x[q] = _mm512_load_si512((const void *)(a + 8 * q));
    for (int round = 0, j = 32; j >= 8; round++, j >>= 1) {
        const __m512i m = _mm512_set1_epi64((long long)masks[round]), mj = _mm512_set1_epi64((long long)(masks[round] << j));
        for (int q = 0; q < 8; q++)
            if (!(q & (j / 8))) { /* row r (bits m << j) <-> row r + j (bits m) */
                __m512i lo = x[q], hi = x[q + j / 8];
                x[q] = _mm512_ternarylogic_epi64(lo, _mm512_sllv_epi64(hi, _mm512_set1_epi64(j)), mj, SELECT);
                x[q + j / 8] = _mm512_ternarylogic_epi64(hi, _mm512_srlv_epi64(lo, _mm512_set1_epi64(j)), m, SELECT);
            }
    }
    const __mmask8 first[3] = {0x0F, 0x33, 0x55}; /* lanes L with bit j of L clear, j = 4, 2, 1 */
    for (int q = 0; q < 8; q++) {
        __m512i v = x[q];
        for (int round = 3, j = 4; j >= 1; round++, j >>= 1) {
            __m512i p = j == 4 ? _mm512_shuffle_i64x2(v, v, 0x4E) : j == 2 ? _mm512_shuffle_i64x2(v, v, 0xB1)
                                                                           : _mm512_permutex_epi64(v, 0xB1);
            __m512i cnt = _mm512_set1_epi64(j);
            __m512i shifted = _mm512_mask_srlv_epi64(_mm512_sllv_epi64(p, cnt), (__mmask8)~first[round - 3], p, cnt);
            __m512i sel = _mm512_mask_blend_epi64(first[round - 3], _mm512_set1_epi64((long long)masks[round]),
                                                  _mm512_set1_epi64((long long)(masks[round] << j)));
            v = _mm512_ternarylogic_epi64(v, shifted, sel, SELECT);
        }
        x[q] = v;
    }
    for (int q = 0; q < 8; q++)
        _mm512_store_si512((void *)(a + 8 * q), x[q]);
}
#undef SELECT
#endif

#ifdef XNOR_NEON
static void pack_row_neon(const float *x, int64_t n, uint64_t *dst, int64_t stride)
{
    const uint32x4_t weights = {1, 2, 4, 8};
    const float32x4_t zero = vdupq_n_f32(0.0f);
    int64_t w = 0;
    for (; 64 * w + 64 <= n; w++) {
        uint64_t word = 0;
        for (int q = 0; q < 16; q++) {
            uint32x4_t ge = vcgeq_f32(vld1q_f32(x + 64 * w + 4 * q), zero);
            word |= (uint64_t)vaddvq_u32(vandq_u32(ge, weights)) << (4 * q);
        }
        dst[w * stride] = word;
    }
    if (64 * w < n)
        pack_row_portable(x + 64 * w, n - 64 * w, dst + w * stride, stride);
}
#endif

/* Transpose a 64 x 64 bit matrix in place: bit c of a[r] <-> bit r of a[c] (block swaps of 32, 16, ..., 1). */
static void transpose64(uint64_t a[64])
{
    uint64_t mask = 0x00000000FFFFFFFFULL;
    for (int j = 32; j != 0; j >>= 1, mask ^= mask << j)
        for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
            uint64_t t = ((a[k] >> j) ^ a[k | j]) & mask;
            a[k] ^= t << j;
            a[k | j] ^= t;
        }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Micro kernels.  Each computes C[i .. i + MR) x [panel columns] from MR packed rows of A and one panel.    */

typedef struct gemm_job gemm_job;
/* A tile is given `lines` (at most 2W) of the next cache lines the packing between tiles reads, from pf on, and
 * prefetches them spread evenly over its work (a burst of prefetches would queue behind the memory): at word step w
 * PF_LINE(pf, 2w, spread) and PF_LINE(pf, 2w + 1, spread), where spread = pf_spread(lines, W) = 2^16 * lines / (2W).
 * The AVX2 tile, which has 4 rows' worth of word steps, prefetches each of its lines once instead.  pf is NULL when
 * there is nothing to prefetch (no instructions then). */
typedef void (*tile_fn)(const gemm_job *g, int64_t i, int64_t panel, const char *pf, int64_t lines);
#define PF_LINE(pf, half_step, spread) ((pf) + 64 * (((int64_t)(half_step) * (spread)) >> 16))

INLINE int64_t pf_spread(int64_t lines, int64_t W)
{
    return (lines << 16) / (2 * W);
}

typedef struct {
    int nb;              /* columns per panel of B */
    int mr;              /* rows of A per micro tile */
    tile_fn tile;
    pack_row_fn pack_row;
    void (*transpose)(uint64_t a[64]); /* transpose64 or a vector version of it */
} kernel_t;

struct gemm_job {
    const kernel_t *kern;
    const float *Af, *Bf;  /* float inputs (fused call), else NULL */
    const uint64_t *A;     /* packed rows of A, m x W (given, or the workspace the fused call fills) */
    const uint64_t *Bp;    /* packed B, k x W (packed call) */
    uint64_t *Aws;         /* fused call: workspace for packed A */
    uint64_t *Bpan;        /* B in panels: panels x W x nb */
    float *C;
    int64_t m, n, k, W;
    int64_t task_rows, row_groups;   /* rows of A per task, number of row groups */
    int64_t panels, block_panels, first_panels, blocks; /* block 0: first_panels; the other blocks - 1 share the
                                                           rest equally, at most block_panels each */
    int64_t slices;                  /* slices per block of B (fused: W word groups; packed: panels) */
    int64_t ntasks;
    int prefetch;
    /* shared state */
    int overlap;
    int64_t next_task, next_slice0, next_rows0, next_slot;
    uint64_t *thread_words;          /* per thread: scratch for a word group of a block (thread_scratch words) */
    int64_t thread_scratch;
    int64_t *rows_ready;             /* per row group: 1 when its rows of A are packed (fused) */
    int64_t *slices_done;            /* per block: slices of B packed */
};

INLINE int64_t tile_cols(const gemm_job *g, int64_t panel)
{
    return MIN((int64_t)g->kern->nb, g->k - panel * g->kern->nb);
}

/* --- portable: 4 rows x 4 columns of scalar accumulators ------------------------------------------------ */

#ifdef XNOR_X86
__attribute__((target_clones("popcnt", "default")))
#endif
static void tile_portable(const gemm_job *g, int64_t i, int64_t panel, const char *pf, int64_t lines)
{
    enum { MR = 4, NB = 4 };
    const int64_t W = g->W, spread = pf_spread(lines, W);
    const uint64_t *b = g->Bpan + panel * W * NB;
    int rows = (int)MIN(MR, g->m - i), cols = (int)tile_cols(g, panel);
    const uint64_t *a[MR];
    for (int r = 0; r < MR; r++)
        a[r] = g->A + (i + MIN(r, rows - 1)) * W;
    uint64_t h[MR][NB] = {{0}};
    for (int64_t w = 0; w < W; w++) {
        if (pf) {
            __builtin_prefetch(PF_LINE(pf, 2 * w, spread), 0, 3);
            __builtin_prefetch(PF_LINE(pf, 2 * w + 1, spread), 0, 3);
        }
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NB; c++)
                h[r][c] += (uint64_t)__builtin_popcountll(a[r][w] ^ b[w * NB + c]);
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            g->C[(i + r) * g->k + panel * NB + c] = (float)(g->n - 2 * (int64_t)h[r][c]);
}

static const kernel_t KERNEL_PORTABLE = {4, 4, tile_portable, pack_row_portable, transpose64};

#ifdef XNOR_X86
/* --- AVX-512: 8 rows x 24 columns (3 vectors of 8 lanes), 24 accumulators ------------------------------ */

AVX512 static void tile_avx512(const gemm_job *g, int64_t i, int64_t panel, const char *pf, int64_t lines)
{
    enum { MR = 8, NV = 3, NB = 8 * NV };
    const int64_t W = g->W, spread = pf_spread(lines, W);
    const uint64_t *b = g->Bpan + panel * W * NB;
    int rows = (int)MIN(MR, g->m - i), cols = (int)tile_cols(g, panel);
    const uint64_t *a[MR];
    for (int r = 0; r < MR; r++)
        a[r] = g->A + (i + MIN(r, rows - 1)) * W;
    __m512i h[MR][NV];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            h[r][v] = _mm512_setzero_si512();
    for (int64_t w = 0; w < W; w++) {
        if (pf) {
            _mm_prefetch(PF_LINE(pf, 2 * w, spread), _MM_HINT_T0);
            _mm_prefetch(PF_LINE(pf, 2 * w + 1, spread), _MM_HINT_T0);
        }
        __m512i bv[NV];
        for (int v = 0; v < NV; v++)
            bv[v] = _mm512_load_si512((const void *)(b + w * NB + 8 * v));
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512i x = _mm512_set1_epi64((long long)a[r][w]);
            for (int v = 0; v < NV; v++)
                h[r][v] = _mm512_add_epi64(h[r][v], _mm512_popcnt_epi64(_mm512_xor_si512(x, bv[v])));
        }
    }
    const __m512i nn = _mm512_set1_epi64(g->n);
    for (int r = 0; r < rows; r++) {
        float *dst = g->C + (i + r) * g->k + panel * NB;
        for (int v = 0; v < NV && 8 * v < cols; v++) {
            __m256 f = _mm512_cvtepi64_ps(_mm512_sub_epi64(nn, _mm512_add_epi64(h[r][v], h[r][v])));
            int left = cols - 8 * v;
            if (left >= 8)
                _mm256_storeu_ps(dst + 8 * v, f);
            else
                _mm256_mask_storeu_ps(dst + 8 * v, (__mmask8)((1u << left) - 1), f);
        }
    }
}

static const kernel_t KERNEL_AVX512 = {24, 8, tile_avx512, pack_row_avx512, transpose64_avx512};

/* --- AVX2: Harley-Seal over groups of 8 words, 4 rows x 8 columns (2 vectors of 4 lanes); 16 registers -- */

/* Carry-save adder: (a + b + c) = 2 * high + low, bit by bit. */
#define CSA(high, low, a, b, c)                                                                              \
    do {                                                                                                     \
        __m256i u_ = _mm256_xor_si256(a, b);                                                                 \
        high = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u_, c));                             \
        low = _mm256_xor_si256(u_, c);                                                                       \
    } while (0)

/* Popcount of each 64-bit lane: nibble lookup with vpshufb, bytes summed with vpsadbw. */
AVX2 INLINE __m256i popcount_lanes_avx2(__m256i x)
{
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(x, low4));
    __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(x, 4), low4));
    return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
}

/* Harley-Seal count of one row of A against one vector (4 columns) of a panel: popcount(a[w] xor column word w)
 * summed over w, per lane.  The state (ones, twos, fours, eights) and the three constants stay in registers.
 * Prefetching: the tile's groups of 8 words are numbered on from *group; after group q the lines of pf up to
 * ceil(q * per_group / 2^16) have been prefetched (*line: the next one). */
AVX2 INLINE __m256i count_vector_avx2(const uint64_t *a, const uint64_t *b, int64_t W, const char *pf,
                                      int64_t per_group, int64_t *group, int64_t *line)
{
    enum { NB = 8 };
    __m256i ones = _mm256_setzero_si256(), twos = ones, fours = ones, eights = ones;
#define X(w) _mm256_xor_si256(_mm256_broadcastq_epi64(_mm_loadl_epi64((const __m128i *)(a + (w)))), \
                              _mm256_load_si256((const __m256i *)(b + (w) * NB)))
    int64_t w = 0;
    for (; w + 8 <= W; w += 8) {
        if (pf)
            for (int64_t end = (per_group * ++*group + 65535) >> 16; *line < end; ++*line)
                _mm_prefetch(pf + 64 * *line, _MM_HINT_T0);
        __m256i twosA, twosB, foursA, foursB, eight;
        CSA(twosA, ones, ones, X(w), X(w + 1));
        CSA(twosB, ones, ones, X(w + 2), X(w + 3));
        CSA(foursA, twos, twos, twosA, twosB);
        CSA(twosA, ones, ones, X(w + 4), X(w + 5));
        CSA(twosB, ones, ones, X(w + 6), X(w + 7));
        CSA(foursB, twos, twos, twosA, twosB);
        CSA(eight, fours, fours, foursA, foursB);
        eights = _mm256_add_epi64(eights, popcount_lanes_avx2(eight));
    }
    /* Total = 8 * eights + 4 * popcount(fours) + 2 * popcount(twos) + popcount(ones) (+ the last words). */
    __m256i t = _mm256_slli_epi64(eights, 3);
    t = _mm256_add_epi64(t, _mm256_slli_epi64(popcount_lanes_avx2(fours), 2));
    t = _mm256_add_epi64(t, _mm256_slli_epi64(popcount_lanes_avx2(twos), 1));
    t = _mm256_add_epi64(t, popcount_lanes_avx2(ones));
    for (; w < W; w++)
        t = _mm256_add_epi64(t, popcount_lanes_avx2(X(w)));
#undef X
    return t;
}

/* 4 rows x 8 columns, one row and one vector at a time: the 16 registers hold the state of one count without
 * spilling, and 4 rows share the tile's fixed costs (call, prefetch cursor, packing between tiles).  The tile's
 * prefetch lines are spread over the groups of 8 words of its counts. */
AVX2 static void tile_avx2(const gemm_job *g, int64_t i, int64_t panel, const char *pf, int64_t lines)
{
    enum { MR = 4, NV = 2, NB = 4 * NV };
    const int64_t W = g->W;
    const uint64_t *b = g->Bpan + panel * W * NB;
    int rows = (int)MIN(MR, g->m - i), cols = (int)tile_cols(g, panel);
    int64_t groups = (int64_t)rows * NV * (W / 8), group = 0, line = 0;
    int64_t per_group = groups ? (lines << 16) / groups : 0;
    const __m256i nn = _mm256_set1_epi64x(g->n);
    for (int r = 0; r < rows; r++) {
        const uint64_t *a = g->A + (i + r) * W;
        __m256i d[NV];
        for (int v = 0; v < NV; v++) {
            __m256i h = count_vector_avx2(a, b + 4 * v, W, pf, per_group, &group, &line);
            d[v] = _mm256_sub_epi64(nn, _mm256_add_epi64(h, h)); /* n - 2h */
        }
        float *dst = g->C + (i + r) * g->k + panel * NB, part[NB];
        if (g->n < ((int64_t)1 << 31)) {
            /* the low 32 bits of the 8 lanes in column order (shuffle_ps takes lanes 0, 2 of each 128-bit half
             * of both vectors; permute4x64 puts the halves in order), converted to float at once */
            __m256i low = _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(d[0]),
                                                                _mm256_castsi256_ps(d[1]), _MM_SHUFFLE(2, 0, 2, 0)));
            _mm256_storeu_ps(part, _mm256_cvtepi32_ps(_mm256_permute4x64_epi64(low, _MM_SHUFFLE(3, 1, 2, 0))));
        } else {
            int64_t lane[NB];
            _mm256_storeu_si256((__m256i *)lane, d[0]);
            _mm256_storeu_si256((__m256i *)(lane + 4), d[1]);
            for (int c = 0; c < NB; c++)
                part[c] = (float)lane[c];
        }
        if (cols == NB)
            _mm256_storeu_ps(dst, _mm256_loadu_ps(part));
        else
            memcpy(dst, part, (size_t)cols * sizeof(float));
    }
    for (; line < lines; line++) /* the rest (all of them when W < 8: no group to spread them over) */
        _mm_prefetch(pf + 64 * line, _MM_HINT_T0);
}
#undef CSA

static const kernel_t KERNEL_AVX2 = {8, 4, tile_avx2, pack_row_avx2, transpose64};

#endif /* XNOR_X86 */

#ifdef XNOR_NEON
/* --- NEON: 4 rows x 4 columns (2 vectors of 2 lanes); byte counts widened every 31 words --------------- */

static void tile_neon(const gemm_job *g, int64_t i, int64_t panel, const char *pf, int64_t lines)
{
    enum { MR = 4, NV = 2, NB = 2 * NV, BYTE_STEPS = 31 }; /* 31 * 8 <= 255: byte counters cannot wrap */
    const int64_t W = g->W, spread = pf_spread(lines, W);
    const uint64_t *b = g->Bpan + panel * W * NB;
    int rows = (int)MIN(MR, g->m - i), cols = (int)tile_cols(g, panel);
    const uint64_t *a[MR];
    for (int r = 0; r < MR; r++)
        a[r] = g->A + (i + MIN(r, rows - 1)) * W;
    uint64x2_t h[MR][NV];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            h[r][v] = vdupq_n_u64(0);
    for (int64_t w0 = 0; w0 < W; w0 += BYTE_STEPS) {
        int64_t w1 = MIN(W, w0 + BYTE_STEPS);
        uint8x16_t bytes[MR][NV];
        for (int r = 0; r < MR; r++)
            for (int v = 0; v < NV; v++)
                bytes[r][v] = vdupq_n_u8(0);
        for (int64_t w = w0; w < w1; w++) {
            if (pf) {
                __builtin_prefetch(PF_LINE(pf, 2 * w, spread), 0, 3);
                __builtin_prefetch(PF_LINE(pf, 2 * w + 1, spread), 0, 3);
            }
            uint64x2_t bv[NV];
            for (int v = 0; v < NV; v++)
                bv[v] = vld1q_u64(b + w * NB + 2 * v);
            for (int r = 0; r < MR; r++) {
                uint64x2_t x = vld1q_dup_u64(a[r] + w);
                for (int v = 0; v < NV; v++)
                    bytes[r][v] = vaddq_u8(bytes[r][v], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(x, bv[v]))));
            }
        }
        for (int r = 0; r < MR; r++)
            for (int v = 0; v < NV; v++)
                h[r][v] = vpadalq_u32(h[r][v], vpaddlq_u16(vpaddlq_u8(bytes[r][v])));
    }
    for (int r = 0; r < rows; r++) {
        float *dst = g->C + (i + r) * g->k + panel * NB;
        for (int v = 0; v < NV; v++)
            for (int c = 0; c < 2 && 2 * v + c < cols; c++)
                dst[2 * v + c] = (float)(g->n - 2 * (int64_t)(c == 0 ? vgetq_lane_u64(h[r][v], 0)
                                                                     : vgetq_lane_u64(h[r][v], 1)));
    }
}

static const kernel_t KERNEL_NEON = {4, 4, tile_neon, pack_row_neon, transpose64};
#endif

static const kernel_t *kernel_for(int path)
{
    switch (path) {
#ifdef XNOR_X86
    case PATH_AVX512:
        return &KERNEL_AVX512;
    case PATH_AVX2:
        return &KERNEL_AVX2;
#endif
#ifdef XNOR_NEON
    case PATH_NEON:
        return &KERNEL_NEON;
#endif
    default:
        return &KERNEL_PORTABLE;
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Packing B column-wise: word group w (source rows 64w .. 64w + 63) of columns [c0, c1).                  */

/* The scratch of a word group: the source rows are packed into 64-word blocks, scratch[64q + r] = word q of row r
 * (pack_row with stride 64); transposing each block in place then leaves scratch[j] = the word of column j. */
INLINE uint64_t *scratch_row(uint64_t *scratch, int r)
{
    return scratch + r;
}

/* Transpose the blocks of a scratch holding `nrows` packed rows of `cols` bits (rows past nrows count as 0). */
static void rows_to_columns(const kernel_t *kern, uint64_t *scratch, int nrows, int64_t cols)
{
    for (int64_t q = 0; 64 * q < cols; q++) {
        for (int r = nrows; r < 64; r++)
            scratch[64 * q + r] = 0;
        kern->transpose(scratch + 64 * q);
    }
}

/* Packs word group w (source rows 64w .. 64w + 63) of columns [c0, c1) of B (n x k) into scratch[0 .. c1 - c0):
 * each source row is read once, in order (a sequential stream when c0 = 0 and c1 = k), packed like a row of A,
 * and the 64 x 64 bit blocks are transposed.  scratch holds 64 * ceil((c1 - c0) / 64) words, 64-byte aligned. */
static void pack_word_group(const kernel_t *kern, const float *B, int64_t n, int64_t k, int64_t w, int64_t c0,
                            int64_t c1, uint64_t *scratch)
{
    enum { AHEAD = 2 }; /* rows prefetched ahead: the pieces of a block are too short for the hardware prefetcher */
    int rows = (int)MIN(64, n - 64 * w);
    int64_t cols = c1 - c0;
    for (int r = 0; r < rows; r++) {
        if (r + AHEAD < rows)
            for (int64_t off = 0; off < 4 * cols; off += 64)
                __builtin_prefetch((const char *)(B + (64 * w + r + AHEAD) * k + c0) + off, 0, 3);
        kern->pack_row(B + (64 * w + r) * k + c0, cols, scratch_row(scratch, r), 64);
    }
    rows_to_columns(kern, scratch, rows, cols);
}

/* ------------------------------------------------------------------------------------------------------ */
/* The GEMM pipeline.                                                                                       */

/* Columns of block `cb` of B, and the panels they cover. */
INLINE int64_t block_end_panel(const gemm_job *g, int64_t cb)
{
    return cb == 0 ? g->first_panels : g->first_panels + cb * (g->panels - g->first_panels) / (g->blocks - 1);
}

INLINE int64_t block_first_panel(const gemm_job *g, int64_t cb)
{
    return cb == 0 ? 0 : block_end_panel(g, cb - 1);
}

/* Columns [c0, c1) of block cb: c1 runs to the end of its last panel (columns past k are zero padding). */
INLINE void block_columns(const gemm_job *g, int64_t cb, int64_t *c0, int64_t *c1)
{
    *c0 = block_first_panel(g, cb) * g->kern->nb;
    *c1 = block_end_panel(g, cb) * g->kern->nb;
}

/* Fused call: words[j - c0] for columns [c0, c1) of word group s (whole panels), into B's panels (zero past k). */
static void store_word_group(const gemm_job *g, int64_t s, int64_t c0, int64_t c1, const uint64_t *words)
{
    const int64_t nb = g->kern->nb;
    for (int64_t p = c0 / nb; p < c1 / nb; p++) {
        uint64_t *dst = g->Bpan + (p * g->W + s) * nb;
        const uint64_t *src = words + (p * nb - c0);
        int64_t valid = MIN(nb, g->k - p * nb);
        memcpy(dst, src, sizeof(uint64_t) * (size_t)valid);
        memset(dst + valid, 0, sizeof(uint64_t) * (size_t)(nb - valid));
    }
}

/* Packed call: panel p of B from the packed rows of B (transposed into [w][c], zero past k). */
static void repack_panel(const gemm_job *g, int64_t p)
{
    const int nb = g->kern->nb;
    const int64_t W = g->W;
    uint64_t *dst = g->Bpan + p * W * nb;
    for (int c = 0; c < nb; c++) {
        int64_t j = p * nb + c;
        const uint64_t *src = g->Bp + j * W;
        for (int64_t w = 0; w < W; w++)
            dst[w * nb + c] = j < g->k ? src[w] : 0;
    }
}

/* Slice s of block cb, all at once (block 0, before any product).  Fused: word group s of the block's
 * columns; packed: panel s of the block. */
static void produce_slice(const gemm_job *g, int64_t cb, int64_t s, uint64_t *scratch)
{
    int64_t c0, c1;
    block_columns(g, cb, &c0, &c1);
    if (g->Bf) {
        if (c0 < g->k)
            pack_word_group(g->kern, g->Bf, g->n, g->k, s, c0, MIN(c1, g->k), scratch);
        store_word_group(g, s, c0, c1, scratch);
    } else if (block_first_panel(g, cb) + s < block_end_panel(g, cb)) {
        repack_panel(g, block_first_panel(g, cb) + s);
    }
}

/* The packing a task does between its micro tiles, in units of at most a few KiB, each unit's input prefetched
 * one unit ahead (so the reads from memory overlap the popcount work):
 *   A units   (fused, when the thread's next task is in block 0): the next task's rows of A, 1024 floats a unit;
 *   B units   the slices of block cb + 1 this task owes: fused, one source row of a word group a unit (the
 *             column-wise bits collect in the thread's scratch); packed, one panel a unit. */
enum { A_UNIT = 1024 };

typedef struct {
    const gemm_job *g;
    int64_t a0, a1, a_units;        /* rows of A [a0, a1), pieces of A_UNIT floats */
    int64_t cb, s0, s1, b_units;    /* block cb, slices [s0, s1) */
    int64_t c0, c1;                 /* that block's columns */
    int64_t units, done;
    uint64_t *scratch;              /* thread scratch: the word group being packed (see scratch_row) */
    int64_t pf_unit, pf_line;       /* prefetch cursor: the unit and the next line of its input, */
    const char *pf_first;           /* the first line of that input (NULL: not looked up yet), */
    int64_t pf_lines;               /* and its number of lines */
} owed_t;

INLINE int64_t a_pieces(const gemm_job *g)
{
    return (g->n + A_UNIT - 1) / A_UNIT;
}

INLINE int64_t slice_rows(const gemm_job *g, int64_t s)
{
    return MIN(64, g->n - 64 * s);
}

/* Unit u: the bytes it reads (for prefetching). */
static const char *unit_source(const owed_t *o, int64_t u, int64_t *bytes)
{
    const gemm_job *g = o->g;
    if (u < o->a_units) {
        int64_t r = o->a0 + u / a_pieces(g), piece = u % a_pieces(g);
        *bytes = 4 * MIN(A_UNIT, g->n - piece * A_UNIT);
        return (const char *)(g->Af + r * g->n + piece * A_UNIT);
    }
    u -= o->a_units;
    if (g->Bf) {
        int64_t s = o->s0 + u / 64, i = u % 64;
        *bytes = i < slice_rows(g, s) && o->c0 < g->k ? 4 * (MIN(o->c1, g->k) - o->c0) : 0;
        return (const char *)(g->Bf + (64 * s + i) * g->k + o->c0);
    }
    int64_t j0 = o->c0 + (o->s0 + u) * g->kern->nb, j1 = MIN(g->k, j0 + g->kern->nb);
    *bytes = j1 > j0 ? (j1 - j0) * g->W * 8 : 0;
    return (const char *)(g->Bp + j0 * g->W);
}

/* The lines a tile prefetches: up to `lines` of one unit's input, continuing where the last tile stopped, within the
 * units [done, limit), where limit = the units done after the next tile: what is prefetched during a tile is packed
 * one or two tiles later, so it is still in L1 then (prefetched earlier, it would make way for the tiles' own data).
 * Returns the first line (*count = the number of lines), or NULL when there is nothing to prefetch. */
static const char *next_prefetch(owed_t *o, int64_t lines, int64_t limit, int64_t *count)
{
    if (!o->g->prefetch)
        return NULL;
    if (o->pf_unit < o->done) {
        o->pf_unit = o->done;
        o->pf_first = NULL;
    }
    for (; o->pf_unit < limit; o->pf_unit++, o->pf_first = NULL) {
        if (!o->pf_first) {
            int64_t bytes;
            const char *base = unit_source(o, o->pf_unit, &bytes);
            o->pf_first = (const char *)((uintptr_t)base & ~(uintptr_t)63); /* inputs need not be line-aligned */
            o->pf_lines = bytes ? (base + bytes - o->pf_first + 63) / 64 : 0;
            o->pf_line = 0;
        }
        if (o->pf_line < o->pf_lines) {
            int64_t n = MIN(lines, o->pf_lines - o->pf_line);
            *count = n;
            o->pf_line += n;
            return o->pf_first + 64 * (o->pf_line - n);
        }
    }
    return NULL;
}

static void do_unit(owed_t *o, int64_t u)
{
    const gemm_job *g = o->g;
    if (u < o->a_units) {
        int64_t r = o->a0 + u / a_pieces(g), piece = u % a_pieces(g);
        g->kern->pack_row(g->Af + r * g->n + piece * A_UNIT, MIN(A_UNIT, g->n - piece * A_UNIT),
                          g->Aws + r * g->W + piece * (A_UNIT / 64), 1);
        return;
    }
    u -= o->a_units;
    if (!g->Bf) {
        int64_t p = block_first_panel(g, o->cb) + o->s0 + u;
        if (p < block_end_panel(g, o->cb))
            repack_panel(g, p);
        return;
    }
    int64_t s = o->s0 + u / 64, i = u % 64, cols = MIN(o->c1, g->k) - o->c0;
    if (i < slice_rows(g, s) && cols > 0)
        g->kern->pack_row(g->Bf + (64 * s + i) * g->k + o->c0, cols, scratch_row(o->scratch, (int)i), 64);
    if (i == 63) {
        if (cols > 0)
            rows_to_columns(g->kern, o->scratch, (int)slice_rows(g, s), cols);
        store_word_group(g, s, o->c0, o->c1, o->scratch);
    }
}

/* Do units until `target` are done. */
INLINE void owed_until(owed_t *o, int64_t target)
{
    for (; o->done < target; o->done++)
        do_unit(o, o->done);
}

/* Slices of block cb + 1 owed by the task of row group rg: spread over all but the last two row groups, so
 * that the last tasks of a block, which other threads may be waiting behind, owe nothing. */
INLINE void owed_slices(const gemm_job *g, int64_t rg, int64_t *s0, int64_t *s1)
{
    int64_t owners = g->row_groups > 2 ? g->row_groups - 2 : g->row_groups;
    *s0 = rg < owners ? rg * g->slices / owners : g->slices;
    *s1 = rg < owners ? (rg + 1) * g->slices / owners : g->slices;
}

static void rows_of_group(const gemm_job *g, int64_t rg, int64_t *r0, int64_t *r1)
{
    *r0 = rg * g->task_rows;
    *r1 = MIN(g->m, *r0 + g->task_rows);
}

static void run_task(gemm_job *g, int64_t t, int64_t next, uint64_t *scratch)
{
    int64_t cb = t / g->row_groups, rg = t % g->row_groups, r0, r1;
    rows_of_group(g, rg, &r0, &r1);
    /* 1. this task's rows of A, unless the previous task of this thread packed them already */
    if (g->overlap && g->Af && cb == 0 && !__atomic_load_n(&g->rows_ready[rg], __ATOMIC_ACQUIRE)) {
        for (int64_t r = r0; r < r1; r++)
            g->kern->pack_row(g->Af + r * g->n, g->n, g->Aws + r * g->W, 1);
        __atomic_store_n(&g->rows_ready[rg], 1, __ATOMIC_RELEASE);
    }
    /* 2. what it needs from earlier tasks */
    wait_for(&g->slices_done[cb], g->slices);
    if (g->Af)
        wait_for(&g->rows_ready[rg], 1);
    /* 3. the packing it owes to later tasks, done between its micro tiles */
    owed_t o;
    memset(&o, 0, sizeof(o));
    o.g = g;
    o.scratch = scratch;
    if (g->overlap && g->Af && next < g->ntasks && next / g->row_groups == 0) {
        rows_of_group(g, next % g->row_groups, &o.a0, &o.a1);
        o.a_units = (o.a1 - o.a0) * a_pieces(g);
    }
    if (cb + 1 < g->blocks) {
        o.cb = cb + 1;
        owed_slices(g, rg, &o.s0, &o.s1);
        block_columns(g, cb + 1, &o.c0, &o.c1);
        o.b_units = (o.s1 - o.s0) * (g->Bf ? 64 : 1);
    }
    o.units = o.a_units + o.b_units;
    /* 4. the products */
    const kernel_t *kern = g->kern;
    int64_t p0 = block_first_panel(g, cb), p1 = block_end_panel(g, cb);
    int64_t tiles = (p1 - p0) * ((r1 - r0 + kern->mr - 1) / kern->mr), tile = 0;
    for (int64_t p = p0; p < p1; p++)
        for (int64_t i = r0; i < r1; i += kern->mr) {
            int64_t lines = 0;
            const char *pf = o.units ? next_prefetch(&o, 2 * g->W, o.units * MIN(tile + 2, tiles) / tiles, &lines)
                                     : NULL;
            kern->tile(g, i, p, pf, lines);
            owed_until(&o, o.units * ++tile / tiles);
        }
    owed_until(&o, o.units);
    if (o.a_units)
        __atomic_store_n(&g->rows_ready[next % g->row_groups], 1, __ATOMIC_RELEASE);
    if (o.s1 > o.s0)
        __atomic_fetch_add(&g->slices_done[cb + 1], o.s1 - o.s0, __ATOMIC_RELEASE);
}

static void *gemm_worker(void *arg)
{
    gemm_job *g = (gemm_job *)arg;
    int64_t slot = __atomic_fetch_add(&g->next_slot, 1, __ATOMIC_RELAXED);
    uint64_t *scratch = g->thread_words + slot * g->thread_scratch;
    for (int64_t s; (s = __atomic_fetch_add(&g->next_slice0, 1, __ATOMIC_RELAXED)) < g->slices;) {
        produce_slice(g, 0, s, scratch);
        __atomic_fetch_add(&g->slices_done[0], 1, __ATOMIC_RELEASE);
    }
    if (g->Af && !g->overlap) /* all rows of A too, before any product */
        for (int64_t rg; (rg = __atomic_fetch_add(&g->next_rows0, 1, __ATOMIC_RELAXED)) < g->row_groups;) {
            int64_t r0, r1;
            rows_of_group(g, rg, &r0, &r1);
            for (int64_t r = r0; r < r1; r++)
                g->kern->pack_row(g->Af + r * g->n, g->n, g->Aws + r * g->W, 1);
            __atomic_store_n(&g->rows_ready[rg], 1, __ATOMIC_RELEASE);
        }
    int64_t t = __atomic_fetch_add(&g->next_task, 1, __ATOMIC_RELAXED);
    while (t < g->ntasks) {
        int64_t next = __atomic_fetch_add(&g->next_task, 1, __ATOMIC_RELAXED);
        run_task(g, t, next, scratch);
        t = next;
    }
    return NULL;
}

static void *aligned_buffer(size_t bytes)
{
    return aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
}

/* Workspaces of 2 MiB and more on transparent huge pages where the kernel offers them (fewer TLB misses for the
 * panels and the packed rows; NumPy does the same for its large arrays). */
static void *workspace_buffer(size_t bytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const size_t huge = (size_t)2 << 20;
    if (bytes >= huge) {
        size_t rounded = (bytes + huge - 1) / huge * huge;
        void *p = aligned_alloc(huge, rounded);
        if (p)
            madvise(p, rounded, MADV_HUGEPAGE); /* advice only: failure changes nothing */
        return p;
    }
#endif
    return aligned_buffer(bytes);
}

/* A workspace kept between calls (up to WORKSPACE_KEEP bytes), so a call does not pay the page faults of fresh
 * memory; a concurrent call, or a bigger one, gets its own allocation. */
#define WORKSPACE_KEEP ((size_t)256 << 20)
static pthread_mutex_t workspace_lock = PTHREAD_MUTEX_INITIALIZER;
static char *workspace;
static size_t workspace_bytes;

static char *workspace_acquire(size_t bytes, int *cached)
{
    *cached = 0;
    if (bytes <= WORKSPACE_KEEP && pthread_mutex_trylock(&workspace_lock) == 0) {
        if (workspace_bytes < bytes) {
            free(workspace);
            workspace = workspace_buffer(bytes);
            workspace_bytes = workspace ? bytes : 0;
        }
        if (workspace) {
            *cached = 1;
            return workspace;
        }
        pthread_mutex_unlock(&workspace_lock);
    }
    return workspace_buffer(bytes);
}

static void workspace_release(char *ws, int cached)
{
    if (cached)
        pthread_mutex_unlock(&workspace_lock);
    else
        free(ws);
}

/* Shared driver of the fused (floats in) and packed (words in) GEMMs. */
static int run_gemm(const float *Af, const float *Bf, const uint64_t *Ap, const uint64_t *Bp, int64_t m,
                    int64_t n, int64_t k, float *C, int threads, int path)
{
    int p = resolve_path(path);
    if (p < 0)
        return p == -1 ? ERR_PATH_UNAVAILABLE : ERR_BAD_PATH;
    const tuning_t *tune = get_tuning();
    const kernel_t *kern = kernel_for(p);
    gemm_job g;
    memset(&g, 0, sizeof(g));
    g.kern = kern;
    g.Af = Af;
    g.Bf = Bf;
    g.Bp = Bp;
    g.C = C;
    g.m = m;
    g.n = n;
    g.k = k;
    g.W = (n + 63) / 64;
    g.prefetch = tune->prefetch;
    g.overlap = tune->overlap;
    g.task_rows = MAX(kern->mr, tune->task_rows / kern->mr * kern->mr);
    g.row_groups = (m + g.task_rows - 1) / g.task_rows;
    g.panels = (k + kern->nb - 1) / kern->nb;
    int64_t block_bytes = (int64_t)(tune->l2_bytes * tune->block_share);
    g.block_panels = MAX(1, block_bytes / (g.W * 8 * kern->nb));
    g.first_panels = g.overlap ? MIN(g.panels, MAX(1, (int64_t)((double)g.panels * tune->first_block + 0.5)))
                               : g.panels;
    /* the rest in equal blocks (a last block of a few panels would pack its B in units too small to pay) */
    g.blocks = 1 + (g.panels - g.first_panels + g.block_panels - 1) / g.block_panels;
    if (g.blocks > 1)
        g.block_panels = (g.panels - g.first_panels + g.blocks - 2) / (g.blocks - 1);
    g.slices = Bf ? g.W : MAX(g.block_panels, g.first_panels); /* packed: every panel of the widest block */
    g.ntasks = g.row_groups * g.blocks;

    /* One workspace: B's panels, A's packed rows (fused call), the flags. */
    size_t bpan_bytes = ((size_t)(g.panels * g.W * kern->nb) * sizeof(uint64_t) + 63) / 64 * 64;
    size_t aws_bytes = Af ? ((size_t)(m * g.W) * sizeof(uint64_t) + 63) / 64 * 64 : 0;
    size_t flag_bytes = ((size_t)(g.row_groups + g.blocks) * sizeof(int64_t) + 63) / 64 * 64; /* scratch aligned */
    int nthreads = thread_count(threads, (double)m * k * g.W, MIN_GEMM_WORK, MAX(g.ntasks, 1));
    g.thread_scratch = (MAX(g.block_panels, g.first_panels) * kern->nb + 63) / 64 * 64 + 64; /* 64-byte multiple */
    size_t scratch_bytes = (size_t)nthreads * (size_t)g.thread_scratch * sizeof(uint64_t);
    int cached;
    char *ws = workspace_acquire(bpan_bytes + aws_bytes + flag_bytes + scratch_bytes, &cached);
    if (!ws)
        return ERR_MEMORY;
    g.Bpan = (uint64_t *)ws;
    g.Aws = Af ? (uint64_t *)(ws + bpan_bytes) : NULL;
    g.rows_ready = (int64_t *)(ws + bpan_bytes + aws_bytes);
    g.slices_done = g.rows_ready + g.row_groups;
    g.thread_words = (uint64_t *)(ws + bpan_bytes + aws_bytes + flag_bytes);
    memset(g.rows_ready, 0, flag_bytes);
    g.A = Af ? g.Aws : Ap;
    run_workers(nthreads, gemm_worker, &g);
    workspace_release(ws, cached);
    return OK;
}

/* C (m x k, float32) from Ap (m x W) and Bp (k x W), W = ceil(n / 64), padding bits zero. */
EXPORT int xnor_gemm_packed(const uint64_t *Ap, const uint64_t *Bp, int64_t m, int64_t k, int64_t n, float *C,
                            int threads, int path)
{
    return run_gemm(NULL, NULL, Ap, Bp, m, n, k, C, threads, path);
}

/* C = sign(A) . sign(B) from float32 A (m x n) and B (n x k), the packing fused into the GEMM. */
EXPORT int xnor_gemm_f32(const float *A, const float *B, int64_t m, int64_t n, int64_t k, float *C, int threads,
                         int path)
{
    return run_gemm(A, B, NULL, NULL, m, n, k, C, threads, path);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Public packing (row-major packed outputs).                                                              */

typedef struct {
    const kernel_t *kern;
    const float *src;
    int64_t rows, cols, words, chunks;
    uint64_t *dst;
} pack_ctx;

enum { PACK_ROWS_PER_TASK = 16 };

static void pack_rows_task(const void *vctx, int64_t t)
{
    const pack_ctx *c = (const pack_ctx *)vctx;
    int64_t end = MIN(c->rows, (t + 1) * PACK_ROWS_PER_TASK);
    for (int64_t r = t * PACK_ROWS_PER_TASK; r < end; r++)
        c->kern->pack_row(c->src + r * c->cols, c->cols, c->dst + r * c->words, 1);
}

/* Task t: word group t / chunks of the column chunk t % chunks (chunks of PACK_COLS_CHUNK columns, so the
 * scratch stays in L2); B is (rows = n) x (cols = k). */
enum { PACK_COLS_CHUNK = 16384 };

static void pack_cols_task(const void *vctx, int64_t t)
{
    const pack_ctx *c = (const pack_ctx *)vctx;
    int64_t w = t / c->chunks, j0 = (t % c->chunks) * PACK_COLS_CHUNK, j1 = MIN(c->cols, j0 + PACK_COLS_CHUNK);
    uint64_t *scratch = aligned_alloc(64, sizeof(uint64_t) * (size_t)((j1 - j0 + 63) / 64 * 64));
    if (!scratch) { /* small chunks on the stack instead of failing */
        enum { SMALL = 512 };
        uint64_t sbuf[SMALL] __attribute__((aligned(64)));
        for (int64_t a = j0; a < j1; a += SMALL) {
            int64_t b = MIN(j1, a + SMALL);
            pack_word_group(c->kern, c->src, c->rows, c->cols, w, a, b, sbuf);
            for (int64_t j = a; j < b; j++)
                c->dst[j * c->words + w] = sbuf[j - a];
        }
        return;
    }
    pack_word_group(c->kern, c->src, c->rows, c->cols, w, j0, j1, scratch);
    for (int64_t j = j0; j < j1; j++)
        c->dst[j * c->words + w] = scratch[j - j0];
    free(scratch);
}

/* Pack the rows of A (m x n) into out (m x ceil(n/64)). */
EXPORT int xnor_pack_rows(const float *A, int64_t m, int64_t n, uint64_t *out, int threads, int path)
{
    int p = resolve_path(path);
    if (p < 0)
        return p == -1 ? ERR_PATH_UNAVAILABLE : ERR_BAD_PATH;
    pack_ctx c = {kernel_for(p), A, m, n, (n + 63) / 64, 0, out};
    return parallel_for(threads, (m + PACK_ROWS_PER_TASK - 1) / PACK_ROWS_PER_TASK, pack_rows_task, &c,
                        (double)m * n, MIN_PACK_WORK);
}

/* Pack the columns of B (n x k) into out (k x ceil(n/64)), i.e. the rows of B transposed. */
EXPORT int xnor_pack_cols(const float *B, int64_t n, int64_t k, uint64_t *out, int threads, int path)
{
    int p = resolve_path(path);
    if (p < 0)
        return p == -1 ? ERR_PATH_UNAVAILABLE : ERR_BAD_PATH;
    pack_ctx c = {kernel_for(p), B, n, k, (n + 63) / 64, (k + PACK_COLS_CHUNK - 1) / PACK_COLS_CHUNK, out};
    return parallel_for(threads, c.words * c.chunks, pack_cols_task, &c, (double)n * k, MIN_PACK_WORK);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Instruction throughput measured on this CPU (the limits the benchmark compares against).                */

#ifdef XNOR_X86
/* CPU time of the calling thread: the rate of a core while it runs, even when other processes share it. */
static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* 12 independent instructions per round, rounds per call; returns instructions (or products) per second. */
#define R12(S) S(0) S(1) S(2) S(3) S(4) S(5) S(6) S(7) S(8) S(9) S(10) S(11)
#define POPQ(k) "vpopcntq %%zmm" #k ", %%zmm" #k "\n\t"
#define ADDQ(k) "vpaddq %%zmm31, %%zmm" #k ", %%zmm" #k "\n\t"
#define ADDY(k) "vpaddq %%ymm15, %%ymm" #k ", %%ymm" #k "\n\t"
#define MIX(k) "vpxorq %%zmm30, %%zmm2" #k ", %%zmm1" #k "\n\tvpopcntq %%zmm1" #k ", %%zmm1" #k "\n\t" \
               "vpaddq %%zmm1" #k ", %%zmm" #k ", %%zmm" #k "\n\t"
#define ZMM_CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", \
    "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21",    \
    "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"

AVX512 static void loop_popcnt(int64_t rounds)
{
    for (int64_t i = 0; i < rounds; i++)
        __asm__ volatile(R12(POPQ)::: ZMM_CLOBBERS);
}

AVX512 static void loop_mix(int64_t rounds)
{
    for (int64_t i = 0; i < rounds; i++)
        __asm__ volatile(MIX(0) MIX(1) MIX(2) MIX(3) MIX(4) MIX(5) MIX(6) MIX(7) MIX(8) MIX(9)::: ZMM_CLOBBERS);
}

AVX512 static void loop_add512(int64_t rounds)
{
    for (int64_t i = 0; i < rounds; i++)
        __asm__ volatile(R12(ADDQ)::: ZMM_CLOBBERS);
}

AVX2 static void loop_add256(int64_t rounds)
{
    for (int64_t i = 0; i < rounds; i++)
        __asm__ volatile(ADDY(0) ADDY(1) ADDY(2) ADDY(3) ADDY(4) ADDY(5) ADDY(6) ADDY(7) ADDY(8) ADDY(9)
                         ADDY(10) ADDY(11)::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                         "xmm8", "xmm9", "xmm10", "xmm11", "xmm15");
}

typedef struct {
    int which;
    double seconds;
    double rate_sum;
    pthread_mutex_t lock;
} rate_job;

static void *rate_worker(void *arg)
{
    rate_job *job = (rate_job *)arg;
    static void (*const loops[])(int64_t) = {loop_popcnt, loop_mix, loop_add512, loop_add256};
    static const double per_round[] = {12, 10, 12, 12};
    int64_t rounds = 1 << 16;
    double start = now_seconds(), elapsed;
    loops[job->which](rounds); /* warm up (clock ramp, AVX-512 license) */
    do {
        start = now_seconds();
        loops[job->which](rounds);
        elapsed = now_seconds() - start;
        rounds *= 2;
    } while (elapsed < job->seconds);
    pthread_mutex_lock(&job->lock);
    job->rate_sum += per_round[job->which] * (double)(rounds / 2) / elapsed;
    pthread_mutex_unlock(&job->lock);
    return NULL;
}
#endif

/* Instructions per second of thread CPU time, summed over `threads` threads running the same register-only loop
 * at once:
 * which = 0: vpopcntq zmm; 1: 512-bit products as xor + vpopcntq + vpaddq; 2: vpaddq zmm; 3: vpaddq ymm.
 * Returns 0 on success, ERR_PATH_UNAVAILABLE when the CPU lacks the instructions. */
EXPORT int xnor_measure_rate(int which, int threads, double seconds, double *rate)
{
    *rate = 0.0;
#ifdef XNOR_X86
    if (which < 0 || which > 3)
        return ERR_BAD_PATH;
    if ((which < 3 && !x86_has_avx512()) || (which == 3 && !x86_has_avx2()))
        return ERR_PATH_UNAVAILABLE;
    if (threads < 1)
        return ERR_THREADS;
    rate_job job = {which, seconds, 0.0, PTHREAD_MUTEX_INITIALIZER};
    run_workers(threads, rate_worker, &job);
    *rate = job.rate_sum;
    return OK;
#else
    (void)which;
    (void)threads;
    (void)seconds;
    return ERR_PATH_UNAVAILABLE;
#endif
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
