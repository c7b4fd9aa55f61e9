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

// Writes alpha * acc (+ beta * C) to C[row][col] if inside C.
__device__ __forceinline__ void store_c(float* c, int m, int n, int row, int col, float acc,
                                        float alpha, float beta) {
    if (row < m && col < n) {
        float* p = c + (long long)row * n + col;
        float v = alpha * acc;
        if (beta != 0.0f) {
            v += beta * *p;
        }
        *p = v;
    }
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

#endif

#endif
