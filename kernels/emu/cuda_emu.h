// Host emulation of the parts of the CUDA execution model the kernels in kernels/ use, so
// that they compile as ordinary C++20 and run on the CPU in tests (kernels/emu/harness.cpp,
// tests/kernels_emulated.rs).
//
// How it runs a launch. Blocks run one after another. The threads of a block run as fibers
// (ucontext) on the calling OS thread, switched only at barriers: a fiber runs until it
// reaches __syncthreads() or a warp collective (shuffle, __syncwarp, ldmatrix, mma.sync),
// where it waits until every thread that must take part has arrived. Because one block
// runs at a time on one OS thread, `__shared__` is simply `static` storage, and the
// built-in index variables are thread_local variables set before each switch into a fiber.
// Fibers rather than one OS thread per CUDA thread: a switch costs far less than waking
// 256 threads at every barrier, runs are deterministic, and a barrier that not every
// thread reaches is detected (no fiber can run but some have not finished) and reported
// instead of hanging.
//
// What it checks: barrier deadlocks, divergent warp collectives (lanes of one warp waiting
// at different kinds of collective), shuffle masks other than the whole warp, unaligned
// ldmatrix rows. What it does not: races between threads of a block between barriers
// (threads run in a fixed order, so a missing barrier may go unnoticed), reads of shared
// memory never written in this launch (it starts zeroed and keeps values across blocks),
// memory outside the kernel's buffers (the harness guards its buffers instead).
//
// Build with -fno-strict-aliasing: the kernels read shared and global memory through the
// vector structs of common.cuh, as CUDA code does.
#ifndef SETPOINT_CUDA_EMU_H
#define SETPOINT_CUDA_EMU_H

#include <math.h>
#include <ucontext.h>

#include <bit>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

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
constexpr size_t kSlotBytes = 32;  // per-thread exchange area of warp collectives

struct Fiber {
    ucontext_t ctx;
    uint3 idx;
    bool done;
    const char* waiting;  // the barrier this fiber waits at; null when it can run
};

struct Warp {
    int arrived = 0;
    const char* op = nullptr;  // the collective its waiting lanes are in
};

struct Block {
    ucontext_t scheduler;
    std::vector<Fiber> fibers;
    std::vector<std::unique_ptr<char[]>> stacks;  // kept across blocks and launches
    std::vector<Warp> warps;
    std::vector<unsigned char> slots;
    const std::function<void()>* body = nullptr;
    int current = 0;
    int block_arrived = 0;
};

inline Block& state() {
    static Block b;
    return b;
}

// Compiler barrier after a switch: other fibers may have written any memory.
inline void clobber() { asm volatile("" ::: "memory"); }

inline void switch_to_scheduler(const char* waiting) {
    Block& b = state();
    Fiber& f = b.fibers[b.current];
    f.waiting = waiting;
    if (swapcontext(&f.ctx, &b.scheduler) != 0) {
        fail("swapcontext failed");
    }
    clobber();
}

inline int warp_size(int warp) {
    int n = (int)state().fibers.size() - warp * kWarp;
    return n < kWarp ? n : kWarp;
}

inline unsigned warp_mask(int warp) {
    int n = warp_size(warp);
    return n == kWarp ? 0xffffffffu : (1u << n) - 1u;
}

inline void block_barrier() {
    Block& b = state();
    if (++b.block_arrived == (int)b.fibers.size()) {
        b.block_arrived = 0;
        for (Fiber& f : b.fibers) {
            f.waiting = nullptr;
        }
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
        return;
    }
    switch_to_scheduler(op);
}

inline unsigned char* slot(int thread) { return &state().slots[(size_t)thread * kSlotBytes]; }
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
    warp_barrier(op);
    return r;
}

inline void trampoline() {
    Block& b = state();
    (*b.body)();
    b.fibers[b.current].done = true;
    // Returning resumes uc_link, the scheduler.
}

inline void run_block(const std::function<void()>& body) {
    Block& b = state();
    const int n = (int)(blockDim.x * blockDim.y * blockDim.z);
    b.fibers.assign(n, Fiber{});
    b.warps.assign((n + kWarp - 1) / kWarp, Warp{});
    b.slots.assign((size_t)n * kSlotBytes, 0);
    while ((int)b.stacks.size() < n) {
        b.stacks.emplace_back(new char[kStackBytes]);
    }
    b.body = &body;
    b.block_arrived = 0;
    for (int t = 0; t < n; ++t) {
        Fiber& f = b.fibers[t];
        f.idx = uint3{t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
        f.done = false;
        f.waiting = nullptr;
        if (getcontext(&f.ctx) != 0) {
            fail("getcontext failed");
        }
        f.ctx.uc_stack.ss_sp = b.stacks[t].get();
        f.ctx.uc_stack.ss_size = kStackBytes;
        f.ctx.uc_link = &b.scheduler;
        makecontext(&f.ctx, trampoline, 0);
    }
    for (;;) {
        bool alive = false, ran = false;
        for (int t = 0; t < n; ++t) {
            Fiber& f = b.fibers[t];
            if (f.done) {
                continue;
            }
            alive = true;
            if (f.waiting != nullptr) {
                continue;
            }
            b.current = t;
            threadIdx = f.idx;
            if (swapcontext(&b.scheduler, &f.ctx) != 0) {
                fail("swapcontext failed");
            }
            clobber();
            ran = true;
        }
        if (!alive) {
            return;
        }
        if (!ran) {
            int done = 0;
            for (const Fiber& f : b.fibers) {
                done += f.done;
            }
            for (int t = 0; t < n; ++t) {
                if (!b.fibers[t].done) {
                    threadIdx = b.fibers[t].idx;
                    fail("deadlock: waits in %s, but %d of %d threads finished and the rest wait "
                         "elsewhere or in a different group",
                         b.fibers[t].waiting, done, n);
                }
            }
        }
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

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8j..8j+7 give the addresses of the eight
// 16-byte rows of matrix j; each lane receives, in r[j], row lane/4 of matrix j, elements
// 2*(lane%4) (low half) and 2*(lane%4)+1 (high half).
inline void emu_ldmatrix_x4(unsigned r[4], const unsigned short* p) {
    const int me = emu::state().current;
    if (emu::warp_size(me / emu::kWarp) != emu::kWarp) emu::fail("ldmatrix in a partial warp");
    if ((uintptr_t)p % 16 != 0) emu::fail("ldmatrix: row address %p is not 16-byte aligned", p);
    std::memcpy(emu::slot(me), &p, sizeof p);
    emu::warp_barrier("ldmatrix");
    const int lane = emu::lane();
    for (int j = 0; j < 4; ++j) {
        const unsigned short* row;
        std::memcpy(&row, emu::slot(emu::warp_base() + j * 8 + lane / 4), sizeof row);
        r[j] = (unsigned)row[lane % 4 * 2] | (unsigned)row[lane % 4 * 2 + 1] << 16;
    }
    emu::warp_barrier("ldmatrix");
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, d, from the fragment layouts
// of the PTX ISA (groupID g = lane/4, t = lane%4):
//   A (16 x 16): register i holds row g + 8*(i%2), columns 2t + 8*(i/2) (low) and +1 (high);
//   B (16 x 8):  register i holds rows 2t + 8*i (low) and +1 (high), column g;
//   D (16 x 8):  element e is row g + 8*(e/2), column 2t + e%2.
// Products of bf16 values are exact in f32; they are summed in k order onto d.
inline void emu_mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2]) {
    const int me = emu::state().current;
    if (emu::warp_size(me / emu::kWarp) != emu::kWarp) emu::fail("mma.sync in a partial warp");
    unsigned regs[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    std::memcpy(emu::slot(me), regs, sizeof regs);
    emu::warp_barrier("mma.sync");
    const int base = emu::warp_base();
    auto half = [&](int lane, int reg, int high) {
        unsigned w;
        std::memcpy(&w, emu::slot(base + lane) + reg * sizeof(unsigned), sizeof w);
        return std::bit_cast<float>((high ? w >> 16 : w & 0xffffu) << 16);
    };
    auto A = [&](int row, int col) {
        return half(row % 8 * 4 + col % 8 / 2, row / 8 + col / 8 * 2, col % 2);
    };
    auto B = [&](int row, int col) { return half(col * 4 + row % 8 / 2, 4 + row / 8, row % 2); };
    const int g = emu::lane() / 4, t = emu::lane() % 4;
    float out[4];
    for (int e = 0; e < 4; ++e) {
        const int row = g + e / 2 * 8, col = 2 * t + e % 2;
        float s = d[e];
        for (int kk = 0; kk < 16; ++kk) {
            s += A(row, kk) * B(kk, col);
        }
        out[e] = s;
    }
    emu::warp_barrier("mma.sync");
    std::memcpy(d, out, sizeof out);
}

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
                emu::run_block(body);
            }
        }
    }
}

#endif
