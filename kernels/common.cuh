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

#endif
