/*
 * Test driver for kernels/xnor_cpu.c on another instruction set (tests/test_kernels_cpu_isa.py builds it for
 * AArch64 with gcc-aarch64-linux-gnu and runs it under qemu-aarch64-static).
 *
 *   xnor_cpu_driver PATH THREADS TASK_ROWS BLOCK_SHARE < input > output
 *
 * input:  int64 m, n, k, then float32 A (m x n) and B (n x k), row-major, little-endian.
 * output: int32 status of each call, then float32 C (m x k) from xnor_gemm_f32 (packing fused) and float32 C from
 *         xnor_pack_rows + xnor_pack_cols + xnor_gemm_packed, then the packed rows of A (uint64, m x ceil(n/64))
 *         and of B's columns (uint64, k x ceil(n/64)).  The Python test compares everything with NumPy.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int xnor_path_available(int path);
void xnor_set_tuning(int task_rows, double block_share, int prefetch, double first_block, int overlap);
int xnor_pack_rows(const float *A, int64_t m, int64_t n, uint64_t *out, int threads, int path);
int xnor_pack_cols(const float *B, int64_t n, int64_t k, uint64_t *out, int threads, int path);
int xnor_gemm_packed(const uint64_t *Ap, const uint64_t *Bp, int64_t m, int64_t k, int64_t n, float *C, int threads,
                     int path);
int xnor_gemm_f32(const float *A, const float *B, int64_t m, int64_t n, int64_t k, float *C, int threads, int path);

static void *read_exact(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p || fread(p, 1, bytes, stdin) != bytes) {
        fprintf(stderr, "xnor_cpu_driver: short input\n");
        exit(2);
    }
    return p;
}

static void write_all(const void *p, size_t bytes)
{
    if (fwrite(p, 1, bytes, stdout) != bytes) {
        fprintf(stderr, "xnor_cpu_driver: write failed\n");
        exit(2);
    }
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: xnor_cpu_driver PATH THREADS TASK_ROWS BLOCK_SHARE < input > output\n");
        return 2;
    }
    int path = atoi(argv[1]), threads = atoi(argv[2]);
    xnor_set_tuning(atoi(argv[3]), atof(argv[4]), -1, 0.0, -1);
    if (!xnor_path_available(path)) {
        fprintf(stderr, "xnor_cpu_driver: path %d is not available on this CPU\n", path);
        return 3;
    }
    int64_t *dims = read_exact(3 * sizeof(int64_t));
    int64_t m = dims[0], n = dims[1], k = dims[2], words = (n + 63) / 64;
    float *A = read_exact(sizeof(float) * (size_t)(m * n)), *B = read_exact(sizeof(float) * (size_t)(n * k));
    float *fused = malloc(sizeof(float) * (size_t)(m * k)), *packed = malloc(sizeof(float) * (size_t)(m * k));
    uint64_t *Ap = malloc(sizeof(uint64_t) * (size_t)(m * words)), *Bp = malloc(sizeof(uint64_t) * (size_t)(k * words));
    int32_t status[4];
    status[0] = xnor_gemm_f32(A, B, m, n, k, fused, threads, path);
    status[1] = xnor_pack_rows(A, m, n, Ap, threads, path);
    status[2] = xnor_pack_cols(B, n, k, Bp, threads, path);
    status[3] = xnor_gemm_packed(Ap, Bp, m, k, n, packed, threads, path);
    write_all(status, sizeof(status));
    write_all(fused, sizeof(float) * (size_t)(m * k));
    write_all(packed, sizeof(float) * (size_t)(m * k));
    write_all(Ap, sizeof(uint64_t) * (size_t)(m * words));
    write_all(Bp, sizeof(uint64_t) * (size_t)(k * words));
    return 0;
}
