// Host emulation of the parts of the CUDA execution model the kernels in kernels/ use, so
// that they compile as ordinary C++20 and run on the CPU in tests (kernels/emu/harness.cpp,
// tests/kernels_*emulated.rs).
//
// How it runs a launch. Blocks run one after another. The threads of a block run as fibers
// (own stacks) on the calling OS thread, switched only at barriers: a fiber runs until it
// reaches __syncthreads() or a warp collective (shuffle, __syncwarp, ldmatrix, mma.sync),
// where it waits until every thread that must take part has arrived. Because one block
// runs at a time on one OS thread, `__shared__` is static storage, and the built-in index
// variables are thread_local variables set before each switch into a fiber. Fibers rather
// than one OS thread per CUDA thread: a switch costs far less than waking 256 threads at
// every barrier, runs are reproducible, and a barrier that not every thread reaches is
// detected (no fiber can run but some have not finished) and reported instead of hanging.
//
// Schedules. Which runnable fiber goes next is chosen by a schedule (set_schedule, a seed):
// 0 sweeps over the threads in order, one synchronisation point each per sweep, which keeps
// warps in near lock-step; 1 and 2 run one warp at a time, ascending and descending, each as
// far as it gets before __syncthreads (through its warp collectives); 3 sweeps in
// descending order; larger seeds draw a random mix of these per barrier interval, with
// random warp, thread and lane orders. A kernel's results must not depend on the schedule:
// running it under several and comparing the results bit for bit exposes missing barriers
// and write-after-read races on shared memory, which a single order can hide.
//
// What it checks: barrier deadlocks, divergent warp collectives (lanes of one warp waiting
// at different kinds of collective), shuffle masks other than the whole warp, unaligned
// ldmatrix rows; reads of shared memory that no thread of the block wrote (each block
// starts with it filled with ones, NaN to every float type); cp.async destinations read
// before the wait that retires the copy (async_copy.h: copies land at the wait under some
// schedules and at issue under others), and copies never waited for; the same for TMA
// copies and wgmma products, mbarrier phases that can never complete, and the operands of
// both (mbarrier.h, tma.h, wgmma.h). Built with
// -fsanitize=alignment,bounds (see harness.cpp), misaligned vector accesses and indexes
// past a fixed-size array abort. What it does not check: races inside one turn (a fiber is
// never interrupted between synchronisation points, so two threads' read-modify-writes of
// one location never interleave), memory outside the kernel's buffers (the harness guards
// its buffers instead), and anything about timing or the memory model beyond barriers.
//
// Build with -fno-strict-aliasing: the kernels read shared and global memory through the
// vector structs of common.cuh, as CUDA code does.
#ifndef SETPOINT_CUDA_EMU_H
#define SETPOINT_CUDA_EMU_H

#include <math.h>
#include <bit>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fiber_switch.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// Every __shared__ variable goes to one section, which each block start fills with ones.
// GCC ignores a section attribute on a static inside a template or inline function (such
// statics live in COMDAT groups), so kernels declare their shared memory in the extern "C"
// kernel itself and pass it down; one declared elsewhere would escape the poisoning.
#define __shared__ static __attribute__((section("emu_shared")))
#define __launch_bounds__(...)
#define __grid_constant__

// The bounds of the section, from the linker (weak: absent when no kernel has any).
extern "C" __attribute__((weak)) unsigned char __start_emu_shared[];
extern "C" __attribute__((weak)) unsigned char __stop_emu_shared[];

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }

namespace emu {

[[noreturn]] inline void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "cuda_emu: block (%u, %u, %u), thread (%u, %u, %u): ", blockIdx.x,
                 blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    std::vfprintf(stderr, fmt, ap);
    std::fputc('\n', stderr);
    va_end(ap);
    // Not exit(): static destructors would free the fiber stack this may be running on.
    std::fflush(stderr);
    std::_Exit(3);
}

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kSlotBytes = 32;  // per-thread exchange area of one warp collective

// ---------------------------------------------------------------------------------------
// Schedules: in which order the runnable threads of a block take their turns. A turn lasts
// until the thread blocks (at a barrier or a warp collective) or ends.

enum class Order : unsigned char { Ascending, Descending, Random };

enum class Mode : unsigned char {
    // Sweeps over the threads in `order`, each taking one turn: every thread advances by
    // one synchronisation point per sweep, so warps stay in near lock-step.
    Interleaved,
    // The warps in `order`, one at a time: a warp runs (its lanes taking turns in lane
    // order, through its warp collectives) until all its lanes wait at __syncthreads or
    // have ended, and only then does the next warp start. Writes of an early warp are
    // seen by the reads of a later one in the same barrier interval.
    WarpMajor,
};

struct Policy {
    Mode mode;
    Order order;
    // Draws a new mode and orders at each barrier epoch (Mode/Order above are ignored).
    bool random;
    // A thread whose arrival releases a barrier goes back to the scheduler, which picks who
    // runs next by the policy, instead of running on (as schedule 0 does).
    bool yield_on_release;
};

// Schedule 0 is the plain order (thread 0, 1, ... each to its next synchronisation point);
// 1-3 are fixed adversarial orders; every larger seed is a different random one.
inline Policy policy_of(unsigned seed) {
    switch (seed) {
        case 0: return {Mode::Interleaved, Order::Ascending, false, false};
        case 1: return {Mode::WarpMajor, Order::Ascending, false, true};
        case 2: return {Mode::WarpMajor, Order::Descending, false, true};
        case 3: return {Mode::Interleaved, Order::Descending, false, true};
        default: return {Mode::WarpMajor, Order::Random, true, true};
    }
}

inline const char* describe_schedule(unsigned seed) {
    switch (seed) {
        case 0: return "threads in turn, ascending";
        case 1: return "warp after warp, ascending";
        case 2: return "warp after warp, descending";
        case 3: return "threads in turn, descending";
        default: return "random per barrier interval";
    }
}

inline unsigned& schedule_seed() {
    static unsigned seed = 0;
    return seed;
}

// The schedule of every launch that follows.
inline void set_schedule(unsigned seed) { schedule_seed() = seed; }

struct Fiber {
    Context ctx;
    uint3 idx;
    bool done;
    unsigned bank;        // which half of its exchange slot the next collective uses
    const char* waiting;  // the barrier this fiber waits at; null when it can run
};

struct Warp {
    int arrived = 0;
    const char* op = nullptr;  // the collective its waiting lanes are in
};

struct Block {
    Context scheduler;
    std::vector<Fiber> fibers;
    std::vector<std::unique_ptr<char[]>> stacks;  // kept across blocks and launches
    std::vector<Warp> warps;
    std::vector<unsigned char> slots;
    const std::function<void()>* body = nullptr;
    int current = 0;
    int block_arrived = 0;
    int finished = 0;

    Policy policy{};
    Mode mode = Mode::Interleaved;  // of this barrier epoch
    uint64_t rng = 0;
    std::vector<int> order;     // threads (Interleaved) or warps (WarpMajor)
    int pos = 0;                // next position in `order`
    std::vector<int> lanes;     // per warp, its lanes in turn order (kWarp entries each)
    std::vector<int> lane_pos;  // per warp, next position in its lanes
    std::vector<int> urgent;    // threads to run next, before the policy's order (mbarrier.h)
};

inline Block& state() {
    static Block b;
    return b;
}

inline int warp_size(int warp) {
    int n = (int)state().fibers.size() - warp * kWarp;
    return n < kWarp ? n : kWarp;
}

inline unsigned warp_mask(int warp) {
    int n = warp_size(warp);
    return n == kWarp ? 0xffffffffu : (1u << n) - 1u;
}

// splitmix64: small, and the same sequence on every platform.
inline uint64_t next_random() {
    uint64_t z = (state().rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Fills v[0..n) with 0..n-1 in the given order.
inline void arrange(int* v, int n, Order order) {
    for (int i = 0; i < n; ++i) {
        v[i] = order == Order::Descending ? n - 1 - i : i;
    }
    if (order == Order::Random) {
        for (int i = n - 1; i > 0; --i) {
            std::swap(v[i], v[next_random() % (uint64_t)(i + 1)]);
        }
    }
}

inline Order lane_order() {
    const Block& b = state();
    return b.policy.random ? Order::Random : b.policy.order;
}

inline void arrange_lanes(int w) {
    Block& b = state();
    b.lane_pos[w] = 0;
    arrange(&b.lanes[(size_t)w * kWarp], warp_size(w), lane_order());
}

// A new barrier epoch: at block start and whenever __syncthreads releases.
inline void new_epoch() {
    Block& b = state();
    const int n = (int)b.fibers.size(), warps = (int)b.warps.size();
    const Mode before = b.mode;
    if (b.policy.random) {
        b.mode = next_random() % 4 == 0 ? Mode::Interleaved : Mode::WarpMajor;
    } else {
        b.mode = b.policy.mode;
    }
    const Order order = b.policy.random ? Order::Random : b.policy.order;
    if (b.mode == Mode::WarpMajor) {
        b.order.resize(warps);
        arrange(b.order.data(), warps, order);
        b.pos = 0;
        for (int w = 0; w < warps; ++w) {
            arrange_lanes(w);
        }
    } else if (b.policy.random || before != Mode::Interleaved || (int)b.order.size() != n) {
        // A fixed interleaved order simply sweeps on across epochs, as schedule 0 always did.
        b.order.resize(n);
        arrange(b.order.data(), n, order);
        b.pos = 0;
    }
}

inline bool runnable(int t) {
    const Fiber& f = state().fibers[t];
    return !f.done && f.waiting == nullptr;
}

// The next thread to take a turn, or -1 when none can run.
inline int pick() {
    Block& b = state();
    const int n = (int)b.fibers.size();
    while (!b.urgent.empty()) {
        const int t = b.urgent.back();
        b.urgent.pop_back();
        if (runnable(t)) return t;
    }
    if (b.mode == Mode::Interleaved) {
        for (int tries = 0; tries < n; ++tries) {
            if (b.pos == n) {
                b.pos = 0;
                if (b.policy.random) arrange(b.order.data(), n, Order::Random);
            }
            const int t = b.order[b.pos++];
            if (runnable(t)) return t;
        }
    } else {
        for (; b.pos < (int)b.order.size(); ++b.pos) {
            const int w = b.order[b.pos];
            for (int& l = b.lane_pos[w]; l < warp_size(w); ++l) {
                const int t = w * kWarp + b.lanes[(size_t)w * kWarp + l];
                if (runnable(t)) {
                    ++l;
                    return t;
                }
            }
        }
    }
    // A backstop: a warp runs until none of its lanes can, and a release resets the
    // positions, so warp after warp finds every runnable thread; n tries of a sweep find
    // them too unless a random sweep order was redrawn half-way.
    for (int t = 0; t < n; ++t) {
        if (runnable(t)) return t;
    }
    return -1;
}

// Compiler barrier after a switch: other fibers may have written any memory.
inline void clobber() { asm volatile("" ::: "memory"); }

inline void switch_to_scheduler(const char* waiting) {
    Block& b = state();
    Fiber& f = b.fibers[b.current];
    f.waiting = waiting;
    if (!switch_context(f.ctx, b.scheduler)) {
        fail("swapcontext failed");
    }
    clobber();
}

// After releasing a barrier: let the schedule choose who goes first.
inline void released() {
    if (state().policy.yield_on_release) {
        switch_to_scheduler(nullptr);
    }
}

inline void block_barrier() {
    Block& b = state();
    if (++b.block_arrived == (int)b.fibers.size()) {
        b.block_arrived = 0;
        for (Fiber& f : b.fibers) {
            f.waiting = nullptr;
        }
        new_epoch();
        released();
        return;
    }
    switch_to_scheduler("__syncthreads");
}

// Waits until every lane of the current warp has reached the same collective `op`.
inline void warp_barrier(const char* op) {
    Block& b = state();
    const int w = b.current / kWarp;
    Warp& warp = b.warps[w];
    if (warp.arrived > 0 && std::strcmp(warp.op, op) != 0) {
        fail("warp %d diverged: this lane is in %s while others wait in %s", w, op, warp.op);
    }
    warp.op = op;
    if (++warp.arrived == warp_size(w)) {
        warp.arrived = 0;
        for (int t = w * kWarp; t < w * kWarp + warp_size(w); ++t) {
            b.fibers[t].waiting = nullptr;
        }
        if (b.mode == Mode::WarpMajor) {
            arrange_lanes(w);
        }
        released();
        return;
    }
    switch_to_scheduler(op);
}

// Where `thread` publishes its value for the collective the current thread is in. Each thread
// has two slots and alternates between them, collective by collective, so that one barrier
// per collective suffices: a lane cannot reuse a slot before every lane of its warp has
// reached the next collective, that is, has finished reading this one.
inline unsigned char* slot(int thread) {
    Block& b = state();
    const size_t bank = b.fibers[b.current].bank;
    return &b.slots[((size_t)thread * 2 + bank) * kSlotBytes];
}

// Ends the current thread's part in a collective.
inline void next_bank() {
    Block& b = state();
    b.fibers[b.current].bank ^= 1u;
}

inline int lane() { return state().current % kWarp; }
inline int warp_base() { return state().current - lane(); }

inline void check_mask(const char* op, unsigned mask) {
    const int w = state().current / kWarp;
    if (mask != warp_mask(w)) {
        fail("%s with mask %08x: only whole-warp collectives are emulated (warp mask %08x)", op,
             mask, warp_mask(w));
    }
}

// Every lane publishes `v`, then reads the value of lane `src` (its own when src is out of
// the warp).
template <class T>
T exchange(const char* op, unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= kSlotBytes);
    check_mask(op, mask);
    const int me = state().current;
    std::memcpy(slot(me), &v, sizeof(T));
    warp_barrier(op);
    T r = v;
    if (src >= 0 && src < warp_size(me / kWarp)) {
        std::memcpy(&r, slot(warp_base() + src), sizeof(T));
    }
    next_bank();
    return r;
}

[[noreturn]] inline void trampoline() {
    Block& b = state();
    (*b.body)();
    Fiber& f = b.fibers[b.current];
    f.done = true;
    ++b.finished;
    switch_context(f.ctx, b.scheduler);
    fail("a finished thread was resumed, or swapcontext failed");
}

// Every block starts with its shared memory all ones (NaN as float, double and bf16), so
// reading shared memory that no thread of the block wrote shows in the results.
inline void poison_shared() {
    unsigned char* const begin = __start_emu_shared;
    unsigned char* const end = __stop_emu_shared;
    if (begin != nullptr && end > begin) {
        std::memset(begin, 0xff, (size_t)(end - begin));
    }
}

inline void start_fibers(int n) {
    Block& b = state();
    b.fibers.assign(n, Fiber{});
    b.warps.assign((n + kWarp - 1) / kWarp, Warp{});
    b.slots.assign((size_t)n * 2 * kSlotBytes, 0);
    b.lanes.assign(b.warps.size() * kWarp, 0);
    b.lane_pos.assign(b.warps.size(), 0);
    b.urgent.clear();
    while ((int)b.stacks.size() < n) {
        b.stacks.emplace_back(new char[kStackBytes]);
    }
    b.block_arrived = 0;
    b.finished = 0;
    for (int t = 0; t < n; ++t) {
        Fiber& f = b.fibers[t];
        f.idx = uint3{t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
        f.done = false;
        f.bank = 0;
        f.waiting = nullptr;
        if (!make_context(f.ctx, b.stacks[t].get(), kStackBytes, trampoline)) {
            fail("getcontext failed");
        }
    }
}

// Per block, the bookkeeping of mbarriers, TMA and wgmma (mbarrier.h, tma.h, wgmma.h);
// hopper_unstick lands TMA copies still in flight when no thread can run, and says whether
// there were any.
inline void hopper_begin_block(int threads);
inline void hopper_end_block();
inline bool hopper_unstick();
inline std::string hopper_deadlock_report();

[[noreturn]] inline void deadlock() {
    Block& b = state();
    const int n = (int)b.fibers.size();
    const std::string hopper = hopper_deadlock_report();
    if (!hopper.empty()) fail("%s", hopper.c_str());
    for (int t = 0; t < n; ++t) {
        if (!b.fibers[t].done) {
            threadIdx = b.fibers[t].idx;
            fail("deadlock: waits in %s, but %d of %d threads finished and the rest wait "
                 "elsewhere or in a different group",
                 b.fibers[t].waiting, b.finished, n);
        }
    }
    fail("deadlock with every thread finished");
}

// cp.async bookkeeping per block (async_copy.h): reset, and every copy waited for.
inline void async_copies_begin_block(int threads);
inline void async_copies_end_block();

inline void run_block(const std::function<void()>& body, uint64_t block_linear) {
    Block& b = state();
    const int n = (int)(blockDim.x * blockDim.y * blockDim.z);
    const unsigned seed = schedule_seed();
    b.policy = policy_of(seed);
    b.rng = (uint64_t)seed << 32 ^ block_linear;
    b.body = &body;
    start_fibers(n);
    b.mode = Mode::WarpMajor;  // not Interleaved: the first epoch arranges its order
    new_epoch();
    poison_shared();
    async_copies_begin_block(n);
    hopper_begin_block(n);
    for (;;) {
        const int t = pick();
        if (t < 0) {
            if (b.finished == n) {
                async_copies_end_block();
                hopper_end_block();
                return;
            }
            if (hopper_unstick()) continue;
            deadlock();
        }
        b.current = t;
        threadIdx = b.fibers[t].idx;
        if (!switch_context(b.scheduler, b.fibers[t].ctx)) {
            fail("swapcontext failed");
        }
        clobber();
    }
}

}  // namespace emu

inline void __syncthreads() { emu::block_barrier(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::check_mask("__syncwarp", mask);
    emu::warp_barrier("__syncwarp");
}

template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    if (width != emu::kWarp) emu::fail("__shfl_sync: width %d is not emulated", width);
    return emu::exchange("__shfl_sync", mask, v, src_lane % emu::kWarp);
}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    if (width != emu::kWarp) emu::fail("__shfl_xor_sync: width %d is not emulated", width);
    return emu::exchange("__shfl_xor_sync", mask, v, emu::lane() ^ lane_mask);
}

template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    if (width != emu::kWarp) emu::fail("__shfl_down_sync: width %d is not emulated", width);
    return emu::exchange("__shfl_down_sync", mask, v, emu::lane() + (int)delta);
}

template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    if (width != emu::kWarp) emu::fail("__shfl_up_sync: width %d is not emulated", width);
    return emu::exchange("__shfl_up_sync", mask, v, emu::lane() - (int)delta);
}

#include "async_copy.h"
#include "tensor_core.h"
#include "mbarrier.h"
#include "tma.h"
#include "wgmma.h"

// Runs kernel<<<grid, block>>>(args...) to completion, one block at a time.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
    const std::function<void()> body = [&] { kernel(args...); };
    gridDim = grid;
    blockDim = block;
    for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = uint3{x, y, z};
                emu::run_block(body, ((uint64_t)z * grid.y + y) * grid.x + x);
            }
        }
    }
}

#endif
