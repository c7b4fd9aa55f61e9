// gemm_bf16_128: the product of gemm_bf16 (kernels/gemm.cu; same arguments, same alpha,
// beta and k-range semantics, see kernels/ABI.md) in 128 x 128 output tiles, for products
// large enough to give every SM at least one such tile. A 128 x 128 tile reads each
// 32-deep k-slice of A and B once for 4x the products of a 64 x 64 tile: half the global
// and shared-memory traffic per multiply-add of gemm_bf16.
//
// Output tiles are numbered row-major over C (tiles = ceil(m/128) * ceil(n/128)) and taken
// tile_begin + blockIdx.x, + gridDim.x, ... below tile_end: a tile's result does not depend
// on which CTA computes it, so any grid gives the same C bit for bit.
//
// 256 threads = 8 warps as 2 x 4, each warp computing 64 x 32 of the tile as 4 x 4
// mma.sync m16n8k16 products per 16 of k. The 4 x 2 arrangement (32 x 64 a warp) costs the
// same: 6 ldmatrix.x4 per 16 of k (4 for A and 2 for B here, 2 and 4 there) and 64 f32
// accumulators a thread. 2 x 4 keeps gemm_bf16's 32-column warp share, so both kernels run
// the same fragment code (tc_compute_slice in common.cuh) with more m16 blocks here.
//
// The pipeline is gemm_bf16's (see there): 3 stages of 32-deep k-slices filled by cp.async
// with zero fill (element by element for operands that do not allow 16-byte copies), one
// barrier per slice, over the XOR-swizzled, unpadded buffers of common.cuh. Three stages
// of 128 x 32 bf16 per operand are 3 x (8 + 8) KB = 48 KB, exactly the static
// shared-memory limit, so no dynamic shared memory (and no opt-in attribute) is needed;
// one CTA per SM then fits on sm_80 (164 KB) up to three on sm_90 (228 KB).
#include "common.cuh"

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

#define LG_TILE 128     // output tile edge (part of the ABI: tile numbering)
#define LG_THREADS 256  // 8 warps
#define LG_STAGES 3
#define LG_MI 4                      // m16 blocks per warp: 64 rows
#define LG_BUF (LG_TILE * TC_BK)  // elements of one slice buffer, either layout

struct alignas(128) LargeSmem {
    unsigned short a[LG_STAGES][LG_BUF];
    unsigned short b[LG_STAGES][LG_BUF];
};

// Writes the warp's 64 x 32 accumulators (at wm, wn within the tile at m0, n0) to C.
// Accumulator fragment: registers 0, 1 hold row lane/4, columns 2*(lane%4) + 0, 1 of the
// 16 x 8 block; registers 2, 3 the same columns of row lane/4 + 8.
__device__ __forceinline__ void lg_store(float* c, int m, int n, int m0, int n0, int wm, int wn,
                                         int lane, const float acc[LG_MI][4][4],
                                         const Epilogue& ep) {
    const int g = lane / 4, tq = lane % 4;
    UNROLL
    for (int i = 0; i < LG_MI; ++i) {
        UNROLL
        for (int j = 0; j < 4; ++j) {
            UNROLL
            for (int e = 0; e < 4; ++e) {
                const int row = m0 + wm + i * 16 + g + e / 2 * 8;
                const int col = n0 + wn + j * 8 + tq * 2 + e % 2;
                store_c(c, m, n, row, col, acc[i][j][e], ep);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(LG_THREADS)
    gemm_bf16_128(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b,
                  float* __restrict__ c, int m, int n, int k, int trans_a, int trans_b,
                  float alpha, float beta, int tile_begin, int tile_end, int k_begin,
                  int k_end, const float* __restrict__ bias, int relu,
                  unsigned short* __restrict__ c_bf16) {
    __shared__ LargeSmem sm;
    const Epilogue ep = make_epilogue(alpha, beta, bias, relu, c_bf16);
    const int tid = threadIdx.x;
    const int lane = tid % WARP_SIZE, warp = tid / WARP_SIZE;
    const int wm = warp / 4 * 64, wn = warp % 4 * 32;  // the warp's 64 x 32 within the tile
    const int width = 8;
    const KRange kr = make_k_range(k, k_begin, k_end, TC_BK);
    const Operand<unsigned short> A = make_operand(a, m, k, kr.lo, kr.hi, trans_a == 0, width);
    const Operand<unsigned short> B = make_operand(b, n, k, kr.lo, kr.hi, trans_b != 0, width);
    const int tiles_n = ceil_div(n, LG_TILE);
    const int end = imin(tile_end, ceil_div(m, LG_TILE) * tiles_n);
    const int slices = kr.slices;

    for (int t = tile_begin + blockIdx.x; t < end; t += gridDim.x) {
        const int m0 = t / tiles_n * LG_TILE, n0 = t % tiles_n * LG_TILE;
        float acc[LG_MI][4][4];
        UNROLL
        for (int i = 0; i < LG_MI; ++i) {
            UNROLL
            for (int j = 0; j < 4; ++j) {
                UNROLL
                for (int e = 0; e < 4; ++e) {
                    acc[i][j][e] = 0.0f;
                }
            }
        }
        UNROLL
        for (int st = 0; st < LG_STAGES - 1; ++st) {
            if (st < slices) {
                tc_fetch_slice<LG_TILE, LG_THREADS>(sm.a[st], sm.b[st], A, B, m0, n0, st, tid);
            }
            cp_async_commit();
        }
        for (int s = 0; s < slices; ++s) {
            cp_async_wait<LG_STAGES - 2>();
            __syncthreads();
            const int next = s + LG_STAGES - 1;
            if (next < slices) {
                const int st = next % LG_STAGES;
                tc_fetch_slice<LG_TILE, LG_THREADS>(sm.a[st], sm.b[st], A, B, m0, n0, next,
                                                    tid);
            }
            cp_async_commit();
            const int cur = s % LG_STAGES;
            tc_compute_slice<LG_TILE, LG_MI>(acc, sm.a[cur], sm.b[cur], A.k_major, B.k_major,
                                             wm, wn, lane);
        }
        // Only empty groups are left; and no warp may refill a buffer for the next tile
        // while another still computes the last slice from it.
        cp_async_wait<0>();
        __syncthreads();
        lg_store(c, m, n, m0, n0, wm, wn, lane, acc, ep);
    }
}

#endif
