// tests/fake_pycuda/launch.h -- launch entry points of one CUDA module for the PyCUDA stand-in (tests only).
//
// Included after tests/cuda_on_cpu/cuda_on_cpu.h and the module's .cu source. FAKE_KERNEL(name) exports
//   int fake_params_<name>(int *kinds, int *sizes, int capacity)
//       the kernel's parameter count; kinds[i] = 0 pointer, 1 integer, 2 floating point; sizes[i] in bytes
//   int fake_launch_<name>(const unsigned *grid, const unsigned *block, void **args, char *error, int error_size)
//       runs the kernel on grid x block CUDA threads (fibers); args[i] points to the value of parameter i, as
//       the kernelParams of cuLaunchKernel. Returns 0, 1 for a launch error (e.g. barrier divergence) or 2 for
//       a memory fault (an access past the end of an allocation hits its guard page), with a one-line reason.
#ifndef FAKE_LAUNCH_H
#define FAKE_LAUNCH_H

#include <setjmp.h>
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>

namespace fake {

inline sigjmp_buf &fault_jump()
{
    static sigjmp_buf jump;
    return jump;
}

inline volatile sig_atomic_t &launch_running()
{
    static volatile sig_atomic_t running = 0;
    return running;
}

inline void on_fault(int, siginfo_t *, void *)
{
    if (launch_running())
        siglongjmp(fault_jump(), 1);
    signal(SIGSEGV, SIG_DFL);  // not ours: fault again with the default action
}

inline void write_error(char *error, int error_size, const std::string &text)
{
    if (error && error_size > 0)
        std::snprintf(error, (size_t)error_size, "%s", text.c_str());
}

// Run a launch with the SIGSEGV trap installed; faults and launch errors become return codes.
inline int trapped(const std::function<void()> &body, char *error, int error_size)
{
    struct sigaction action, previous;
    std::memset(&action, 0, sizeof action);
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &previous);
    volatile int status = 0;
    if (sigsetjmp(fault_jump(), 1) == 0) {
        launch_running() = 1;
        try {
            body();
        } catch (const std::exception &e) {
            write_error(error, error_size, e.what());
            status = 1;
        }
    } else {
        const cuda_on_cpu::Scheduler &s = cuda_on_cpu::scheduler();
        write_error(error, error_size, "illegal memory access by thread " + cuda_on_cpu::dim_text(s.thread_index) +
                                           " of block " + cuda_on_cpu::dim_text(s.block_index));
        status = 2;
    }
    launch_running() = 0;
    sigaction(SIGSEGV, &previous, nullptr);
    return status;
}

template <class T> constexpr int kind()
{
    return std::is_pointer<T>::value ? 0 : std::is_integral<T>::value ? 1 : std::is_floating_point<T>::value ? 2 : 3;
}

template <class... P> int describe(void (*)(P...), int *kinds, int *sizes, int capacity)
{
    const int k[] = {kind<P>()..., 0};
    const int s[] = {(int)sizeof(P)..., 0};
    const int count = (int)sizeof...(P);
    for (int i = 0; i < count && i < capacity; ++i) {
        kinds[i] = k[i];
        sizes[i] = s[i];
    }
    return count;
}

template <class... P, size_t... I> void call(void (*kernel)(P...), void **args, std::index_sequence<I...>)
{
    kernel(*static_cast<std::remove_cv_t<P> *>(args[I])...);
}

template <class... P> void call(void (*kernel)(P...), void **args)
{
    call(kernel, args, std::index_sequence_for<P...>{});
}

}  // namespace fake

#define FAKE_KERNEL(name)                                                                                          \
    extern "C" __attribute__((visibility("default"))) int fake_params_##name(int *kinds, int *sizes, int capacity) \
    {                                                                                                              \
        return fake::describe(name, kinds, sizes, capacity);                                                       \
    }                                                                                                              \
    extern "C" __attribute__((visibility("default"))) int fake_launch_##name(                                     \
        const unsigned *grid, const unsigned *block, void **args, char *error, int error_size)                     \
    {                                                                                                              \
        return fake::trapped(                                                                                      \
            [&] {                                                                                                  \
                cuda_on_cpu::launch(dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]),           \
                                    [&] { fake::call(name, args); });                                              \
            },                                                                                                     \
            error, error_size);                                                                                    \
    }

#endif  // FAKE_LAUNCH_H
