// tests/fake_pycuda/fake_cuda.cpp -- device memory and a cuBLAS for the PyCUDA stand-in (tests only).
//
// Device memory is host memory whose last byte is followed by an inaccessible page, so a kernel that runs past
// the end of an allocation faults (the launch support in launch.h reports it). The data start is 4-byte aligned;
// every allocation is recorded, so launches and copies can check that a pointer lies inside a live allocation.
// The cuBLAS part exports cublasCreate_v2, cublasDestroy_v2 and cublasSgemm_v2 with the signatures and status
// codes of cuBLAS 12/13 (cublas_api.h), so kernels/gpu.py binds it with ctypes exactly as it binds the real
// library. Sgemm is column-major, as cuBLAS defines it, and checks its arguments and operand extents.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

struct Allocation {
    char *base;
    size_t mapped, bytes;
};

std::map<uintptr_t, Allocation> allocations;  // by data start
std::set<void *> handles;
std::mutex lock;
int devices = 1;

// The live allocation holding [p, p + bytes), or nullptr.
const Allocation *holding(const void *p, size_t bytes)
{
    const uintptr_t address = (uintptr_t)p;
    auto it = allocations.upper_bound(address);
    if (it == allocations.begin())
        return nullptr;
    --it;
    return address + bytes <= it->first + it->second.bytes ? &it->second : nullptr;
}

enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1, CUBLAS_STATUS_INVALID_VALUE = 7,
       CUBLAS_STATUS_EXECUTION_FAILED = 13 };
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };

// Column-major matrix of `rows` x `cols` with leading dimension ld: is every element inside one allocation?
bool operand_ok(const float *p, int rows, int cols, int ld)
{
    if (rows == 0 || cols == 0)
        return true;
    return (uintptr_t)p % 4 == 0 && holding(p, ((size_t)ld * (cols - 1) + rows) * sizeof(float)) != nullptr;
}

}  // namespace

EXPORT void *fake_alloc(size_t bytes)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t rounded = (bytes + 3) / 4 * 4;
    const size_t data_pages = (rounded + page - 1) / page * page;
    void *base = mmap(nullptr, data_pages + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return nullptr;
    mprotect((char *)base + data_pages, page, PROT_NONE);
    char *data = (char *)base + data_pages - rounded;
    std::memset(data, 0xA5, rounded);  // like fresh device memory: not zero
    std::lock_guard<std::mutex> guard(lock);
    allocations[(uintptr_t)data] = Allocation{(char *)base, data_pages + page, bytes};
    return data;
}

EXPORT int fake_free(void *data)
{
    std::lock_guard<std::mutex> guard(lock);
    auto it = allocations.find((uintptr_t)data);
    if (it == allocations.end())
        return 1;
    munmap(it->second.base, it->second.mapped);
    allocations.erase(it);
    return 0;
}

// 1 when [p, p + bytes) lies inside one live allocation (bytes may be 0: p inside or at the end of one).
EXPORT int fake_range_ok(const void *p, size_t bytes)
{
    std::lock_guard<std::mutex> guard(lock);
    return holding(p, bytes) != nullptr;
}

EXPORT size_t fake_bytes_in_use()
{
    std::lock_guard<std::mutex> guard(lock);
    size_t total = 0;
    for (const auto &entry : allocations)
        total += entry.second.bytes;
    return total;
}

EXPORT void fake_set_devices(int count) { devices = count; }

// ---- cuBLAS v2 subset

EXPORT int cublasCreate_v2(void **handle)
{
    if (handle == nullptr)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (devices == 0)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    std::lock_guard<std::mutex> guard(lock);
    *handle = new char[1];
    handles.insert(*handle);
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT int cublasDestroy_v2(void *handle)
{
    std::lock_guard<std::mutex> guard(lock);
    if (handles.erase(handle) == 0)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    delete[] (char *)handle;
    return CUBLAS_STATUS_SUCCESS;
}

// C (m x n) = alpha op(A) op(B) + beta C, column-major; op(A) is m x k, op(B) is k x n. C is not read when
// beta == 0 (as in cuBLAS). Products are summed in float, in order.
EXPORT int cublasSgemm_v2(void *handle, int transa, int transb, int m, int n, int k, const float *alpha,
                          const float *A, int lda, const float *B, int ldb, const float *beta, float *C, int ldc)
{
    std::lock_guard<std::mutex> guard(lock);
    if (handles.count(handle) == 0)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (transa < CUBLAS_OP_N || transa > CUBLAS_OP_C || transb < CUBLAS_OP_N || transb > CUBLAS_OP_C || m < 0 ||
        n < 0 || k < 0 || alpha == nullptr || beta == nullptr)
        return CUBLAS_STATUS_INVALID_VALUE;
    const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
    const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
    if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!operand_ok(A, a_rows, a_cols, lda) || !operand_ok(B, b_rows, b_cols, ldb) || !operand_ok(C, m, n, ldc))
        return CUBLAS_STATUS_EXECUTION_FAILED;  // on a GPU: an illegal address, reported as a failed execution
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            float sum = 0.0f;
            for (int p = 0; p < k; ++p) {
                const float a = transa == CUBLAS_OP_N ? A[i + (size_t)p * lda] : A[p + (size_t)i * lda];
                const float b = transb == CUBLAS_OP_N ? B[p + (size_t)j * ldb] : B[j + (size_t)p * ldb];
                sum += a * b;
            }
            float &c = C[i + (size_t)j * ldc];
            c = *beta == 0.0f ? *alpha * sum : *alpha * sum + *beta * c;
        }
    return CUBLAS_STATUS_SUCCESS;
}
