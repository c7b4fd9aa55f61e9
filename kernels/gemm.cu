// C = alpha * op(A) * op(B) + beta * C, as `Gemm` in src/device/mod.rs: row-major storage,
// A is m x k (k x m when trans_a), B is k x n (n x k when trans_b), C is m x n; when
// beta == 0 the old C is not read. The sum runs over p in [k_begin, min(k_end, k)) only, so
// the host can split a long k into launches (split-K: beta for the first, 1 for the rest);
// k still gives the storage.
//
// Every kernel here computes 64 x 64 output tiles, numbered row-major over C, and takes
// tiles tile_begin + blockIdx.x, + gridDim.x, ... below tile_end: a tile's result does not
// depend on which CTA computes it, so any grid gives the same C bit for bit.
//
//   gemm_f32        256 threads, SIMT, f32 in, f32 accumulate
//   gemm_bf16_simt  256 threads, SIMT, bf16 in (converted to f32 on the way to shared memory)
//   gemm_bf16       128 threads, tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate)
//
// All three stage the operands through shared memory in k-slices with one barrier per
// slice. The SIMT kernels double-buffer through registers: the global loads of slice s+1
// are issued before slice s is multiplied and stored to the other buffer after. gemm_bf16
// runs a 3-stage cp.async pipeline (global to shared copies in the background, two slices
// in flight while one is multiplied) over XOR-swizzled, unpadded buffers; see the
// tensor-core section below.
#include "common.cuh"

#define TILE 64  // output tile edge (part of the ABI: tile numbering)

// ---------------------------------------------------------------------------------------
// SIMT kernels: 256 threads as 16 x 16, each computing a 4 x 4 block of the 64 x 64 tile
// from 64 x 16 slices of op(A) and op(B) held k-major in shared memory (s[k][outer]).

#define SIMT_BK 16
#define SIMT_LD (TILE + 4)  // padded row: 2-way instead of 4-way conflicts on transposing stores

struct alignas(16) SimtSmem {
    float a[2][SIMT_BK][SIMT_LD];
    float b[2][SIMT_BK][SIMT_LD];
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(unsigned short x) { return bf16_to_float(x); }

__device__ __forceinline__ void load4(const float* p, float r[4]) {
    f32x4 v = *(const f32x4*)p;
    r[0] = v.x;
    r[1] = v.y;
    r[2] = v.z;
    r[3] = v.w;
}

__device__ __forceinline__ void load4(const unsigned short* p, float r[4]) {
    u32x2 v = *(const u32x2*)p;
    r[0] = bf16_to_float((unsigned short)(v.x & 0xffffu));
    r[1] = bf16_to_float((unsigned short)(v.x >> 16));
    r[2] = bf16_to_float((unsigned short)(v.y & 0xffffu));
    r[3] = bf16_to_float((unsigned short)(v.y >> 16));
}

// This thread's 4 elements (contiguous in global memory) of the slice of `op` with outer
// origin o0 and k origin k0; zeros outside the matrix and the k range. 64 x 16 = 256
// threads x 4. A vector that would cross the end of a row or of the k range is loaded
// element by element.
template <typename T>
__device__ __forceinline__ void simt_load(const Operand<T>& op, int o0, int k0, int tid,
                                          float r[4]) {
    int srow, scol;
    if (op.k_major) {
        srow = o0 + tid / 4;
        scol = k0 + (tid % 4) * 4;
    } else {
        srow = k0 + tid / 16;
        scol = o0 + (tid % 16) * 4;
    }
    r[0] = r[1] = r[2] = r[3] = 0.0f;
    if (srow < op.rows) {
        const T* p = op.p + (long long)srow * op.ld + scol;
        if (op.vec && scol + 4 <= op.cols) {
            load4(p, r);
        } else {
            UNROLL
            for (int j = 0; j < 4; ++j) {
                if (scol + j < op.cols) {
                    r[j] = to_float(p[j]);
                }
            }
        }
    }
}

// Stores what simt_load loaded at its place in the k-major slice s[k][outer].
__device__ __forceinline__ void simt_store(float (*s)[SIMT_LD], bool k_major, int tid,
                                           const float r[4]) {
    if (k_major) {
        const int o = tid / 4, kk = (tid % 4) * 4;
        UNROLL
        for (int j = 0; j < 4; ++j) {
            s[kk + j][o] = r[j];
        }
    } else {
        const int kk = tid / 16, o = (tid % 16) * 4;
        f32x4 v = {r[0], r[1], r[2], r[3]};
        *(f32x4*)&s[kk][o] = v;
    }
}

// `sm` is the kernel's own __shared__ variable: declared in the extern "C" kernels rather
// than here, because the host emulation cannot poison a static of a template function.
template <typename T>
__device__ __forceinline__ void gemm_simt(SimtSmem& sm, const T* __restrict__ a,
                                          const T* __restrict__ b, float* __restrict__ c, int m,
                                          int n, int k, int trans_a, int trans_b,
                                          const Epilogue& ep, int tile_begin, int tile_end,
                                          int k_begin, int k_end) {
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int width = 4;
    const KRange kr = make_k_range(k, k_begin, k_end, SIMT_BK);
    const Operand<T> A = make_operand(a, m, k, kr.lo, kr.hi, trans_a == 0, width);
    const Operand<T> B = make_operand(b, n, k, kr.lo, kr.hi, trans_b != 0, width);
    const int tiles_n = ceil_div(n, TILE);
    const int end = imin(tile_end, ceil_div(m, TILE) * tiles_n);
    const int slices = kr.slices;

    for (int t = tile_begin + blockIdx.x; t < end; t += gridDim.x) {
        const int m0 = t / tiles_n * TILE, n0 = t % tiles_n * TILE;
        float acc[4][4];
        UNROLL
        for (int i = 0; i < 4; ++i) {
            UNROLL
            for (int j = 0; j < 4; ++j) {
                acc[i][j] = 0.0f;
            }
        }
        float ra[4], rb[4];
        if (slices > 0) {
            simt_load(A, m0, 0, tid, ra);
            simt_load(B, n0, 0, tid, rb);
            simt_store(sm.a[0], A.k_major, tid, ra);
            simt_store(sm.b[0], B.k_major, tid, rb);
        }
        __syncthreads();
        for (int s = 0; s < slices; ++s) {
            const int buf = s & 1;
            const bool more = s + 1 < slices;
            if (more) {
                simt_load(A, m0, (s + 1) * SIMT_BK, tid, ra);
                simt_load(B, n0, (s + 1) * SIMT_BK, tid, rb);
            }
            UNROLL
            for (int kk = 0; kk < SIMT_BK; ++kk) {
                const f32x4 av = *(const f32x4*)&sm.a[buf][kk][ty * 4];
                const f32x4 bv = *(const f32x4*)&sm.b[buf][kk][tx * 4];
                const float af[4] = {av.x, av.y, av.z, av.w};
                const float bf[4] = {bv.x, bv.y, bv.z, bv.w};
                UNROLL
                for (int i = 0; i < 4; ++i) {
                    UNROLL
                    for (int j = 0; j < 4; ++j) {
                        acc[i][j] += af[i] * bf[j];
                    }
                }
            }
            if (more) {
                simt_store(sm.a[buf ^ 1], A.k_major, tid, ra);
                simt_store(sm.b[buf ^ 1], B.k_major, tid, rb);
            }
            __syncthreads();
        }
        UNROLL
        for (int i = 0; i < 4; ++i) {
            UNROLL
            for (int j = 0; j < 4; ++j) {
                store_c(c, m, n, m0 + ty * 4 + i, n0 + tx * 4 + j, acc[i][j], ep);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
             int m, int n, int k, int trans_a, int trans_b, float alpha, float beta,
             int tile_begin, int tile_end, int k_begin, int k_end,
             const float* __restrict__ bias, int relu, unsigned short* __restrict__ c_bf16) {
    __shared__ SimtSmem sm;
    const Epilogue ep = make_epilogue(alpha, beta, bias, relu, c_bf16);
    gemm_simt<float>(sm, a, b, c, m, n, k, trans_a, trans_b, ep, tile_begin, tile_end, k_begin,
                     k_end);
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_bf16_simt(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b,
                   float* __restrict__ c, int m, int n, int k, int trans_a, int trans_b,
                   float alpha, float beta, int tile_begin, int tile_end, int k_begin,
                   int k_end, const float* __restrict__ bias, int relu,
                   unsigned short* __restrict__ c_bf16) {
    __shared__ SimtSmem sm;
    const Epilogue ep = make_epilogue(alpha, beta, bias, relu, c_bf16);
    gemm_simt<unsigned short>(sm, a, b, c, m, n, k, trans_a, trans_b, ep, tile_begin, tile_end,
                              k_begin, k_end);
}

// ---------------------------------------------------------------------------------------
// Tensor cores: 128 threads = 4 warps as 2 x 2, each warp computing 32 x 32 of the tile as
// 2 x 4 mma.sync m16n8k16 products per 16 of k.
//
// Pipeline. The 32-deep k-slices of both operands go through TC_STAGES shared-memory
// buffers, filled by cp.async (16-byte copies that complete in the background). The
// prologue issues slices 0 .. TC_STAGES-2, one commit group per slice (an empty group for a
// slice past the end, so that the group count stays in step). Iteration s then
//   1. waits until at most TC_STAGES-2 groups are pending (cp.async.wait_group), so this
//      thread's copies of slice s have landed;
//   2. __syncthreads(): every thread's copies of slice s have landed, and every warp has
//      finished computing slice s-1;
//   3. issues slice s+TC_STAGES-1 into the buffer of slice s-1, free since step 2;
//   4. computes slice s.
// One barrier per slice; TC_STAGES-1 slices are in flight while one is multiplied. Three
// stages (24 KB of shared memory per CTA) rather than four (32 KB): until a GPU run shows
// that a third slice in flight pays, the smaller footprint leaves room for more resident
// CTAs per SM, whose copies are in flight too.
//
// Operands that allow 16-byte copies (vec: leading dimension a multiple of 8 elements,
// start 16-byte aligned) copy every piece with cp.async, the piece that crosses the end of
// a row or of the k range with src-size below 16 and a piece outside the matrix with
// src-size 0: the hardware fills the rest with zeros. Other operands load each piece
// element by element into registers and store it with one 16-byte st.shared, which needs no
// wait (the barrier of step 2 publishes it).
//
// Shared memory layout: each operand's slice is held as it lies in global memory, one
// 16-byte chunk a piece, unpadded, with the chunks of a row XOR-swizzled so that ldmatrix
// reads and cp.async stores fall in distinct bank groups. The swizzle, the copies
// (tc_fetch) and the fragment loads and products (tc_compute_slice) are in common.cuh,
// parameterised by the tile edge, and shared with gemm_bf16_128 (kernels/gemm_large.cu).
// The host emulation (kernels/emu/) provides ldmatrix (plain and .trans), mma.sync and
// cp.async to test this kernel on the CPU.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

#define TC_STAGES 3
#define TC_BUF (TILE * TC_BK)  // elements of one slice buffer, either layout

struct alignas(128) TcSmem {
    unsigned short a[TC_STAGES][TC_BUF];
    unsigned short b[TC_STAGES][TC_BUF];
};

extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b,
              float* __restrict__ c, int m, int n, int k, int trans_a, int trans_b, float alpha,
              float beta, int tile_begin, int tile_end, int k_begin, int k_end,
              const float* __restrict__ bias, int relu, unsigned short* __restrict__ c_bf16) {
    __shared__ TcSmem sm;
    const Epilogue ep = make_epilogue(alpha, beta, bias, relu, c_bf16);
    const int tid = threadIdx.x;
    const int lane = tid % WARP_SIZE, warp = tid / WARP_SIZE;
    const int wm = warp / 2 * 32, wn = warp % 2 * 32;  // the warp's 32 x 32 within the tile
    const int width = 8;
    const KRange kr = make_k_range(k, k_begin, k_end, TC_BK);
    const Operand<unsigned short> A = make_operand(a, m, k, kr.lo, kr.hi, trans_a == 0, width);
    const Operand<unsigned short> B = make_operand(b, n, k, kr.lo, kr.hi, trans_b != 0, width);
    const int tiles_n = ceil_div(n, TILE);
    const int end = imin(tile_end, ceil_div(m, TILE) * tiles_n);
    const int slices = kr.slices;

    for (int t = tile_begin + blockIdx.x; t < end; t += gridDim.x) {
        const int m0 = t / tiles_n * TILE, n0 = t % tiles_n * TILE;
        float acc[2][4][4];
        UNROLL
        for (int i = 0; i < 2; ++i) {
            UNROLL
            for (int j = 0; j < 4; ++j) {
                UNROLL
                for (int e = 0; e < 4; ++e) {
                    acc[i][j][e] = 0.0f;
                }
            }
        }
        UNROLL
        for (int st = 0; st < TC_STAGES - 1; ++st) {
            if (st < slices) {
                tc_fetch_slice<TILE, 128>(sm.a[st], sm.b[st], A, B, m0, n0, st, tid);
            }
            cp_async_commit();
        }
        for (int s = 0; s < slices; ++s) {
            cp_async_wait<TC_STAGES - 2>();
            __syncthreads();
            const int next = s + TC_STAGES - 1;
            if (next < slices) {
                const int st = next % TC_STAGES;
                tc_fetch_slice<TILE, 128>(sm.a[st], sm.b[st], A, B, m0, n0, next, tid);
            }
            cp_async_commit();
            const int cur = s % TC_STAGES;
            tc_compute_slice<TILE, 2>(acc, sm.a[cur], sm.b[cur], A.k_major, B.k_major, wm, wn,
                                      lane);
        }
        // Only empty groups are left; and no warp may refill a buffer for the next tile
        // while another still computes the last slice from it.
        cp_async_wait<0>();
        __syncthreads();
        // Accumulator fragment: registers 0, 1 hold row lane/4, columns 2*(lane%4) + 0, 1 of
        // the 16 x 8 block; registers 2, 3 the same columns of row lane/4 + 8.
        const int g = lane / 4, tq = lane % 4;
        UNROLL
        for (int i = 0; i < 2; ++i) {
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
}

#endif
