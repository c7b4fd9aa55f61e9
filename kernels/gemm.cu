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
// All three stage the operands through shared memory in k-slices, double-buffered: the
// global loads of slice s+1 are issued into registers before slice s is multiplied, and
// stored to the other buffer after, so one barrier per slice suffices.
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
                                          int n, int k, int trans_a, int trans_b, float alpha,
                                          float beta, int tile_begin, int tile_end, int k_begin,
                                          int k_end) {
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
                store_c(c, m, n, m0 + ty * 4 + i, n0 + tx * 4 + j, acc[i][j], alpha, beta);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
             int m, int n, int k, int trans_a, int trans_b, float alpha, float beta,
             int tile_begin, int tile_end, int k_begin, int k_end) {
    __shared__ SimtSmem sm;
    gemm_simt<float>(sm, a, b, c, m, n, k, trans_a, trans_b, alpha, beta, tile_begin, tile_end,
                     k_begin, k_end);
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_bf16_simt(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b,
                   float* __restrict__ c, int m, int n, int k, int trans_a, int trans_b,
                   float alpha, float beta, int tile_begin, int tile_end, int k_begin,
                   int k_end) {
    __shared__ SimtSmem sm;
    gemm_simt<unsigned short>(sm, a, b, c, m, n, k, trans_a, trans_b, alpha, beta, tile_begin,
                              tile_end, k_begin, k_end);
}

// ---------------------------------------------------------------------------------------
// Tensor cores: 128 threads = 4 warps as 2 x 2, each warp computing 32 x 32 of the tile as
// 2 x 4 mma.sync m16n8k16 products per 16 of k. Each operand's slice is held in shared
// memory as it lies in global memory, so every store is one 16-byte vector:
//   - k contiguous (a k-major operand): s[outer][k], rows padded to 80 bytes so that the
//     eight 16-byte rows an ldmatrix phase reads fall in distinct banks; ldmatrix turns it
//     into the A (row) and B (col) fragments directly;
//   - outer index contiguous: s[k][outer], rows padded to 144 bytes for the same reason;
//     ldmatrix.trans delivers the same fragments from it.
// The host emulation (kernels/emu/cuda_emu.h) provides ldmatrix (plain and .trans) and
// mma.sync to test this kernel on the CPU.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

#define TC_BK 32
#define TC_LD (TC_BK + 8)   // row of a k-contiguous slice, s[TILE][TC_LD]
#define TC_LDT (TILE + 8)   // row of an outer-contiguous slice, s[TC_BK][TC_LDT]
#define TC_BUF (TILE * TC_LD)  // elements of one slice buffer, either layout (>= TC_BK * TC_LDT)

struct alignas(16) TcSmem {
    unsigned short a[2][TC_BUF];
    unsigned short b[2][TC_BUF];
};

// A slice buffer seen as s[outer][k] (k contiguous) or s[k][outer] (outer contiguous).
__device__ __forceinline__ unsigned short (*kmaj(unsigned short* p))[TC_LD] {
    return (unsigned short (*)[TC_LD])p;
}
__device__ __forceinline__ unsigned short (*omaj(unsigned short* p))[TC_LDT] {
    return (unsigned short (*)[TC_LDT])p;
}

// Piece q (0..255) of the 64 x 32 slice of `op` at outer origin o0, k origin k0: 8 elements
// contiguous in global memory, zeros outside the matrix and the k range.
__device__ __forceinline__ void tc_load(const Operand<unsigned short>& op, int o0, int k0, int q,
                                        u32x4& r) {
    int srow, scol;
    if (op.k_major) {
        srow = o0 + q / 4;
        scol = k0 + (q % 4) * 8;
    } else {
        srow = k0 + q / 8;
        scol = o0 + (q % 8) * 8;
    }
    r.x = r.y = r.z = r.w = 0u;
    if (srow < op.rows) {
        const unsigned short* p = op.p + (long long)srow * op.ld + scol;
        if (op.vec && scol + 8 <= op.cols) {
            r = *(const u32x4*)p;
        } else {
            unsigned w[4] = {0u, 0u, 0u, 0u};
            UNROLL
            for (int j = 0; j < 8; ++j) {
                if (scol + j < op.cols) {
                    w[j / 2] |= (unsigned)p[j] << (16 * (j % 2));
                }
            }
            r.x = w[0];
            r.y = w[1];
            r.z = w[2];
            r.w = w[3];
        }
    }
}

// Stores piece q at its place in the slice buffer s, in the operand's own layout: one
// 16-byte store either way.
__device__ __forceinline__ void tc_store(unsigned short* s, bool k_major, int q,
                                         const u32x4& r) {
    if (k_major) {
        *(u32x4*)&kmaj(s)[q / 4][(q % 4) * 8] = r;
    } else {
        *(u32x4*)&omaj(s)[q / 8][(q % 8) * 8] = r;
    }
}

// The A fragment (16 x 16 at outer o, k ks) of slice buffer s into a[4]: lanes point at the
// rows of matrices (outer +0, k +0), (+8, +0), (+0, +8), (+8, +8), the order of the
// fragment's registers; an outer-contiguous slice is read transposed.
__device__ __forceinline__ void tc_frag_a(unsigned a[4], unsigned short* s, bool k_major, int o,
                                          int ks, int lane) {
    if (k_major) {
        ldmatrix_x4(a, &kmaj(s)[o + lane % 8 + (lane / 8) % 2 * 8][ks + lane / 16 * 8]);
    } else {
        ldmatrix_x4_trans(a, &omaj(s)[ks + lane / 16 * 8 + lane % 8][o + (lane / 8) % 2 * 8]);
    }
}

// The B fragments of two adjacent n8 blocks (16 x 16 at outer o, k ks) into b[2][2]:
// matrices (outer +0, k +0), (+0, +8), (+8, +0), (+8, +8).
__device__ __forceinline__ void tc_frag_b(unsigned b[2][2], unsigned short* s, bool k_major,
                                          int o, int ks, int lane) {
    unsigned r[4];
    if (k_major) {
        ldmatrix_x4(r, &kmaj(s)[o + lane % 8 + lane / 16 * 8][ks + (lane / 8) % 2 * 8]);
    } else {
        ldmatrix_x4_trans(r, &omaj(s)[ks + (lane / 8) % 2 * 8 + lane % 8][o + lane / 16 * 8]);
    }
    b[0][0] = r[0];
    b[0][1] = r[1];
    b[1][0] = r[2];
    b[1][1] = r[3];
}

extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b,
              float* __restrict__ c, int m, int n, int k, int trans_a, int trans_b, float alpha,
              float beta, int tile_begin, int tile_end, int k_begin, int k_end) {
    __shared__ TcSmem sm;
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
        u32x4 ra[2], rb[2];
        if (slices > 0) {
            UNROLL
            for (int i = 0; i < 2; ++i) {
                tc_load(A, m0, 0, tid + i * 128, ra[i]);
                tc_load(B, n0, 0, tid + i * 128, rb[i]);
            }
            UNROLL
            for (int i = 0; i < 2; ++i) {
                tc_store(sm.a[0], A.k_major, tid + i * 128, ra[i]);
                tc_store(sm.b[0], B.k_major, tid + i * 128, rb[i]);
            }
        }
        __syncthreads();
        for (int s = 0; s < slices; ++s) {
            const int buf = s & 1;
            const bool more = s + 1 < slices;
            if (more) {
                UNROLL
                for (int i = 0; i < 2; ++i) {
                    tc_load(A, m0, (s + 1) * TC_BK, tid + i * 128, ra[i]);
                    tc_load(B, n0, (s + 1) * TC_BK, tid + i * 128, rb[i]);
                }
            }
            UNROLL
            for (int ks = 0; ks < TC_BK; ks += 16) {
                unsigned af[2][4], bfr[4][2];
                UNROLL
                for (int i = 0; i < 2; ++i) {
                    tc_frag_a(af[i], sm.a[buf], A.k_major, wm + i * 16, ks, lane);
                }
                UNROLL
                for (int j = 0; j < 2; ++j) {
                    tc_frag_b(&bfr[2 * j], sm.b[buf], B.k_major, wn + j * 16, ks, lane);
                }
                UNROLL
                for (int i = 0; i < 2; ++i) {
                    UNROLL
                    for (int j = 0; j < 4; ++j) {
                        mma_bf16_16816(acc[i][j], af[i], bfr[j]);
                    }
                }
            }
            if (more) {
                UNROLL
                for (int i = 0; i < 2; ++i) {
                    tc_store(sm.a[buf ^ 1], A.k_major, tid + i * 128, ra[i]);
                    tc_store(sm.b[buf ^ 1], B.k_major, tid + i * 128, rb[i]);
                }
            }
            __syncthreads();
        }
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
                    store_c(c, m, n, row, col, acc[i][j][e], alpha, beta);
                }
            }
        }
    }
}

#endif
