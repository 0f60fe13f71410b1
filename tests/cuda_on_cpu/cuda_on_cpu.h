// cuda_on_cpu.h -- run CUDA C kernels on the CPU for tests (ENVIRONMENT.md, "CUDA without a GPU").
//
// Include this header, then the unchanged .cu file, and compile with g++. It defines the CUDA
// keywords the kernels use (__global__, __device__, __shared__, threadIdx, blockIdx, blockDim,
// gridDim, __syncthreads, __popc). cuda_on_cpu::launch(grid, block, body) runs the blocks one
// after another; inside a block every CUDA thread is a fiber (ucontext) with its own stack, and a
// fiber only gives up the CPU at __syncthreads. A block therefore runs in "rounds": each fiber runs
// until it reaches a barrier or returns. A round where some threads returned while others wait at
// a barrier is barrier divergence (undefined behaviour in CUDA) and is reported as an error.
//
// Not modelled: warps and warp intrinsics, atomics, inline PTX, dynamic shared memory, concurrent
// blocks. Because __shared__ becomes `static`, blocks must run one at a time (they do).
#ifndef CUDA_ON_CPU_H
#define CUDA_ON_CPU_H

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_on_cpu {

// Raised by launch(): barrier divergence or a bad launch configuration.
struct LaunchError : std::runtime_error {
    explicit LaunchError(const std::string &what) : std::runtime_error(what) {}
};

enum class FiberState { Runnable, AtBarrier, Finished };

struct Fiber {
    ucontext_t context;
    FiberState state = FiberState::Runnable;
    dim3 thread_index;
};

// The scheduler's state. Only one fiber runs at a time, so plain globals are enough.
struct Scheduler {
    ucontext_t home;                       // the launching code's context
    std::vector<Fiber> fibers;
    std::vector<char> stacks;
    size_t current = 0;
    const std::function<void()> *body = nullptr;
    dim3 thread_index, block_index, block_dim, grid_dim;
};

inline Scheduler &scheduler()
{
    static Scheduler instance;
    return instance;
}

// Entry point of every fiber: run the kernel body for this thread, then mark it finished.
inline void fiber_main()
{
    Scheduler &s = scheduler();
    (*s.body)();
    s.fibers[s.current].state = FiberState::Finished;
    swapcontext(&s.fibers[s.current].context, &s.home);
}

// __syncthreads(): park this fiber at the barrier and return to the scheduler.
inline void syncthreads()
{
    Scheduler &s = scheduler();
    s.fibers[s.current].state = FiberState::AtBarrier;
    swapcontext(&s.fibers[s.current].context, &s.home);
}

inline std::string dim_text(const dim3 &d)
{
    return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

// Prepare a fiber to start at fiber_main on its own stack (a separate function because getcontext
// "returns twice" and would make the caller's loop variables volatile-unsafe).
__attribute__((noinline)) inline void start_fiber(Fiber &f, dim3 thread_index, char *stack, size_t stack_bytes)
{
    f.state = FiberState::Runnable;
    f.thread_index = thread_index;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stack;
    f.context.uc_stack.ss_size = stack_bytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
}

// Run one block: all fibers start fresh, then rounds continue until every fiber has finished.
inline void run_block(Scheduler &s, size_t stack_bytes)
{
    const size_t n = s.fibers.size();
    size_t index = 0;
    for (unsigned int z = 0; z < s.block_dim.z; ++z)
        for (unsigned int y = 0; y < s.block_dim.y; ++y)
            for (unsigned int x = 0; x < s.block_dim.x; ++x, ++index) {
                start_fiber(s.fibers[index], dim3(x, y, z), s.stacks.data() + index * stack_bytes, stack_bytes);
            }
    for (unsigned long round = 0;; ++round) {
        size_t at_barrier = 0, finished = 0;
        for (size_t i = 0; i < n; ++i) {
            s.current = i;
            s.thread_index = s.fibers[i].thread_index;
            swapcontext(&s.home, &s.fibers[i].context);
            if (s.fibers[i].state == FiberState::AtBarrier) ++at_barrier; else ++finished;
        }
        if (finished == n)
            return;
        if (at_barrier < n)
            throw LaunchError("barrier divergence in block " + dim_text(s.block_index) + " at barrier " +
                              std::to_string(round + 1) + ": " + std::to_string(finished) +
                              " threads returned while " + std::to_string(at_barrier) +
                              " wait at __syncthreads");
        for (Fiber &f : s.fibers) f.state = FiberState::Runnable;
    }
}

// Launch `body` (a call of the kernel with its arguments) on grid x block threads.
inline void launch(dim3 grid, dim3 block, const std::function<void()> &body, size_t stack_bytes = 64 * 1024)
{
    const size_t threads = (size_t)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0)
        throw LaunchError("invalid launch configuration grid " + dim_text(grid) + " block " + dim_text(block) +
                          ": need 1..1024 threads per block and a non-empty grid");
    Scheduler &s = scheduler();
    s.fibers.assign(threads, Fiber());
    if (s.stacks.size() < threads * stack_bytes) s.stacks.resize(threads * stack_bytes);
    s.body = &body;
    s.block_dim = block;
    s.grid_dim = grid;
    for (unsigned int z = 0; z < grid.z; ++z)
        for (unsigned int y = 0; y < grid.y; ++y)
            for (unsigned int x = 0; x < grid.x; ++x) {
                s.block_index = dim3(x, y, z);
                run_block(s, stack_bytes);
            }
    s.body = nullptr;
}

inline int popc(unsigned int x) { return __builtin_popcount(x); }

}  // namespace cuda_on_cpu

// The CUDA vocabulary used by kernels/binary_kernels.cu.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define threadIdx (cuda_on_cpu::scheduler().thread_index)
#define blockIdx (cuda_on_cpu::scheduler().block_index)
#define blockDim (cuda_on_cpu::scheduler().block_dim)
#define gridDim (cuda_on_cpu::scheduler().grid_dim)
#define __syncthreads() cuda_on_cpu::syncthreads()
#define __popc(x) cuda_on_cpu::popc(x)

#endif  // CUDA_ON_CPU_H
