// wgmma (the warpgroup tensor-core instructions of sm_90a), emulated on the threads of
// kernels/emu/cuda_emu.h for gemm_bf16_wgmma (kernels/gemm_wgmma.cu):
//
//   wgmma.fence.sync.aligned;                         -> emu_wgmma_fence()
//   wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 d, a-desc, b-desc, scale-d, 1, 1,
//       trans-a, trans-b;                             -> emu_wgmma_bf16(d, N, da, db, ...)
//   wgmma.commit_group.sync.aligned;                  -> emu_wgmma_commit()
//   wgmma.wait_group.sync.aligned N;                  -> emu_wgmma_wait(N)
//
// Each is a collective of a warpgroup: 4 consecutive warps, the first a multiple of 4, all
// 128 threads arriving at the same instruction with the same operands (.sync.aligned).
//
// Operands, from shared memory through 64-bit matrix descriptors (PTX ISA, "Matrix
// Descriptor Format"; CUTLASS, cute/arch/mma_sm90_desc.hpp, GmmaDescriptor): start address
// / 16 in bits [0, 14), leading-dimension byte offset (LBO) / 16 in [16, 30), stride-
// dimension byte offset (SBO) / 16 in [32, 46), base offset in [49, 52), layout in [62, 64):
// 0 no swizzle (interleave), 1 128-byte, 2 64-byte, 3 32-byte swizzle. Where the element
// (mn, k) of an operand (A: m x k, 64 x 16; B: n x k, N x 16) lies, from the canonical
// layouts of CUTLASS's make_gmma_desc (cute/atom/mma_traits_sm90_gmma.hpp), in bytes, for
// 2-byte elements, W = 16-byte chunks per swizzle span (8, 4, 2; 1 with no swizzle):
//   K-major (trans 0), swizzled:  (mn % 8) * 16W + (mn / 8) * SBO + (k / 8) * 16 + (k % 8) * 2
//   K-major, no swizzle:          (mn % 8) * 16  + (mn / 8) * SBO + (k / 8) * LBO + (k % 8) * 2
//   MN-major (trans 1), swizzled: (mn % 8) * 2 + (mn / 8 % W) * 16 + (mn / 8W) * LBO
//                                 + (k % 8) * 16W + (k / 8) * SBO
//   MN-major, no swizzle:         (mn % 8) * 2 + (mn / 8) * SBO + (k % 8) * 16 + (k / 8) * LBO
// added to the start address, then swizzled by shared address as TMA does (tma.h:
// swizzle_address). The base offset must be 0: the start address is taken as it is, which
// is what advancing a descriptor along k inside a swizzle atom (as CUTLASS does) relies on.
//
// Result, from the accumulator layout of the PTX ISA ("Matrix fragments for wgmma .m64nNk16",
// register fragment D) and CUTLASS's CLayout_64xN ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)):
// thread t of the warpgroup (warp w = t / 32, lane l: g = l / 4, q = l % 4) holds in d[i]
// row 16w + g + 8 * (i / 2 % 2), column 8 * (i / 4) + 2q + i % 2. d = A * B + (scale-d ? d : 0),
// products of bf16 values exact in f32, summed in k order onto d.
//
// Asynchrony. The accumulators are not valid until a wait_group retires the group holding
// the instruction, and the shared memory it reads must stay unchanged until then. The
// emulation computes the product at issue under schedules 1 and 3, and only at the wait that
// retires it under 0 and 2 (so schedule 2, which also lands TMA copies at issue and runs the
// producer warp first, refills a stage released too early before its wgmma reads it) (under the random ones each instruction draws one of the two;
// one computed at issue first completes the warpgroup's earlier ones, which the hardware
// runs in order, so the sums keep their order either way): a
// kernel that reads or writes the accumulators, or overwrites the operands, before that wait
// gives different results under different schedules. wgmma.fence is required before the
// first mma_async of a warpgroup and again after each wait_group (stricter than the PTX ISA,
// which asks for it only where other instructions touched the registers in between; it keeps
// the rule checkable). What it checks besides: whole warpgroups, aligned operands, no
// descriptor address outside shared memory, N a multiple of 8 in [8, 256], wait counts in
// [0, 7], and no group left unretired at the end of the block.
#ifndef SETPOINT_EMU_WGMMA_H
#define SETPOINT_EMU_WGMMA_H

#include <array>

namespace emu {

constexpr int kWarpgroup = 128;

struct WgmmaOperands {
    float* d;
    int n;
    uint64_t da, db;
    int scale_d, trans_a, trans_b;
};

struct Wgmma {
    std::array<float*, kWarpgroup> d;
    WgmmaOperands ops;  // those of thread 0 (every thread's must equal them)
    bool done;
};

struct Warpgroup {
    int arrived = 0;
    const char* op = nullptr;
    bool fenced = false;
    std::array<WgmmaOperands, kWarpgroup> args{};
    std::vector<Wgmma> open;
    std::vector<std::vector<Wgmma>> groups;
};

struct WgmmaState {
    std::vector<Warpgroup> groups;
    uint64_t issued = 0;
};

inline WgmmaState& wgmma_state() {
    static WgmmaState s;
    return s;
}

inline void wgmma_begin_block(int threads) {
    wgmma_state().groups.assign((size_t)(threads / kWarpgroup), Warpgroup{});
    wgmma_state().issued = 0;
}

inline Warpgroup& my_warpgroup(const char* op) {
    const int me = state().current;
    const size_t wg = (size_t)(me / kWarpgroup);
    if (wg >= wgmma_state().groups.size()) {
        fail("%s: thread %d is not in a whole warpgroup of %d threads", op, me, kWarpgroup);
    }
    return wgmma_state().groups[wg];
}

// Waits until all 128 threads of the warpgroup arrive at `op`; the last to arrive runs
// `last` before any of them goes on.
template <class F>
void warpgroup_collective(const char* op, F&& last) {
    Block& b = state();
    Warpgroup& g = my_warpgroup(op);
    const int first = b.current / kWarpgroup * kWarpgroup;
    if (g.arrived > 0 && std::strcmp(g.op, op) != 0) {
        fail("warpgroup %d diverged: this thread is in %s while others wait in %s",
             first / kWarpgroup, op, g.op);
    }
    g.op = op;
    if (++g.arrived < kWarpgroup) {
        switch_to_scheduler(op);
        return;
    }
    g.arrived = 0;
    last(g);
    for (int t = first; t < first + kWarpgroup; ++t) b.fibers[t].waiting = nullptr;
    released();
}

// Bytes from the descriptor's start to element (mn, k) of its operand, before the swizzle.
inline uint32_t descriptor_offset(uint64_t desc, bool mn_major, int mn, int k) {
    const uint32_t lbo = (uint32_t)((desc >> 16) & 0x3fff) << 4;
    const uint32_t sbo = (uint32_t)((desc >> 32) & 0x3fff) << 4;
    const uint32_t layout = (uint32_t)(desc >> 62);
    const uint32_t w = layout == 0 ? 1 : layout == 1 ? 8 : layout == 2 ? 4 : 2;
    const uint32_t m = (uint32_t)mn, kk = (uint32_t)k;
    if (!mn_major) {
        const uint32_t row = layout == 0 ? 16 : 16 * w;
        const uint32_t kstep = layout == 0 ? lbo : 16;
        return m % 8 * row + m / 8 * sbo + kk / 8 * kstep + kk % 8 * 2;
    }
    if (layout == 0) return m % 8 * 2 + m / 8 * sbo + kk % 8 * 16 + kk / 8 * lbo;
    return m % 8 * 2 + m / 8 % w * 16 + m / (8 * w) * lbo + kk % 8 * 16 * w + kk / 8 * sbo;
}

// Element (mn, k) of the operand a descriptor describes, as f32.
inline float descriptor_load(uint64_t desc, bool mn_major, int mn, int k) {
    const uint32_t start = (uint32_t)(desc & 0x3fff) << 4;
    const uint32_t layout = (uint32_t)(desc >> 62);
    const uint32_t span = layout == 0 ? 16 : layout == 1 ? 128 : layout == 2 ? 64 : 32;
    const uint32_t at = swizzle_address(start + descriptor_offset(desc, mn_major, mn, k), span);
    if (!in_shared(shared_at(at)) || !in_shared(shared_at(at + 1))) {
        fail("wgmma.mma_async: operand element (%d, %d) at shared offset %#x is outside shared "
             "memory (descriptor %016llx)",
             mn, k, at, (unsigned long long)desc);
    }
    uint16_t h;
    std::memcpy(&h, shared_at(at), 2);
    return std::bit_cast<float>((uint32_t)h << 16);
}

// d = A * B + (scale_d ? d : 0) for every thread of the warpgroup.
inline void wgmma_compute(Wgmma& w) {
    if (w.done) return;
    w.done = true;
    const WgmmaOperands& o = w.ops;
    std::vector<float> a(64 * 16), bm((size_t)o.n * 16);
    for (int r = 0; r < 64; ++r) {
        for (int k = 0; k < 16; ++k) a[r * 16 + k] = descriptor_load(o.da, o.trans_a, r, k);
    }
    for (int c = 0; c < o.n; ++c) {
        for (int k = 0; k < 16; ++k) bm[c * 16 + k] = descriptor_load(o.db, o.trans_b, c, k);
    }
    for (int t = 0; t < kWarpgroup; ++t) {
        const int warp = t / 32, g = t % 32 / 4, q = t % 4;
        for (int i = 0; i < o.n / 2; ++i) {
            const int row = 16 * warp + g + 8 * (i / 2 % 2);
            const int col = 8 * (i / 4) + 2 * q + i % 2;
            float s = o.scale_d ? w.d[t][i] : 0.0f;
            for (int k = 0; k < 16; ++k) s += a[row * 16 + k] * bm[col * 16 + k];
            w.d[t][i] = s;
        }
    }
}

// Whether the instruction now issued computes at once (else at the wait that retires it).
inline bool wgmma_at_issue() {
    const unsigned seed = schedule_seed();
    if (seed < 4) return seed == 1 || seed == 3;
    uint64_t z = ((uint64_t)seed << 40 ^ (uint64_t)blockIdx.x << 20 ^ 0xa5a5) +
                 ++wgmma_state().issued * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return ((z ^ (z >> 31)) & 1) != 0;
}

inline void check_descriptor(uint64_t desc, const char* which) {
    if ((desc >> 49 & 7) != 0) {
        fail("wgmma.mma_async: %s descriptor %016llx has a base offset; only 0 is modelled",
             which, (unsigned long long)desc);
    }
    if ((desc & 0x3fff) == 0 && ((desc >> 16) | (desc >> 32)) == 0) {
        fail("wgmma.mma_async: %s descriptor is empty", which);
    }
}

inline void wgmma_end_block() {
    for (size_t i = 0; i < wgmma_state().groups.size(); ++i) {
        const Warpgroup& g = wgmma_state().groups[i];
        size_t pending = g.open.size();
        for (const std::vector<Wgmma>& v : g.groups) pending += v.size();
        if (pending != 0) {
            threadIdx = state().fibers[i * kWarpgroup].idx;
            fail("wgmma never waited: warpgroup %zu ended with %zu wgmma.mma_async not retired "
                 "by a wgmma.wait_group",
                 i, pending);
        }
    }
}

}  // namespace emu

inline void emu_wgmma_fence() {
    emu::warpgroup_collective("wgmma.fence", [](emu::Warpgroup& g) { g.fenced = true; });
}

inline void emu_wgmma_bf16(float* d, int n, uint64_t da, uint64_t db, int scale_d, int trans_a,
                           int trans_b) {
    if (n < 8 || n > 256 || n % 8 != 0) emu::fail("wgmma.mma_async: N = %d is not an m64nNk16 shape", n);
    emu::Warpgroup& mine = emu::my_warpgroup("wgmma.mma_async");
    mine.args[(size_t)(emu::state().current % emu::kWarpgroup)] =
        emu::WgmmaOperands{d, n, da, db, scale_d, trans_a, trans_b};
    emu::warpgroup_collective("wgmma.mma_async", [](emu::Warpgroup& g) {
        if (!g.fenced) {
            emu::fail("wgmma.mma_async without a wgmma.fence before it (since the block start "
                      "or the warpgroup's last wgmma.wait_group)");
        }
        emu::Wgmma w{};
        w.ops = g.args[0];
        for (int t = 0; t < emu::kWarpgroup; ++t) {
            const emu::WgmmaOperands& o = g.args[(size_t)t];
            if (o.n != w.ops.n || o.da != w.ops.da || o.db != w.ops.db ||
                o.scale_d != w.ops.scale_d || o.trans_a != w.ops.trans_a ||
                o.trans_b != w.ops.trans_b) {
                emu::fail("wgmma.mma_async: thread %d of the warpgroup gave other operands than "
                          "thread 0 (descriptors %016llx, %016llx against %016llx, %016llx)",
                          t, (unsigned long long)o.da, (unsigned long long)o.db,
                          (unsigned long long)w.ops.da, (unsigned long long)w.ops.db);
            }
            w.d[(size_t)t] = o.d;
        }
        emu::check_descriptor(w.ops.da, "A");
        emu::check_descriptor(w.ops.db, "B");
        if (emu::wgmma_at_issue()) {
            // In order: the earlier instructions of the warpgroup complete first.
            for (std::vector<emu::Wgmma>& v : g.groups) {
                for (emu::Wgmma& x : v) emu::wgmma_compute(x);
            }
            for (emu::Wgmma& x : g.open) emu::wgmma_compute(x);
            emu::wgmma_compute(w);
        }
        g.open.push_back(w);
    });
}

inline void emu_wgmma_commit() {
    emu::warpgroup_collective("wgmma.commit_group", [](emu::Warpgroup& g) {
        g.groups.push_back(std::move(g.open));
        g.open.clear();
    });
}

// Retires all but the n newest committed groups, oldest first.
inline void emu_wgmma_wait(int n) {
    if (n < 0 || n > 7) emu::fail("wgmma.wait_group %d: the count must be in [0, 7]", n);
    emu::warpgroup_collective("wgmma.wait_group", [n](emu::Warpgroup& g) {
        const size_t done = g.groups.size() > (size_t)n ? g.groups.size() - (size_t)n : 0;
        for (size_t i = 0; i < done; ++i) {
            for (emu::Wgmma& w : g.groups[i]) emu::wgmma_compute(w);
        }
        g.groups.erase(g.groups.begin(), g.groups.begin() + (long)done);
        g.fenced = false;
    });
}

// The per-block hooks of run_block (cuda_emu.h) for mbarrier.h, tma.h and this file.
inline void emu::hopper_begin_block(int threads) {
    mbarriers_begin_block();
    tma_begin_block();
    wgmma_begin_block(threads);
}

inline void emu::hopper_end_block() {
    tma_end_block();
    wgmma_end_block();
}

inline bool emu::hopper_unstick() { return tma_land_all(); }

inline std::string emu::hopper_deadlock_report() { return mbarrier_deadlock_report(); }

#endif
