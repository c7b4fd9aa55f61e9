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
// Shared memory layout: each operand's slice is held as it lies in global memory, so a
// piece is one 16-byte chunk, with no padding: the chunks of a row are permuted (XOR
// swizzle) so that the 8 rows one ldmatrix phase reads, and the 8 chunks one quarter-warp
// stores, fall in 8 distinct 16-byte bank groups (a 128-byte line spans the 32 banks as 8
// groups of 16 bytes):
//   - k contiguous (a k-major operand): s[outer][k], 64 bytes (4 chunks) per row, two rows
//     per 128-byte line. Chunk c of row r is stored at chunk c ^ (r/2 % 4), bank group
//     4*(r % 2) + (c ^ (r/2 % 4)). ldmatrix reads chunk c of rows r0..r0+7 (r0 a multiple
//     of 8): (r % 2, r/2 % 4) takes all 8 values, so the groups are distinct. A
//     quarter-warp stores chunks 0..3 of rows 2i and 2i+1: 4*(r % 2) + a permutation of
//     0..3, distinct too. ldmatrix turns this layout into the A (row) and B (col)
//     fragments directly.
//   - outer index contiguous: s[k][outer], 128 bytes (8 chunks) per row. Chunk c of row r is
//     stored at chunk c ^ (r % 8), the bank group. ldmatrix.trans reads chunk c of rows
//     r0..r0+7: c ^ 0..7, distinct; a quarter-warp stores chunks 0..7 of one row, a
//     permutation of 0..7. ldmatrix.trans delivers the same fragments from it.
// The host emulation (kernels/emu/) provides ldmatrix (plain and .trans), mma.sync and
// cp.async to test this kernel on the CPU.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

#define TC_BK 32
#define TC_STAGES 3
#define TC_BUF (TILE * TC_BK)  // elements of one slice buffer, either layout

struct alignas(128) TcSmem {
    unsigned short a[TC_STAGES][TC_BUF];
    unsigned short b[TC_STAGES][TC_BUF];
};

// Element offset of chunk `chunk` (8 elements) of row `row` in a slice buffer: k contiguous
// (s[outer][k], 4 chunks per row) or outer contiguous (s[k][outer], 8 chunks per row).
__device__ __forceinline__ int kmaj_at(int row, int chunk) {
    return row * TC_BK + ((chunk ^ (row / 2 % 4)) * 8);
}
__device__ __forceinline__ int omaj_at(int row, int chunk) {
    return row * TILE + ((chunk ^ (row % 8)) * 8);
}

// cp.async.cg.shared.global: copies src_size bytes (0..16) from global src to shared dst
// and fills the rest of the 16 bytes with zeros; both addresses 16-byte aligned. It lands
// at some point before the cp_async_wait that retires its commit group.
__device__ __forceinline__ void cp_async_16(unsigned short* dst, const unsigned short* src,
                                            int src_size) {
#ifdef __CUDA_ARCH__
    const unsigned addr = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src),
                 "r"(src_size)
                 : "memory");
#else
    emu_cp_async_16(dst, src, src_size);
#endif
}

// Closes this thread's group of copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#else
    emu_cp_async_commit();
#endif
}

// Waits until at most N of this thread's committed groups are pending (the oldest land
// first). Other threads' copies are seen only after a barrier that follows their wait.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#else
    emu_cp_async_wait(N);
#endif
}

// Piece q (0..255) of the 64 x 32 slice of `op` at outer origin o0, k origin k0 into slice
// buffer s: 8 elements contiguous in global memory, zeros outside the matrix and the k
// range. A vec operand copies it with cp.async (src-size covers the part inside); another
// loads it element by element and stores it at once.
__device__ __forceinline__ void tc_fetch(unsigned short* s, const Operand<unsigned short>& op,
                                         int o0, int k0, int q) {
    int srow, scol;
    unsigned short* dst;
    if (op.k_major) {
        srow = o0 + q / 4;
        scol = k0 + (q % 4) * 8;
        dst = s + kmaj_at(q / 4, q % 4);
    } else {
        srow = k0 + q / 8;
        scol = o0 + (q % 8) * 8;
        dst = s + omaj_at(q / 8, q % 8);
    }
    const int left = srow < op.rows ? op.cols - scol : 0;  // elements inside, from scol
    const unsigned short* p = op.p + (long long)srow * op.ld + scol;
    if (op.vec) {
        const int inside = left < 0 ? 0 : left < 8 ? left : 8;
        cp_async_16(dst, inside > 0 ? p : op.p, inside * 2);
    } else {
        unsigned w[4] = {0u, 0u, 0u, 0u};
        UNROLL
        for (int j = 0; j < 8; ++j) {
            if (j < left) {
                w[j / 2] |= (unsigned)p[j] << (16 * (j % 2));
            }
        }
        const u32x4 r = {w[0], w[1], w[2], w[3]};
        *(u32x4*)dst = r;
    }
}

// Slice `slice` of both operands into stage buffers a and b: two pieces of each per thread.
__device__ __forceinline__ void tc_fetch_slice(unsigned short* a, unsigned short* b,
                                               const Operand<unsigned short>& A,
                                               const Operand<unsigned short>& B, int m0, int n0,
                                               int slice, int tid) {
    UNROLL
    for (int i = 0; i < 2; ++i) {
        tc_fetch(a, A, m0, slice * TC_BK, tid + i * 128);
        tc_fetch(b, B, n0, slice * TC_BK, tid + i * 128);
    }
}

// The A fragment (16 x 16 at outer o, k ks) of slice buffer s into a[4]: lanes point at the
// rows of matrices (outer +0, k +0), (+8, +0), (+0, +8), (+8, +8), the order of the
// fragment's registers; an outer-contiguous slice is read transposed.
__device__ __forceinline__ void tc_frag_a(unsigned a[4], const unsigned short* s, bool k_major,
                                          int o, int ks, int lane) {
    if (k_major) {
        ldmatrix_x4(a, s + kmaj_at(o + lane % 8 + (lane / 8) % 2 * 8, ks / 8 + lane / 16));
    } else {
        ldmatrix_x4_trans(a, s + omaj_at(ks + lane / 16 * 8 + lane % 8, o / 8 + (lane / 8) % 2));
    }
}

// The B fragments of two adjacent n8 blocks (16 x 16 at outer o, k ks) into b[2][2]:
// matrices (outer +0, k +0), (+0, +8), (+8, +0), (+8, +8).
__device__ __forceinline__ void tc_frag_b(unsigned b[2][2], const unsigned short* s,
                                          bool k_major, int o, int ks, int lane) {
    unsigned r[4];
    if (k_major) {
        ldmatrix_x4(r, s + kmaj_at(o + lane % 8 + lane / 16 * 8, ks / 8 + (lane / 8) % 2));
    } else {
        ldmatrix_x4_trans(r, s + omaj_at(ks + (lane / 8) % 2 * 8 + lane % 8, o / 8 + lane / 16));
    }
    b[0][0] = r[0];
    b[0][1] = r[1];
    b[1][0] = r[2];
    b[1][1] = r[3];
}

// acc += the warp's 32 x 32 share of one slice held in stage buffers sa, sb.
__device__ __forceinline__ void tc_compute_slice(float acc[2][4][4], const unsigned short* sa,
                                                 const unsigned short* sb, bool a_k_major,
                                                 bool b_k_major, int wm, int wn, int lane) {
    UNROLL
    for (int ks = 0; ks < TC_BK; ks += 16) {
        unsigned af[2][4], bfr[4][2];
        UNROLL
        for (int i = 0; i < 2; ++i) {
            tc_frag_a(af[i], sa, a_k_major, wm + i * 16, ks, lane);
        }
        UNROLL
        for (int j = 0; j < 2; ++j) {
            tc_frag_b(&bfr[2 * j], sb, b_k_major, wn + j * 16, ks, lane);
        }
        UNROLL
        for (int i = 0; i < 2; ++i) {
            UNROLL
            for (int j = 0; j < 4; ++j) {
                mma_bf16_16816(acc[i][j], af[i], bfr[j]);
            }
        }
    }
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
        UNROLL
        for (int st = 0; st < TC_STAGES - 1; ++st) {
            if (st < slices) {
                tc_fetch_slice(sm.a[st], sm.b[st], A, B, m0, n0, st, tid);
            }
            cp_async_commit();
        }
        for (int s = 0; s < slices; ++s) {
            cp_async_wait<TC_STAGES - 2>();
            __syncthreads();
            const int next = s + TC_STAGES - 1;
            if (next < slices) {
                const int st = next % TC_STAGES;
                tc_fetch_slice(sm.a[st], sm.b[st], A, B, m0, n0, next, tid);
            }
            cp_async_commit();
            const int cur = s % TC_STAGES;
            tc_compute_slice(acc, sm.a[cur], sm.b[cur], A.k_major, B.k_major, wm, wn, lane);
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
                    store_c(c, m, n, row, col, acc[i][j][e], alpha, beta);
                }
            }
        }
    }
}

#endif
