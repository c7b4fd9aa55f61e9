// gemm_bf16_small_m: the product of gemm_bf16 (kernels/gemm.cu; same arguments, same alpha,
// beta and k-range semantics, see kernels/ABI.md) for few rows of C, as at inference batches
// of 16 and below, where gemm_bf16's 64-row tile is mostly padding and a small product has
// too few tiles to fill the GPU.
//
// Output tiles are 16 x 64 (one m16 row of mma.sync by eight n8 blocks), numbered row-major
// over C (tiles = ceil(m/16) * ceil(n/64)), taken tile_begin + blockIdx.x, + gridDim.x, ...
// below tile_end, so any grid gives the same C bit for bit. Any m is correct; the kernel is
// meant for m <= 16, where it reads each operand once, as gemm_bf16 does.
//
// 128 threads = 4 warps split the tile's k range between them (split-K inside the CTA): the
// operands are staged through shared memory in 64-deep k-slices, double-buffered as in
// gemm_bf16, and warp w multiplies k columns [16w, 16w + 16) of every slice into its own
// 16 x 64 f32 accumulator. After the last slice the four partial tiles go to shared memory
// and each output element is their sum in warp order, ((w0 + w1) + w2) + w3: a fixed order,
// so the result depends neither on the schedule of the warps nor on the grid.
#include "common.cuh"

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

#define SM_ROWS 16  // output tile rows (part of the ABI: tile numbering)
#define SM_COLS 64  // output tile columns (part of the ABI: tile numbering)
#define SM_BK 64    // k-slice depth: 16 for each of the 4 warps
#define SM_WARPS 4
// Slice rows padded by 8 elements (16 bytes), so that the eight 16-byte rows an ldmatrix
// phase reads fall in distinct banks, and every row stays 16-byte aligned:
#define SM_LD_K (SM_BK + 8)         // k contiguous: s[outer][SM_LD_K], 144-byte rows
#define SM_LD_A (SM_ROWS + 8)       // op(A) with m contiguous: s[k][SM_LD_A], 48-byte rows
#define SM_LD_B (SM_COLS + 8)       // op(B) with n contiguous: s[k][SM_LD_B], 144-byte rows
#define SM_A_BUF (SM_BK * SM_LD_A)  // elements of an A slice, either layout (>= 16 * SM_LD_K)
#define SM_B_BUF (SM_COLS * SM_LD_K)  // elements of a B slice, either layout (= SM_BK * SM_LD_B)
#define SM_RED_LD (SM_COLS + 4)     // row of a partial tile in the reduction
#define SM_THREADS (SM_WARPS * WARP_SIZE)

// The operand slices during the k loop, then the four partial tiles: the reduction starts
// after the last slice has been read (a barrier ends every slice), so the two share storage.
union alignas(16) SmallMSmem {
    struct {
        unsigned short a[2][SM_A_BUF];
        unsigned short b[2][SM_B_BUF];
    } op;
    float red[SM_WARPS][SM_ROWS][SM_RED_LD];
};

// A slice of `op` with outer extent `outer` (16 for A, 64 for B) and depth SM_BK, at outer
// origin o0 and k origin k0: piece q holds 8 elements contiguous in global memory, zeros
// outside the matrix and the k range. In the operand's own layout a slice row holds SM_BK
// (k contiguous) or `outer` elements, so `per_row` pieces.
__device__ __forceinline__ void sm_load(const Operand<unsigned short>& op, int outer, int o0,
                                        int k0, int q, u32x4& r) {
    const int per_row = (op.k_major ? SM_BK : outer) / 8;
    int srow, scol;
    if (op.k_major) {
        srow = o0 + q / per_row;
        scol = k0 + q % per_row * 8;
    } else {
        srow = k0 + q / per_row;
        scol = o0 + q % per_row * 8;
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

// Stores piece q where sm_load took it from, in a slice buffer with rows of `ld` elements
// (`per_row` pieces a row): one 16-byte store.
__device__ __forceinline__ void sm_store(unsigned short* s, int ld, int per_row, int q,
                                         const u32x4& r) {
    *(u32x4*)&s[q / per_row * ld + q % per_row * 8] = r;
}

// The A fragment (16 x 16 at outer 0, k ks) of an A slice: lanes point at the rows of the
// matrices (outer +0, k +0), (+8, +0), (+0, +8), (+8, +8), the order of the fragment's
// registers; a slice with m contiguous is read transposed.
__device__ __forceinline__ void sm_frag_a(unsigned a[4], const unsigned short* s, bool k_major,
                                          int ks, int lane) {
    if (k_major) {
        ldmatrix_x4(a, &s[(lane % 8 + (lane / 8) % 2 * 8) * SM_LD_K + ks + lane / 16 * 8]);
    } else {
        ldmatrix_x4_trans(a, &s[(ks + lane / 16 * 8 + lane % 8) * SM_LD_A + (lane / 8) % 2 * 8]);
    }
}

// The B fragments of the n8 blocks at outer o and o + 8 (16 x 16 at k ks) of a B slice:
// matrices (outer +0, k +0), (+0, +8), (+8, +0), (+8, +8).
__device__ __forceinline__ void sm_frag_b(unsigned b[2][2], const unsigned short* s, bool k_major,
                                          int o, int ks, int lane) {
    unsigned r[4];
    if (k_major) {
        ldmatrix_x4(r, &s[(o + lane % 8 + lane / 16 * 8) * SM_LD_K + ks + (lane / 8) % 2 * 8]);
    } else {
        ldmatrix_x4_trans(r, &s[(ks + (lane / 8) % 2 * 8 + lane % 8) * SM_LD_B + o + lane / 16 * 8]);
    }
    b[0][0] = r[0];
    b[0][1] = r[1];
    b[1][0] = r[2];
    b[1][1] = r[3];
}

// One slice's global loads for this thread: the A slice (16 x 64 = 128 pieces, one a
// thread) and the B slice (64 x 64 = 512 pieces, four a thread).
__device__ __forceinline__ void sm_load_slice(const Operand<unsigned short>& A,
                                              const Operand<unsigned short>& B, int m0, int n0,
                                              int k0, int tid, u32x4& ra, u32x4 rb[4]) {
    sm_load(A, SM_ROWS, m0, k0, tid, ra);
    UNROLL
    for (int i = 0; i < 4; ++i) {
        sm_load(B, SM_COLS, n0, k0, tid + i * SM_THREADS, rb[i]);
    }
}

// Stores what sm_load_slice loaded into slice buffer `buf`.
__device__ __forceinline__ void sm_store_slice(SmallMSmem& sm, int buf, bool a_kmaj, bool b_kmaj,
                                               int tid, const u32x4& ra, const u32x4 rb[4]) {
    const int a_ld = a_kmaj ? SM_LD_K : SM_LD_A, a_per = (a_kmaj ? SM_BK : SM_ROWS) / 8;
    const int b_ld = b_kmaj ? SM_LD_K : SM_LD_B, b_per = (b_kmaj ? SM_BK : SM_COLS) / 8;
    sm_store(sm.op.a[buf], a_ld, a_per, tid, ra);
    UNROLL
    for (int i = 0; i < 4; ++i) {
        sm_store(sm.op.b[buf], b_ld, b_per, tid + i * SM_THREADS, rb[i]);
    }
}

// This warp's 16 x 16 of k (ks = 16 * warp) of the slice in buffer `buf`, onto acc.
__device__ __forceinline__ void sm_mma_slice(const SmallMSmem& sm, int buf, bool a_kmaj,
                                             bool b_kmaj, int ks, int lane, float acc[8][4]) {
    unsigned af[4];
    sm_frag_a(af, sm.op.a[buf], a_kmaj, ks, lane);
    UNROLL
    for (int j = 0; j < 4; ++j) {
        unsigned bfr[2][2];
        sm_frag_b(bfr, sm.op.b[buf], b_kmaj, j * 16, ks, lane);
        mma_bf16_16816(acc[2 * j], af, bfr[0]);
        mma_bf16_16816(acc[2 * j + 1], af, bfr[1]);
    }
}

// This warp's partial tile into red[warp]. Accumulator fragment: registers 0, 1 hold row
// lane/4, columns 2*(lane%4) + 0, 1 of the 16 x 8 block; registers 2, 3 row lane/4 + 8.
__device__ __forceinline__ void sm_put_partial(float (*red)[SM_RED_LD], int lane,
                                               const float acc[8][4]) {
    const int g = lane / 4, tq = lane % 4;
    UNROLL
    for (int j = 0; j < 8; ++j) {
        UNROLL
        for (int e = 0; e < 4; ++e) {
            red[g + e / 2 * 8][j * 8 + tq * 2 + e % 2] = acc[j][e];
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16_small_m(const unsigned short* __restrict__ a, const unsigned short* __restrict__ b,
                      float* __restrict__ c, int m, int n, int k, int trans_a, int trans_b,
                      float alpha, float beta, int tile_begin, int tile_end, int k_begin,
                      int k_end, const float* __restrict__ bias, int relu,
                      unsigned short* __restrict__ c_bf16) {
    __shared__ SmallMSmem sm;
    const Epilogue ep = make_epilogue(alpha, beta, bias, relu, c_bf16);
    const int tid = threadIdx.x;
    const int lane = tid % WARP_SIZE, warp = tid / WARP_SIZE;
    const KRange kr = make_k_range(k, k_begin, k_end, SM_BK);
    const Operand<unsigned short> A = make_operand(a, m, k, kr.lo, kr.hi, trans_a == 0, 8);
    const Operand<unsigned short> B = make_operand(b, n, k, kr.lo, kr.hi, trans_b != 0, 8);
    const int tiles_n = ceil_div(n, SM_COLS);
    const int end = imin(tile_end, ceil_div(m, SM_ROWS) * tiles_n);
    const int slices = kr.slices;

    for (int t = tile_begin + blockIdx.x; t < end; t += gridDim.x) {
        const int m0 = t / tiles_n * SM_ROWS, n0 = t % tiles_n * SM_COLS;
        float acc[8][4];
        UNROLL
        for (int j = 0; j < 8; ++j) {
            UNROLL
            for (int e = 0; e < 4; ++e) {
                acc[j][e] = 0.0f;
            }
        }
        u32x4 ra, rb[4];
        if (slices > 0) {
            sm_load_slice(A, B, m0, n0, 0, tid, ra, rb);
            sm_store_slice(sm, 0, A.k_major, B.k_major, tid, ra, rb);
        }
        __syncthreads();
        for (int s = 0; s < slices; ++s) {
            const int buf = s & 1;
            const bool more = s + 1 < slices;
            if (more) {
                sm_load_slice(A, B, m0, n0, (s + 1) * SM_BK, tid, ra, rb);
            }
            sm_mma_slice(sm, buf, A.k_major, B.k_major, warp * 16, lane, acc);
            if (more) {
                sm_store_slice(sm, buf ^ 1, A.k_major, B.k_major, tid, ra, rb);
            }
            __syncthreads();
        }
        // Every warp has finished reading the slices (the barrier above), so the partial
        // tiles may overwrite them.
        sm_put_partial(sm.red[warp], lane, acc);
        __syncthreads();
        // Element e of the tile is summed by thread e % 128, in warp order; consecutive
        // threads take consecutive columns, so the stores to C are coalesced.
        UNROLL
        for (int i = 0; i < SM_ROWS * SM_COLS / SM_THREADS; ++i) {
            const int e = tid + i * SM_THREADS;
            const int r = e / SM_COLS, col = e % SM_COLS;
            float v = sm.red[0][r][col];
            UNROLL
            for (int w = 1; w < SM_WARPS; ++w) {
                v += sm.red[w][r][col];
            }
            store_c(c, m, n, m0 + r, n0 + col, v, ep);
        }
        // The next tile's first slice overwrites the partial tiles being read above.
        __syncthreads();
    }
}

#endif
