// The project's GEMM kernels (kernels/gemm*.cu, compiled in as CUDA C++) against cuBLAS on
// this GPU: every layout (op(A), op(B) each plain or transposed), f32, TF32 and bf16, timed
// with CUDA events (median of repetitions), results checked against cuBLAS. Then, on an sm_90
// GPU with the probe built for sm_90a, gemm_bf16_wgmma (probe_wgmma.cuh): tensor maps from
// the driver, checked against cuBLAS and timed beside it and gemm_bf16_128, one row per shape
// and layout, a failure reported on its row. With --small it runs the kernels alone on small,
// odd shapes against a host reference (no cuBLAS), which is what compute-sanitizer is
// pointed at.
//
// Build (scripts/device-check/probe-build.sh does this on the device):
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -DPROBE_SM90A -Iprobe \
//        -o probe probe/probe.cu -lcublas
// where probe/ holds this file, probe_wgmma.cuh, the gemm*.cu kernels and common.cuh.
//
//   probe [--sizes 8x1024x784,32x1024x1024,...,8192] [--reps 5] [--json FILE] [--small]
//         [--skip-wgmma]
//
// Writes one JSON document (the device check's section format: section, status, reason,
// headline, figures) to --json, else stdout; exits 0 when every check held, 1 when one did
// not, 2 on bad arguments or a CUDA error outside the wgmma rows.

#include <cublas_v2.h>
#include <cuda.h>  // CUtensorMap and its enums only: the driver is reached through cudart
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if !defined(__CUDA_ARCH__)
// nvcc's host pass parses the kernels' bodies too, with the branches the host emulation
// takes (kernels/emu/cuda_emu.h); declare what they name. Never called: device code is
// compiled from the other branch.
__device__ void emu_ldmatrix_x4(unsigned r[4], const unsigned short* p);
__device__ void emu_mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2]);
__device__ void emu_ldmatrix_x4_trans(unsigned r[4], const unsigned short* p);
__device__ void emu_cp_async_16(void* dst, const void* src, int src_size);
__device__ void emu_cp_async_commit();
__device__ void emu_cp_async_wait(int n);
namespace emu {
__device__ unsigned shared_offset(const void* p, const char* what);
}
__device__ void emu_mbarrier_init(void* bar, unsigned count);
__device__ unsigned long long emu_mbarrier_arrive(void* bar);
__device__ void emu_mbarrier_arrive_expect_tx(void* bar, unsigned bytes);
__device__ bool emu_mbarrier_try_wait_parity(void* bar, unsigned parity);
__device__ void emu_tma_load_2d(void* dst, const void* map, int c0, int c1, void* bar);
__device__ void emu_wgmma_fence();
__device__ void emu_wgmma_bf16(float* d, int n, unsigned long long da, unsigned long long db,
                               int scale_d, int trans_a, int trans_b);
__device__ void emu_wgmma_commit();
__device__ void emu_wgmma_wait(int n);
#endif
#include "gemm.cu"
#include "gemm_large.cu"
#include "gemm_small.cu"
#include "gemm_wgmma.cu"

namespace {

struct Failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

void cuda_ok(cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
        throw Failure(std::string(what) + ": " + cudaGetErrorString(e));
    }
}

void blas_ok(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS) {
        throw Failure(std::string(what) + ": cuBLAS status " + std::to_string((int)s));
    }
}

// One of the project's GEMM kernels. Its parameter list is kernels/ABI.md's; when the ABI
// changes, this is the one place to follow it.
struct Kernel {
    const char* name;
    const void* fn;
    int block;  // threads per CTA, fixed by the ABI
    bool bf16;
    int tile_m, tile_n;  // output tile, fixed by the ABI (tile numbering)
};

const Kernel KERNELS[] = {
    {"gemm_f32", (const void*)gemm_f32, 256, false, 64, 64},
    {"gemm_bf16", (const void*)gemm_bf16, 128, true, 64, 64},
    {"gemm_bf16_simt", (const void*)gemm_bf16_simt, 256, true, 64, 64},
    {"gemm_bf16_128", (const void*)gemm_bf16_128, 256, true, 128, 128},
    {"gemm_bf16_small_m", (const void*)gemm_bf16_small_m, 128, true, 16, 64},
};
// gemm_bf16_small_m is timed only up to this many rows of C (its tiles are 16 rows high).
const int SMALL_M_MAX = 256;
// gemm_bf16_wgmma runs apart from the table (probe_wgmma.cuh): it takes tensor maps.
#define WGMMA_NAME "gemm_bf16_wgmma"

// The GEMM epilogue of a launch (kernels/ABI.md): a bias by column (n elements on the
// device), ReLU, a bf16 copy of C (m x n on the device); by default none, the plain product.
struct Epi {
    const float* bias = nullptr;
    int relu = 0;
    unsigned short* c_bf16 = nullptr;
};

// C = alpha * op(A) * op(B) + beta * C (then the epilogue) on every tile in one launch of at
// most `max_ctas` CTAs (the kernels loop over tiles, so any grid is correct).
void launch(const Kernel& kern, const void* a, const void* b, float* c, int m, int n, int k,
            int ta, int tb, float alpha, float beta, int max_ctas, cudaStream_t s,
            const Epi& ep = Epi()) {
    int tile_begin = 0;
    int tile_end = ((m + kern.tile_m - 1) / kern.tile_m) * ((n + kern.tile_n - 1) / kern.tile_n);
    int k_begin = 0;  // the whole inner dimension in one launch (ABI.md: k range)
    int k_end = k;
    int grid = std::max(1, std::min(tile_end, max_ctas));
    const float* bias = ep.bias;
    int relu = ep.relu;
    unsigned short* c_bf16 = ep.c_bf16;
    void* args[] = {&a,     &b,          &c,        &m,       &n,     &k,    &ta,
                    &tb,    &alpha,      &beta,     &tile_begin, &tile_end, &k_begin, &k_end,
                    &bias,  &relu,       &c_bf16};
    cuda_ok(cudaLaunchKernel(kern.fn, dim3(grid), dim3(kern.block), args, 0, s), kern.name);
}

// Resident CTAs of `kern` on the whole GPU: what a lane at share 1 may launch.
int max_ctas(const Kernel& kern, int sms) {
    int per_sm = 0;
    cuda_ok(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern.fn, kern.block, 0),
            "occupancy");
    return std::max(1, per_sm) * sms;
}

enum class Precision { F32, TF32, BF16 };

const char* precision_name(Precision p) {
    return p == Precision::F32 ? "f32" : p == Precision::TF32 ? "tf32" : "bf16";
}

// Row-major C (m x n) = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS gets B's
// buffer first. A row-major buffer read column-major is its transpose, so a plain operand is
// CUBLAS_OP_N and a transposed one CUBLAS_OP_T; the leading dimension is the buffer's row.
void cublas_gemm(cublasHandle_t h, Precision p, const void* a, const void* b, float* c, int m,
                 int n, int k, int ta, int tb) {
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t in = p == Precision::BF16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t compute =
        p == Precision::TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    blas_ok(cublasGemmEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m,
                         k, &alpha, b, in, tb ? k : n, a, in, ta ? m : k, &beta, c, CUDA_R_32F, n,
                         compute, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx");
}

unsigned short to_bf16(float f) {  // round to nearest even, as the kernels' f32_to_bf16
    unsigned u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float from_bf16(unsigned short h) {
    unsigned u = (unsigned)h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Device buffers of one shape: f32 and bf16 operands, our C and the reference C.
struct Buffers {
    float *a = nullptr, *b = nullptr, *c = nullptr, *ref = nullptr;
    unsigned short *a16 = nullptr, *b16 = nullptr;
    std::vector<float> ha, hb;  // host copies (bf16-rounded for the bf16 kernels on demand)

    Buffers(int m, int n, int k, unsigned seed) : ha((size_t)m * k), hb((size_t)k * n) {
        unsigned long long x = 0x9E3779B97F4A7C15ull * (seed + 1);
        auto next = [&x]() {  // uniform in [-1, 1)
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            return (float)((x >> 40) * (1.0 / 8388608.0) - 1.0);
        };
        for (auto& v : ha) v = next();
        for (auto& v : hb) v = next();
        std::vector<unsigned short> ha16(ha.size()), hb16(hb.size());
        std::transform(ha.begin(), ha.end(), ha16.begin(), to_bf16);
        std::transform(hb.begin(), hb.end(), hb16.begin(), to_bf16);
        const size_t mn = (size_t)m * n;
        cuda_ok(cudaMalloc((void**)&a, ha.size() * 4), "cudaMalloc");
        cuda_ok(cudaMalloc((void**)&b, hb.size() * 4), "cudaMalloc");
        cuda_ok(cudaMalloc((void**)&c, mn * 4), "cudaMalloc");
        cuda_ok(cudaMalloc((void**)&ref, mn * 4), "cudaMalloc");
        cuda_ok(cudaMalloc((void**)&a16, ha16.size() * 2), "cudaMalloc");
        cuda_ok(cudaMalloc((void**)&b16, hb16.size() * 2), "cudaMalloc");
        cuda_ok(cudaMemcpy(a, ha.data(), ha.size() * 4, cudaMemcpyHostToDevice), "upload");
        cuda_ok(cudaMemcpy(b, hb.data(), hb.size() * 4, cudaMemcpyHostToDevice), "upload");
        cuda_ok(cudaMemcpy(a16, ha16.data(), ha16.size() * 2, cudaMemcpyHostToDevice), "upload");
        cuda_ok(cudaMemcpy(b16, hb16.data(), hb16.size() * 2, cudaMemcpyHostToDevice), "upload");
    }
    ~Buffers() {
        for (void* p : {(void*)a, (void*)b, (void*)c, (void*)ref, (void*)a16, (void*)b16}) {
            cudaFree(p);
        }
    }
    Buffers(const Buffers&) = delete;
    Buffers& operator=(const Buffers&) = delete;
};

// Median milliseconds of `reps` runs of `f` (after one untimed), timed by events on `s`.
template <typename F>
double median_ms(int reps, cudaStream_t s, F f) {
    f();
    cudaEvent_t t0, t1;
    cuda_ok(cudaEventCreate(&t0), "cudaEventCreate");
    cuda_ok(cudaEventCreate(&t1), "cudaEventCreate");
    std::vector<double> ms;
    for (int r = 0; r < reps; ++r) {
        cuda_ok(cudaEventRecord(t0, s), "cudaEventRecord");
        f();
        cuda_ok(cudaEventRecord(t1, s), "cudaEventRecord");
        cuda_ok(cudaEventSynchronize(t1), "cudaEventSynchronize");
        float e = 0.0f;
        cuda_ok(cudaEventElapsedTime(&e, t0, t1), "cudaEventElapsedTime");
        ms.push_back(e);
    }
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

// max |ours - ref| / rms(ref), or infinity when a NaN or infinity appears in ours.
template <typename R>
double scaled_error(const std::vector<float>& ours, const std::vector<R>& ref) {
    double sq = 0.0, worst = 0.0;
    for (double r : ref) sq += r * r;
    const double rms = std::sqrt(sq / std::max<size_t>(1, ref.size()));
    for (size_t i = 0; i < ours.size(); ++i) {
        if (!std::isfinite(ours[i])) return INFINITY;
        worst = std::max(worst, std::fabs((double)ours[i] - (double)ref[i]));
    }
    return worst / std::max(rms, 1e-30);
}

std::vector<float> download(const float* d, size_t n) {
    std::vector<float> h(n);
    cuda_ok(cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost), "download");
    return h;
}

struct Shape {
    int m, n, k;
};

struct Row {  // one kernel, one layout, one shape
    Shape s;
    int ta, tb;
    Precision p;
    const char* kernel;
    double ours_tflops = NAN, cublas_tflops = NAN, error = NAN, tolerance = NAN;
    bool pass = false;
    bool epilogue = false;         // run with bias, ReLU and a bf16 copy of C (--small)
    std::string variant;           // how the launch was cut, when it was (wgmma --small)
    std::string reason;            // why a row failed other than by its error (wgmma rows)
    double bf16_128_tflops = NAN;  // gemm_bf16_128 on the same product (wgmma rows)
};

// Tolerance on max |ours - reference| / rms(reference). TF32 rounds the inputs to 10-bit
// mantissas, so cuBLAS's TF32 result differs from an f32 product by about 2^-11 per term.
double tolerance(Precision p, bool host_reference) {
    if (host_reference) return p == Precision::F32 ? 1e-5 : 1e-4;
    return p == Precision::F32 ? 1e-4 : p == Precision::TF32 ? 2e-2 : 1e-3;
}

// The timed comparison of one shape in one layout.
void compare(cublasHandle_t h, cudaStream_t st, int sms, Buffers& buf, Shape s, int ta, int tb,
             int reps, std::vector<Row>& rows) {
    const double flop = 2.0 * s.m * s.n * s.k;
    const size_t mn = (size_t)s.m * s.n;
    struct Plan {
        Precision p;
        const Kernel& kern;
    };
    const Plan plans[] = {{Precision::F32, KERNELS[0]},
                          {Precision::TF32, KERNELS[0]},
                          {Precision::BF16, KERNELS[1]},
                          {Precision::BF16, KERNELS[2]},
                          {Precision::BF16, KERNELS[3]},
                          {Precision::BF16, KERNELS[4]}};
    for (const Plan& plan : plans) {
        if (plan.kern.tile_m == 16 && s.m > SMALL_M_MAX) continue;
        Row row{s, ta, tb, plan.p, plan.kern.name};
        const bool bf = plan.kern.bf16;
        const void* a = bf ? (const void*)buf.a16 : (const void*)buf.a;
        const void* b = bf ? (const void*)buf.b16 : (const void*)buf.b;
        const int ctas = max_ctas(plan.kern, sms);
        auto ours = [&] {
            launch(plan.kern, a, b, buf.c, s.m, s.n, s.k, ta, tb, 1.0f, 0.0f, ctas, st);
        };
        auto theirs = [&] { cublas_gemm(h, plan.p, a, b, buf.ref, s.m, s.n, s.k, ta, tb); };
        row.ours_tflops = flop / (median_ms(reps, st, ours) * 1e-3) / 1e12;
        row.cublas_tflops = flop / (median_ms(reps, st, theirs) * 1e-3) / 1e12;
        cuda_ok(cudaStreamSynchronize(st), "synchronize");
        const std::vector<float> got = download(buf.c, mn), want = download(buf.ref, mn);
        row.error = scaled_error(got, want);
        row.tolerance = tolerance(plan.p, false);
        row.pass = row.error <= row.tolerance;
        rows.push_back(row);
    }
}

// Host reference (double) of alpha * op(A) op(B) + beta * C0.
std::vector<double> host_gemm(const std::vector<float>& A, const std::vector<float>& B,
                              const std::vector<float>& c0, Shape s, int ta, int tb, float alpha,
                              float beta) {
    std::vector<double> c((size_t)s.m * s.n);
    for (int i = 0; i < s.m; ++i)
        for (int j = 0; j < s.n; ++j) {
            double acc = 0.0;
            for (int p = 0; p < s.k; ++p) {
                const float x = ta ? A[(size_t)p * s.m + i] : A[(size_t)i * s.k + p];
                const float y = tb ? B[(size_t)j * s.k + p] : B[(size_t)p * s.n + j];
                acc += (double)x * y;
            }
            c[(size_t)i * s.n + j] = alpha * acc + beta * (double)c0[(size_t)i * s.n + j];
        }
    return c;
}

// Device buffers for a launch's epilogue: a bias of n values and a bf16 copy of C (NaN until
// written), with the host side of the check.
struct EpiBuffers {
    std::vector<float> bias;
    float* d_bias = nullptr;
    unsigned short* d_c16 = nullptr;
    size_t mn;

    EpiBuffers(int m, int n) : bias(n), mn((size_t)m * n) {
        for (int j = 0; j < n; ++j) bias[j] = (float)((j * 37 % 17) - 8) * 0.0625f;
        cuda_ok(cudaMalloc((void**)&d_bias, bias.size() * 4), "cudaMalloc");
        cuda_ok(cudaMalloc((void**)&d_c16, mn * 2), "cudaMalloc");
        cuda_ok(cudaMemcpy(d_bias, bias.data(), bias.size() * 4, cudaMemcpyHostToDevice),
                "upload");
        cuda_ok(cudaMemset(d_c16, 0xff, mn * 2), "cudaMemset");
    }
    ~EpiBuffers() {
        cudaFree(d_bias);
        cudaFree(d_c16);
    }
    EpiBuffers(const EpiBuffers&) = delete;
    EpiBuffers& operator=(const EpiBuffers&) = delete;

    Epi epi() const { return Epi{d_bias, 1, d_c16}; }

    // The epilogue on the host reference: the bias by column, then ReLU.
    void apply(std::vector<double>& ref) const {
        const size_t n = bias.size();
        for (size_t i = 0; i < ref.size(); ++i) ref[i] = std::max(0.0, ref[i] + bias[i % n]);
    }

    // Empty when the bf16 copy is C (the kernel's own f32 result) rounded, else where not.
    std::string check_copy(const std::vector<float>& c) const {
        std::vector<unsigned short> got(mn);
        cuda_ok(cudaMemcpy(got.data(), d_c16, mn * 2, cudaMemcpyDeviceToHost), "download");
        for (size_t i = 0; i < mn; ++i)
            if (got[i] != to_bf16(c[i]))
                return "the bf16 copy of C at element " + std::to_string(i) + " is " +
                       std::to_string(got[i]) + ", C rounded is " + std::to_string(to_bf16(c[i]));
        return std::string();
    }
};

// Fills in a --small row from its C: the error against the host reference (with the
// epilogue when `eb`), and whether the bf16 copy is C rounded.
void small_verdict(Row& row, const std::vector<float>& got, std::vector<double> want,
                   const EpiBuffers* eb) {
    if (eb) eb->apply(want);
    row.epilogue = eb != nullptr;
    row.error = scaled_error(got, want);
    row.tolerance = tolerance(row.p, true);
    if (eb) row.reason = eb->check_copy(got);
    row.pass = row.error <= row.tolerance && row.reason.empty();
}

// --small: each kernel once per layout with alpha and beta, against the host reference; the
// layouts with trans_a == trans_b also with the epilogue (bias, ReLU, a bf16 copy of C).
void small_checks(cudaStream_t st, std::vector<Row>& rows) {
    const Shape shapes[] = {{64, 64, 64}, {130, 65, 17}, {1, 70, 33}};
    unsigned seed = 100;
    for (Shape s : shapes)
        for (int ta = 0; ta < 2; ++ta)
            for (int tb = 0; tb < 2; ++tb) {
                Buffers buf(s.m, s.n, s.k, seed++);
                EpiBuffers eb(s.m, s.n);
                const bool fused = ta == tb;
                std::vector<float> c0((size_t)s.m * s.n);
                for (size_t i = 0; i < c0.size(); ++i) c0[i] = (float)((i % 7) - 3) * 0.25f;
                for (const Kernel& kern : KERNELS) {
                    cuda_ok(cudaMemcpy(buf.c, c0.data(), c0.size() * 4, cudaMemcpyHostToDevice),
                            "upload");
                    const void* a = kern.bf16 ? (const void*)buf.a16 : (const void*)buf.a;
                    const void* b = kern.bf16 ? (const void*)buf.b16 : (const void*)buf.b;
                    launch(kern, a, b, buf.c, s.m, s.n, s.k, ta, tb, 0.5f, 0.25f, 3, st,
                           fused ? eb.epi() : Epi());
                    cuda_ok(cudaStreamSynchronize(st), kern.name);
                    std::vector<float> ha = buf.ha, hb = buf.hb;
                    if (kern.bf16) {
                        for (auto& v : ha) v = from_bf16(to_bf16(v));
                        for (auto& v : hb) v = from_bf16(to_bf16(v));
                    }
                    Row row{s, ta, tb, kern.bf16 ? Precision::BF16 : Precision::F32, kern.name};
                    small_verdict(row, download(buf.c, c0.size()),
                                  host_gemm(ha, hb, c0, s, ta, tb, 0.5f, 0.25f),
                                  fused ? &eb : nullptr);
                    rows.push_back(row);
                }
            }
}

#include "probe_report.cuh"
#include "probe_wgmma.cuh"

std::vector<Shape> parse_sizes(const std::string& text) {
    std::vector<Shape> out;
    size_t start = 0;
    while (start <= text.size()) {
        const size_t end = std::min(text.find(',', start), text.size());
        const std::string item = text.substr(start, end - start);
        int m = 0, n = 0, k = 0;
        char tail = 0;
        if (std::sscanf(item.c_str(), "%dx%dx%d%c", &m, &n, &k, &tail) == 3) {
        } else if (std::sscanf(item.c_str(), "%d%c", &m, &tail) == 1) {
            n = k = m;
        } else {
            throw std::invalid_argument("--sizes: expected N or MxNxK, got '" + item + "'");
        }
        if (m < 1 || n < 1 || k < 1 || m > 32768 || n > 32768 || k > 32768)
            throw std::invalid_argument("--sizes: each extent must be 1..32768, got '" + item +
                                        "'");
        out.push_back({m, n, k});
        start = end + 1;
    }
    return out;
}

struct Args {
    std::string sizes_text =
        "8x1024x784,32x1024x1024,256x2048x2048,256x4096x4096,1024,2048,4096,4095x4097x1031,8192";
    std::string json_path;
    int reps = 5;
    bool small = false, skip_wgmma = false, report_selftest = false;
    std::vector<Shape> sizes;
};

Args parse_args(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        const bool has_value = i + 1 < argc;
        if (arg == "--small") {
            a.small = true;
        } else if (arg == "--skip-wgmma") {
            a.skip_wgmma = true;
        } else if (arg == "--report-selftest") {
            a.report_selftest = true;
        } else if (arg == "--sizes" && has_value) {
            a.sizes_text = argv[++i];
        } else if (arg == "--reps" && has_value) {
            a.reps = std::atoi(argv[++i]);
            if (a.reps < 1 || a.reps > 1000) throw std::invalid_argument("--reps: expected 1..1000");
        } else if (arg == "--json" && has_value) {
            a.json_path = argv[++i];
        } else {
            throw std::invalid_argument("unknown or incomplete argument '" + arg +
                                        "' (use --sizes, --reps, --json, --small, --skip-wgmma)");
        }
    }
    a.sizes = parse_sizes(a.sizes_text);
    return a;
}

// The wgmma part, after the other kernels' rows; false when it left the context unusable.
bool run_wgmma(const Args& a, const cudaDeviceProp& prop, cublasHandle_t h, cudaStream_t st,
               Report& rep, std::mutex& mu, Watchdog& dog) {
    WgmmaCtx cx{rep.rows, rep.notes, mu, dog, st};
    const std::string why = a.skip_wgmma ? std::string("--skip-wgmma") : wgmma_setup(cx, prop);
    if (!why.empty()) {
        cx.note(WGMMA_NAME ": not run: " + why);
        return true;
    }
    if (a.small) {
        wgmma_small_rows(cx);
    } else {
        wgmma_rows(h, cx, rep.sms, a.sizes, a.reps);
    }
    return !cx.poisoned;
}

// The other kernels' rows, then the wgmma part. A CUDA error outside the wgmma rows ends the
// run and becomes the report's error.
void run(const Args& a, Report& rep, std::mutex& mu, Watchdog& dog) {
    cudaDeviceProp prop;
    cuda_ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    rep.device = prop.name;
    rep.sms = prop.multiProcessorCount;
    cudaStream_t st;
    cuda_ok(cudaStreamCreate(&st), "cudaStreamCreate");
    cublasHandle_t h = nullptr;
    if (a.small) {
        small_checks(st, rep.rows);
    } else {
        blas_ok(cublasCreate(&h), "cublasCreate");
        blas_ok(cublasSetStream(h, st), "cublasSetStream");
        for (Shape s : a.sizes) {
            Buffers buf(s.m, s.n, s.k, 1);
            for (int ta = 0; ta < 2; ++ta)
                for (int tb = 0; tb < 2; ++tb)
                    compare(h, st, rep.sms, buf, s, ta, tb, a.reps, rep.rows);
            std::fprintf(stderr, "probe: %dx%dx%d done\n", s.m, s.n, s.k);
        }
    }
    if (!run_wgmma(a, prop, h, st, rep, mu, dog)) return;  // nothing more can be released
    if (h) cublasDestroy(h);
    cuda_ok(cudaStreamDestroy(st), "cudaStreamDestroy");
}

}  // namespace

int main(int argc, char** argv) {
    Args a;
    try {
        a = parse_args(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "probe: %s\n", e.what());
        return 2;
    }
    Report rep;
    rep.small = a.small;
    rep.reps = a.reps;
    if (a.report_selftest) {  // the report's format, checked where there is no GPU
        rep.rows = report_selftest_rows();
        rep.notes.push_back(WGMMA_NAME ": a note");
        return save_report(a.json_path, rep) ? 0 : 2;
    }
    std::mutex mu;  // rep's rows and notes, once the watchdog may read them
    Watchdog dog([&](const Row& hung) {
        std::lock_guard<std::mutex> g(mu);
        Report out = rep;
        out.rows.push_back(hung);
        std::fprintf(stderr, "probe: %s %dx%dx%d: %s\n", hung.kernel, hung.s.m, hung.s.n,
                     hung.s.k, hung.reason.c_str());
        if (!save_report(a.json_path, out))
            std::fprintf(stderr, "probe: cannot write %s\n", a.json_path.c_str());
    });
    try {
        run(a, rep, mu, dog);
    } catch (const std::exception& e) {
        rep.error = e.what();
        std::fprintf(stderr, "probe: %s\n", e.what());
    }
    std::lock_guard<std::mutex> g(mu);
    if (!save_report(a.json_path, rep)) {
        std::fprintf(stderr, "probe: cannot write %s\n", a.json_path.c_str());
        return 2;
    }
    if (!rep.error.empty()) return 2;
    for (const Row& r : rep.rows)
        if (!r.pass) return 1;
    return rep.rows.empty() ? 1 : 0;
}
