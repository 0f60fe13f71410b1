// tests/cuda_on_cpu/driver.cpp -- C entry points that run kernels/binary_kernels.cu on the CPU (tests only).
//
// Build (tests/test_cuda_kernels.py does this into a cache directory):
//   g++ -std=c++17 -O2 -shared -fPIC -fvisibility=hidden -I kernels -I tests/cuda_on_cpu tests/cuda_on_cpu/driver.cpp -o harness.so
// Each entry point copies its inputs into "device" buffers that end right before an inaccessible
// guard page, launches the kernel with the caller's grid and block through cuda_on_cpu::launch,
// and copies the output back. A kernel that reads or writes past the end of a buffer hits the
// guard page; the SIGSEGV is caught and reported as an error instead of crashing the process.
// Return value: 0 on success, 1 for a launch error (e.g. barrier divergence), 2 for an
// out-of-bounds access; the one-line reason is written to `error` (error_size bytes).
#include "cuda_on_cpu.h"
#include "binary_kernels.cu"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#define HARNESS_API extern "C" __attribute__((visibility("default")))

namespace {

// A buffer placed so that its last byte is followed directly by a PROT_NONE page.
class GuardedBuffer {
public:
    explicit GuardedBuffer(size_t bytes) : bytes_(bytes)
    {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        data_pages_ = (bytes + page - 1) / page * page;
        mapped_ = data_pages_ + page;
        void *base = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) throw cuda_on_cpu::LaunchError("mmap failed for a device buffer");
        base_ = static_cast<char *>(base);
        mprotect(base_ + data_pages_, page, PROT_NONE);
        data_ = base_ + data_pages_ - bytes;
    }
    ~GuardedBuffer() { munmap(base_, mapped_); }
    GuardedBuffer(const GuardedBuffer &) = delete;
    GuardedBuffer &operator=(const GuardedBuffer &) = delete;
    template <class T> T *as() { return reinterpret_cast<T *>(data_); }
    void upload(const void *host) { std::memcpy(data_, host, bytes_); }
    void download(void *host) const { std::memcpy(host, data_, bytes_); }

private:
    size_t bytes_, data_pages_, mapped_;
    char *base_, *data_;
};

sigjmp_buf fault_jump;
volatile sig_atomic_t launch_running = 0;

void on_segfault(int, siginfo_t *, void *)
{
    if (launch_running) siglongjmp(fault_jump, 1);  // back to trapped(), on the launcher's stack
    signal(SIGSEGV, SIG_DFL);  // not during a launch: let the fault happen again with the default action
}

void write_error(char *error, int error_size, const std::string &text)
{
    if (error && error_size > 0) std::snprintf(error, (size_t)error_size, "%s", text.c_str());
}

// Run `body` (a kernel launch) with the SIGSEGV trap installed; turn faults and launch errors into
// return codes. The device buffers live in the caller's frame, so a siglongjmp skips no destructor
// that matters (the scheduler's state is global and reset by the next launch).
int trapped(const std::function<void()> &body, char *error, int error_size)
{
    struct sigaction action, previous;
    std::memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segfault;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &previous);
    volatile int status = 0;
    if (sigsetjmp(fault_jump, 1) == 0) {
        launch_running = 1;
        try {
            body();
        } catch (const std::exception &e) {
            write_error(error, error_size, e.what());
            status = 1;
        }
    } else {
        const cuda_on_cpu::Scheduler &s = cuda_on_cpu::scheduler();
        write_error(error, error_size,
                    "out-of-bounds memory access by thread " + cuda_on_cpu::dim_text(s.thread_index) +
                        " of block " + cuda_on_cpu::dim_text(s.block_index));
        status = 2;
    }
    launch_running = 0;
    sigaction(SIGSEGV, &previous, nullptr);
    return status;
}

size_t words_for(long long bits) { return (size_t)((bits + 31) / 32); }

}  // namespace

HARNESS_API int harness_pack_rows(const float *A, unsigned int *A_packed, int m, int n, unsigned int grid_x,
                                  unsigned int block_x, char *error, int error_size)
{
    GuardedBuffer a((size_t)m * n * sizeof(float)), out((size_t)m * words_for(n) * sizeof(unsigned int));
    a.upload(A);
    const int status = trapped([&] {
        cuda_on_cpu::launch(dim3(grid_x), dim3(block_x),
                            [&] { pack_rows(a.as<float>(), out.as<unsigned int>(), m, n); });
    }, error, error_size);
    if (status == 0) out.download(A_packed);
    return status;
}

HARNESS_API int harness_pack_cols(const float *B, unsigned int *B_packed, int n, int k, unsigned int grid_x,
                                  unsigned int block_x, char *error, int error_size)
{
    GuardedBuffer b((size_t)n * k * sizeof(float)), out(words_for(n) * k * sizeof(unsigned int));
    b.upload(B);
    const int status = trapped([&] {
        cuda_on_cpu::launch(dim3(grid_x), dim3(block_x),
                            [&] { pack_cols(b.as<float>(), out.as<unsigned int>(), n, k); });
    }, error, error_size);
    if (status == 0) out.download(B_packed);
    return status;
}

HARNESS_API int harness_xnor_gemm(const unsigned int *A_packed, const unsigned int *B_packed, float *C, int m,
                                  int n_words, int k, int n_bits, unsigned int grid_x, unsigned int grid_y,
                                  unsigned int block_x, unsigned int block_y, char *error, int error_size)
{
    GuardedBuffer a((size_t)m * n_words * 4), b((size_t)n_words * k * 4), c((size_t)m * k * 4);
    a.upload(A_packed);
    b.upload(B_packed);
    const int status = trapped([&] {
        cuda_on_cpu::launch(dim3(grid_x, grid_y), dim3(block_x, block_y), [&] {
            xnor_gemm(a.as<unsigned int>(), b.as<unsigned int>(), c.as<float>(), m, n_words, k, n_bits);
        });
    }, error, error_size);
    if (status == 0) c.download(C);
    return status;
}

HARNESS_API int harness_baseline_gemm(const float *A, const float *B, float *C, int m, int n, int k,
                                      unsigned int grid_x, unsigned int grid_y, unsigned int block_x,
                                      unsigned int block_y, char *error, int error_size)
{
    GuardedBuffer a((size_t)m * n * 4), b((size_t)n * k * 4), c((size_t)m * k * 4);
    a.upload(A);
    b.upload(B);
    const int status = trapped([&] {
        cuda_on_cpu::launch(dim3(grid_x, grid_y), dim3(block_x, block_y),
                            [&] { baseline_gemm(a.as<float>(), b.as<float>(), c.as<float>(), m, n, k); });
    }, error, error_size);
    if (status == 0) c.download(C);
    return status;
}
