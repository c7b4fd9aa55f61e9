// Test kernels for the emulated mbarriers, TMA and wgmma (tests/kernels_wgmma_emulated.rs),
// built into the harness only: they are not part of kernels/ABI.md and never reach NVRTC.
// They use gemm_wgmma.cu's own wrappers (mbar_*, tma_load_2d, wgmma_*).
#ifndef SETPOINT_EMU_HOPPER_PROBE_H
#define SETPOINT_EMU_HOPPER_PROBE_H

struct alignas(1024) HopperProbeSmem {
    unsigned char a[8192];
    unsigned char b[16384];
    unsigned long long bar[2];
};

// 64 threads, one mbarrier. mode 0: count 64; out[4t + 0] = whether the phase of parity 1
// counts as complete on the fresh barrier (it does), out[4t + 1] and [4t + 2] = the states
// two arrives return (one per phase), out[4t + 3] = 7 once both phases passed.
// mode 1: count 1, one arrive.expect_tx of 64 bytes that no copy completes, every thread
// waits (a deadlock); mode 2: count 65, 64 arrivals (a deadlock); mode 3: count 1, two
// arrivals in one phase; mode 4: a wait on a barrier never initialised.
extern "C" __global__ void emu_mbarrier_probe(unsigned* out, int mode) {
    __shared__ HopperProbeSmem sm;
    const int t = (int)threadIdx.x;
    if (t == 0 && mode != 4) {
        mbar_init(&sm.bar[0], mode == 0 ? 64u : mode == 2 ? 65u : 1u);
    }
    __syncthreads();
    if (mode == 0) {
        out[4 * t] = emu_mbarrier_try_wait_parity(&sm.bar[0], 1) ? 1u : 0u;
        out[4 * t + 1] = (unsigned)emu_mbarrier_arrive(&sm.bar[0]);
        mbar_wait(&sm.bar[0], 0);
        out[4 * t + 2] = (unsigned)emu_mbarrier_arrive(&sm.bar[0]);
        mbar_wait(&sm.bar[0], 1);
        out[4 * t + 3] = 7;
    } else if (mode == 1) {
        if (t == 0) mbar_arrive_expect_tx(&sm.bar[0], 64);
        mbar_wait(&sm.bar[0], 0);
    } else if (mode == 2) {
        mbar_arrive(&sm.bar[0]);
        mbar_wait(&sm.bar[0], 0);
    } else if (mode == 3) {
        if (t == 0) mbar_arrive_expect_tx(&sm.bar[0], 16);
        if (t == 1) mbar_arrive(&sm.bar[0]);
    } else {
        mbar_wait(&sm.bar[1], 0);
    }
}

// 32 threads: one TMA copy of `map`'s box at (c0, c1), `bytes` long, into a 1024-aligned
// shared buffer, then every thread copies the buffer as it lies (swizzled) to dst
// (bytes / 2 elements). mode 0 waits on the barrier first; mode 1 copies out, then waits.
extern "C" __global__ void emu_tma_probe(const unsigned short* src, unsigned short* dst, int c0,
                                         int c1, int bytes, int mode,
                                         const __grid_constant__ TensorMap map) {
    __shared__ HopperProbeSmem sm;
    (void)src;  // what the map was encoded over
    const int t = (int)threadIdx.x;
    if (t == 0) {
        mbar_init(&sm.bar[0], 1);
        mbar_arrive_expect_tx(&sm.bar[0], (unsigned)bytes);
        tma_load_2d(sm.b, &map, c0, c1, &sm.bar[0]);
    }
    __syncthreads();
    if (mode == 0) mbar_wait(&sm.bar[0], 0);
    const unsigned short* buf = reinterpret_cast<const unsigned short*>(sm.b);
    for (int i = t; i < bytes / 2; i += 32) dst[i] = buf[i];
    if (mode == 1) mbar_wait(&sm.bar[0], 0);
}

// A descriptor of any layout (0 none, 1 128B, 2 64B, 3 32B).
inline unsigned long long probe_desc(unsigned at, unsigned lbo, unsigned sbo, unsigned layout) {
    return (wg_desc(at, lbo, sbo) & ~(3ull << 62)) | (unsigned long long)layout << 62;
}

// Loads an operand of `rows` (m or n) x 64 (k) by TMA boxes `e` elements wide (span / 2, or
// 8 with no swizzle): k-major, boxes of e (k) x rows side by side along k; outer-major, boxes
// of e (outer) x 64 (k) side by side along the outer index.
inline void probe_load(unsigned char* dst, const TensorMap* map, bool k_major, int rows, int e,
                       unsigned long long* bar) {
    const int boxes = k_major ? 64 / e : rows / e;
    const int box_bytes = k_major ? rows * e * 2 : 64 * e * 2;
    for (int j = 0; j < boxes; ++j) tma_load_2d(dst + j * box_bytes, map, j * e, 0, bar);
}

// The descriptor of k-step kk of an operand probe_load placed at shared address `at`, from
// the canonical layouts (kernels/emu/wgmma.h): rows of 2e bytes.
inline unsigned long long probe_operand_desc(unsigned at, bool k_major, int rows, int e, int kk,
                                             unsigned layout) {
    const unsigned row = 2u * (unsigned)e;
    if (k_major) {
        const int k0 = 16 * kk;
        const unsigned start = at + (unsigned)(k0 / e * rows) * row + (unsigned)(k0 % e) * 2u;
        return layout == 0 ? probe_desc(start, (unsigned)rows * 16u, 128u, 0)
                           : probe_desc(start, 16u, 8u * row, layout);
    }
    const unsigned start = at + 16u * (unsigned)kk * row;
    return layout == 0 ? probe_desc(start, 128u, 1024u, 0)
                       : probe_desc(start, 64u * row, 8u * row, layout);
}

template <int TA, int TB>
void probe_mma(float acc[64], unsigned a_at, unsigned b_at, int e, unsigned layout) {
    for (int kk = 0; kk < 4; ++kk) {
        wgmma_128<TA, TB>(acc, probe_operand_desc(a_at, TA == 0, 64, e, kk, layout),
                          probe_operand_desc(b_at, TB == 0, 128, e, kk, layout));
    }
}

// 128 threads (one warpgroup): D (64 x 128) = A (64 x 64) * B (64 x 128) through TMA with
// swizzle span `span` bytes (0: none) and four wgmma.m64n128k16, written to d row-major.
// trans_a / trans_b as the GEMMs' (A stored k x m, B stored n x k when set). mode 1 writes D
// out before the wgmma.wait_group that retires the products.
extern "C" __global__ void emu_wgmma_probe(const unsigned short* a, const unsigned short* b,
                                           float* d, int span, int trans_a, int trans_b,
                                           int mode, const __grid_constant__ TensorMap map_a,
                                           const __grid_constant__ TensorMap map_b) {
    __shared__ HopperProbeSmem sm;
    (void)a;
    (void)b;
    const int t = (int)threadIdx.x;
    const int e = span == 0 ? 8 : span / 2;
    const unsigned layout = span == 128 ? 1u : span == 64 ? 2u : span == 32 ? 3u : 0u;
    if (t == 0) {
        mbar_init(&sm.bar[0], 1);
        mbar_arrive_expect_tx(&sm.bar[0], 8192 + 16384);
        probe_load(sm.a, &map_a, trans_a == 0, 64, e, &sm.bar[0]);
        probe_load(sm.b, &map_b, trans_b != 0, 128, e, &sm.bar[0]);
    }
    __syncthreads();
    mbar_wait(&sm.bar[0], 0);
    float acc[64];
    for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
    const unsigned a_at = smem_u32(sm.a), b_at = smem_u32(sm.b);
    wgmma_fence();
    if (trans_a == 0 && trans_b != 0) probe_mma<0, 0>(acc, a_at, b_at, e, layout);
    if (trans_a == 0 && trans_b == 0) probe_mma<0, 1>(acc, a_at, b_at, e, layout);
    if (trans_a != 0 && trans_b != 0) probe_mma<1, 0>(acc, a_at, b_at, e, layout);
    if (trans_a != 0 && trans_b == 0) probe_mma<1, 1>(acc, a_at, b_at, e, layout);
    wgmma_commit();
    if (mode == 0) wgmma_wait<0>();
    const int lane = t % 32, row = t / 32 * 16 + lane / 4, col = lane % 4 * 2;
    for (int i = 0; i < 64; ++i) {
        d[(row + i / 2 % 2 * 8) * 128 + col + i / 4 * 8 + i % 2] = acc[i];
    }
    if (mode == 1) wgmma_wait<0>();
}

#endif
