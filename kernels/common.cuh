// Helpers shared by the kernels. No CUDA header is included: NVRTC compiles these sources
// with no include path, and the host emulation (kernels/emu/cuda_emu.h) supplies the same
// built-ins to a C++ compiler. See kernels/ABI.md.
#ifndef SETPOINT_KERNELS_COMMON_CUH
#define SETPOINT_KERNELS_COMMON_CUH

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

// Full unrolling of constant-trip loops on the device; the host emulation leaves it to the
// C++ compiler (which would warn about an unknown pragma).
#ifdef __CUDA_ARCH__
#define UNROLL _Pragma("unroll")
#else
#define UNROLL
#endif

// Grid-stride loop over [0, n): the results do not depend on the grid size. The index is
// 64-bit so that `i + stride` cannot overflow for n close to INT_MAX.
#define GRID_STRIDE_LOOP(i, n)                                                                  \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n);  \
         i += (long long)gridDim.x * blockDim.x)

// Aligned vectors for wide loads and stores (the CUDA vector types live in a header).
struct alignas(16) f32x4 {
    float x, y, z, w;
};
struct alignas(8) u32x2 {
    unsigned x, y;
};
struct alignas(16) u32x4 {
    unsigned x, y, z, w;
};

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

__device__ __forceinline__ float neg_infinity() { return __uint_as_float(0xff800000u); }

// bf16 -> f32. Exact; a NaN is quieted the way the `half` crate does, so the host and the
// device agree bit for bit on every input.
__device__ __forceinline__ float bf16_to_float(unsigned short h) {
    unsigned u = (unsigned)h << 16;
    if ((h & 0x7fffu) > 0x7f80u) {
        u |= 0x00400000u;
    }
    return __uint_as_float(u);
}

// f32 -> bf16, round to nearest even. A NaN stays a NaN (its top mantissa bits kept, the quiet
// bit set), as in the `half` crate; values past the largest bf16 round to infinity.
__device__ __forceinline__ unsigned short float_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x0040u);
    }
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Warp reductions by butterfly: every lane ends with the same value, bit for bit (each step
// adds the same two operands on both lanes, in either order, which IEEE addition does not
// distinguish).
__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(FULL_MASK, v, offset);
    }
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    }
    return v;
}

// The largest value and the first index holding it (the smallest index among equal
// maxima), as a sequential scan with `if (v > max)` finds it.
__device__ __forceinline__ void warp_argmax(float& v, int& idx) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, v, offset);
        int oi = __shfl_xor_sync(FULL_MASK, idx, offset);
        if (ov > v || (ov == v && oi < idx)) {
            v = ov;
            idx = oi;
        }
    }
}

// ---------------------------------------------------------------------------------------
// GEMM helpers shared by the GEMM kernels (kernels/gemm.cu, kernels/gemm_small.cu).

// One operand seen as an "outer x k" matrix restricted to the launch's k range: op(A) is
// m x k (outer = m); op(B), transposed, is n x k (outer = n). Its storage is row-major with
// ld elements per row, with either k contiguous (k_major: a storage row is one outer index)
// or the outer index contiguous (a storage row is one k). `p` points at k = k_lo, so k
// indices are relative to the range, and rows [0, rows) and columns [0, cols) of the
// storage from p are read. ld is the extent of the contiguous index in storage, so when ld
// is a multiple of the vector width and p is aligned, so is every vector at a multiple of
// the width.
template <typename T>
struct Operand {
    const T* p;
    int ld;
    int rows;
    int cols;
    bool k_major;
    bool vec;  // aligned vector loads of `width` elements are possible
};

// The operand over the k range [k_lo, k_hi). Shifting the base pointer (rather than adding
// k_lo to every k index) keeps the loads as cheap as without a range: ptxas otherwise keeps
// more addresses live, about 25 more registers in gemm_bf16. A k_lo that is not a multiple
// of the vector width (k contiguous) leaves p misaligned, so the loads are scalar.
template <typename T>
__device__ __forceinline__ Operand<T> make_operand(const T* p, int outer, int k, int k_lo,
                                                   int k_hi, bool k_major, int width) {
    Operand<T> op;
    op.k_major = k_major;
    op.ld = k_major ? k : outer;
    op.p = p + (k_major ? (long long)k_lo : (long long)k_lo * op.ld);
    op.rows = k_major ? outer : k_hi - k_lo;
    op.cols = k_major ? k_hi - k_lo : outer;
    op.vec = op.ld % width == 0 &&
             (unsigned long long)op.p % (unsigned long long)(width * (int)sizeof(T)) == 0;
    return op;
}

// The k range of a launch, [k_lo, k_hi), and its number of `bk`-deep slices.
struct KRange {
    int lo, hi, slices;
};

__device__ __forceinline__ KRange make_k_range(int k, int k_begin, int k_end, int bk) {
    KRange r;
    r.lo = k_begin > 0 ? k_begin : 0;
    r.hi = imin(k_end, k);
    r.slices = r.hi > r.lo ? ceil_div(r.hi - r.lo, bk) : 0;
    return r;
}

// How a GEMM writes C (kernels/ABI.md, "GEMM epilogue"): alpha * acc, plus beta * C when
// beta is not 0, plus bias[col] when there is a bias, through ReLU when asked, stored as f32
// and also as bf16 (round to nearest even) where c_bf16 is given. With no bias, no ReLU and
// no c_bf16 it is the plain product. The same order of operations as the CPU backend's GEMM
// followed by its bias_act, and as the bias_act kernel.
struct Epilogue {
    float alpha, beta;
    const float* bias;        // n elements, or null
    unsigned short* c_bf16;   // m x n, like C, or null
    int relu;
};

__device__ __forceinline__ Epilogue make_epilogue(float alpha, float beta, const float* bias,
                                                  int relu, unsigned short* c_bf16) {
    Epilogue ep;
    ep.alpha = alpha;
    ep.beta = beta;
    ep.bias = bias;
    ep.c_bf16 = c_bf16;
    ep.relu = relu;
    return ep;
}

// The bias of column col (0 without a bias or outside C): loaded once for the elements of a
// column a thread stores.
__device__ __forceinline__ float bias_of(const Epilogue& ep, int n, int col) {
    return ep.bias != nullptr && col < n ? ep.bias[col] : 0.0f;
}

// Writes C[row][col] from the accumulated acc as `ep` says, if inside C; `bias` is
// bias_of(ep, n, col).
__device__ __forceinline__ void store_c(float* c, int m, int n, int row, int col, float acc,
                                        const Epilogue& ep, float bias) {
    if (row < m && col < n) {
        const long long at = (long long)row * n + col;
        float v = ep.alpha * acc;
        if (ep.beta != 0.0f) {
            v += ep.beta * c[at];
        }
        if (ep.bias != nullptr) {
            v = v + bias;
        }
        if (ep.relu) {
            v = fmaxf(v, 0.0f);
        }
        c[at] = v;
        if (ep.c_bf16 != nullptr) {
            ep.c_bf16[at] = float_to_bf16(v);
        }
    }
}

// Writes C[row][col] from the accumulated acc as `ep` says, if inside C.
__device__ __forceinline__ void store_c(float* c, int m, int n, int row, int col, float acc,
                                        const Epilogue& ep) {
    store_c(c, m, n, row, col, acc, ep, bias_of(ep, n, col));
}

// Tensor-core instructions (sm_80 and newer), as inline PTX on the device and emulated on
// the host (kernels/emu/tensor_core.h).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

// Loads four 8 x 8 b16 matrices from shared memory: lanes 8j..8j+7 give the row addresses
// of matrix j (16 bytes each, 16-byte aligned), and r[j] receives row lane/4, elements
// 2*(lane%4) and 2*(lane%4)+1 of matrix j.
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const unsigned short* p) {
#ifdef __CUDA_ARCH__
    const unsigned addr = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#else
    emu_ldmatrix_x4(r, p);
#endif
}

// As ldmatrix_x4, each matrix transposed: r[j] receives column lane/4, elements of rows
// 2*(lane%4) and 2*(lane%4)+1 of matrix j.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const unsigned short* p) {
#ifdef __CUDA_ARCH__
    const unsigned addr = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#else
    emu_ldmatrix_x4_trans(r, p);
#endif
}

// d += A * B for a 16 x 16 bf16 A fragment (4 registers) and a 16 x 8 bf16 B fragment
// (2 registers), accumulating in f32.
__device__ __forceinline__ void mma_bf16_16816(float d[4], const unsigned a[4],
                                               const unsigned b[2]) {
#ifdef __CUDA_ARCH__
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    emu_mma_m16n8k16_bf16(d, a, b);
#endif
}


// ---------------------------------------------------------------------------------------
// The cp.async pipeline of the square tensor-core GEMMs (gemm_bf16 in kernels/gemm.cu, 64 x
// 64 tiles; gemm_bf16_128 in kernels/gemm_large.cu, 128 x 128 tiles), parameterised by the
// tile edge EDGE: both stage 32-deep k-slices (EDGE x TC_BK of each operand) through
// XOR-swizzled, unpadded shared memory and multiply them with ldmatrix and mma.sync.
//
// Swizzle. A slice is held as it lies in global memory, so a piece is one 16-byte chunk of
// 8 elements; the chunks of a row are permuted so that the 8 rows one ldmatrix phase reads,
// and the 8 chunks one quarter-warp stores, fall in 8 distinct 16-byte bank groups (a
// 128-byte line spans the 32 banks as 8 groups of 16 bytes):
//   - k contiguous (kmaj_at, s[outer][k]): 64 bytes (4 chunks) per row whatever EDGE, two
//     rows per line. Chunk c of row r is stored at chunk c ^ (r/2 % 4), bank group
//     4*(r % 2) + (c ^ (r/2 % 4)). ldmatrix reads chunk c of rows r0..r0+7 (r0 a multiple
//     of 8): (r % 2, r/2 % 4) takes all 8 values, so the groups are distinct. A
//     quarter-warp stores chunks 0..3 of rows 2i and 2i+1: 4*(r % 2) + a permutation of
//     0..3, distinct too.
//   - outer index contiguous (omaj_at, s[k][outer]): EDGE/8 chunks per row, a whole number
//     of lines (EDGE a multiple of 64), so a row starts at bank group 0. Chunk c of row r
//     is stored at chunk c ^ (r % 8), bank group (c % 8) ^ (r % 8). ldmatrix.trans reads
//     chunk c of rows r0..r0+7: (c % 8) ^ 0..7, distinct; a quarter-warp stores 8
//     consecutive chunks 8j..8j+7 of one row, a permutation of the 8 groups.
// ldmatrix turns the k-contiguous layout into the A (row) and B (col) fragments directly,
// ldmatrix.trans the other.

#define TC_BK 32  // k-slice depth of the square tensor-core GEMMs

// Element offset of chunk `chunk` (8 elements) of row `row` in a slice buffer: k contiguous
// (s[outer][k], 4 chunks per row) or outer contiguous (s[k][outer], EDGE/8 chunks per row).
__device__ __forceinline__ int kmaj_at(int row, int chunk) {
    return row * TC_BK + ((chunk ^ (row / 2 % 4)) * 8);
}
template <int EDGE>
__device__ __forceinline__ int omaj_at(int row, int chunk) {
    static_assert(EDGE % 64 == 0, "a slice row must span whole 128-byte lines");
    return row * EDGE + ((chunk ^ (row % 8)) * 8);
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

// Piece q (0 .. EDGE*TC_BK/8 - 1) of the EDGE x TC_BK slice of `op` at outer origin o0, k
// origin k0 into slice buffer s: 8 elements contiguous in global memory, zeros outside the
// matrix and the k range. A vec operand copies it with cp.async (src-size covers the part
// inside, the hardware zero-fills the rest); another loads it element by element and stores
// it at once with one 16-byte st.shared, which needs no wait (the next barrier publishes it).
template <int EDGE>
__device__ __forceinline__ void tc_fetch(unsigned short* s, const Operand<unsigned short>& op,
                                         int o0, int k0, int q) {
    const int per_row = EDGE / 8;  // chunks per row of an outer-contiguous slice
    int srow, scol;
    unsigned short* dst;
    if (op.k_major) {
        srow = o0 + q / 4;
        scol = k0 + (q % 4) * 8;
        dst = s + kmaj_at(q / 4, q % 4);
    } else {
        srow = k0 + q / per_row;
        scol = o0 + (q % per_row) * 8;
        dst = s + omaj_at<EDGE>(q / per_row, q % per_row);
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

// Slice `slice` of both operands into stage buffers a and b, by a CTA of THREADS threads:
// EDGE*TC_BK/8 pieces of each, EDGE*TC_BK/8/THREADS per thread (2 for both kernels).
template <int EDGE, int THREADS>
__device__ __forceinline__ void tc_fetch_slice(unsigned short* a, unsigned short* b,
                                               const Operand<unsigned short>& A,
                                               const Operand<unsigned short>& B, int m0, int n0,
                                               int slice, int tid) {
    constexpr int pieces = EDGE * TC_BK / 8;
    static_assert(pieces % THREADS == 0, "every thread copies the same number of pieces");
    UNROLL
    for (int i = 0; i < pieces / THREADS; ++i) {
        tc_fetch<EDGE>(a, A, m0, slice * TC_BK, tid + i * THREADS);
        tc_fetch<EDGE>(b, B, n0, slice * TC_BK, tid + i * THREADS);
    }
}

// The A fragment (16 x 16 at outer o, k ks) of slice buffer s into a[4]: lanes point at the
// rows of matrices (outer +0, k +0), (+8, +0), (+0, +8), (+8, +8), the order of the
// fragment's registers; an outer-contiguous slice is read transposed.
template <int EDGE>
__device__ __forceinline__ void tc_frag_a(unsigned a[4], const unsigned short* s, bool k_major,
                                          int o, int ks, int lane) {
    if (k_major) {
        ldmatrix_x4(a, s + kmaj_at(o + lane % 8 + (lane / 8) % 2 * 8, ks / 8 + lane / 16));
    } else {
        ldmatrix_x4_trans(
            a, s + omaj_at<EDGE>(ks + lane / 16 * 8 + lane % 8, o / 8 + (lane / 8) % 2));
    }
}

// The B fragments of two adjacent n8 blocks (16 x 16 at outer o, k ks) into b[2][2]:
// matrices (outer +0, k +0), (+0, +8), (+8, +0), (+8, +8).
template <int EDGE>
__device__ __forceinline__ void tc_frag_b(unsigned b[2][2], const unsigned short* s,
                                          bool k_major, int o, int ks, int lane) {
    unsigned r[4];
    if (k_major) {
        ldmatrix_x4(r, s + kmaj_at(o + lane % 8 + lane / 16 * 8, ks / 8 + (lane / 8) % 2));
    } else {
        ldmatrix_x4_trans(
            r, s + omaj_at<EDGE>(ks + (lane / 8) % 2 * 8 + lane % 8, o / 8 + lane / 16));
    }
    b[0][0] = r[0];
    b[0][1] = r[1];
    b[1][0] = r[2];
    b[1][1] = r[3];
}

// acc += the warp's (16*MI) x 32 share of one slice held in stage buffers sa, sb, at outer
// offsets wm (rows of C) and wn (columns of C) within the tile: MI m16 blocks by 4 n8 blocks
// of mma.sync per 16 of k.
template <int EDGE, int MI>
__device__ __forceinline__ void tc_compute_slice(float acc[MI][4][4], const unsigned short* sa,
                                                 const unsigned short* sb, bool a_k_major,
                                                 bool b_k_major, int wm, int wn, int lane) {
    UNROLL
    for (int ks = 0; ks < TC_BK; ks += 16) {
        unsigned af[MI][4], bfr[4][2];
        UNROLL
        for (int i = 0; i < MI; ++i) {
            tc_frag_a<EDGE>(af[i], sa, a_k_major, wm + i * 16, ks, lane);
        }
        UNROLL
        for (int j = 0; j < 2; ++j) {
            tc_frag_b<EDGE>(&bfr[2 * j], sb, b_k_major, wn + j * 16, ks, lane);
        }
        UNROLL
        for (int i = 0; i < MI; ++i) {
            UNROLL
            for (int j = 0; j < 4; ++j) {
                mma_bf16_16816(acc[i][j], af[i], bfr[j]);
            }
        }
    }
}

#endif

#endif
