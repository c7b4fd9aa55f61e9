// The probe's part for gemm_bf16_wgmma (kernels/gemm_wgmma.cu), included by probe.cu inside
// its anonymous namespace. What the backend will do at each launch is done here by hand:
// the two tensor maps encoded by the driver's cuTensorMapEncodeTiled (reached through
// cudaGetDriverEntryPoint, so the probe links nothing more than cudart and cuBLAS), the
// dynamic shared memory attribute set, and the kernel launched with the maps as its last two
// arguments (kernels/ABI.md). The maps are the real CUtensorMap of cuda.h: the kernel's own
// TensorMap only declares the size and alignment it is passed with.
//
// Every (shape, layout) is one row. A row fails with its reason (the encode's error, the
// launch's, the kernel's, or an error over tolerance against cuBLAS) and the next row runs;
// an error that poisons the CUDA context (a trap, an illegal address) ends the wgmma part
// with a note, the rows before it kept. A launch that never finishes (an mbarrier phase that
// never completes spins forever on the GPU) cannot be stopped from the host: a watchdog then
// writes the report, that row failed as a hang, and ends the process, which frees the GPU.

const double WGMMA_HANG_S = 20.0;  // a row's whole work takes well under a second
const int WGMMA_BLOCK = WG_THREADS;
const int WGMMA_SMEM = WG_SMEM_BYTES + 1024;  // the kernel aligns its block itself

static_assert(sizeof(CUtensorMap) == sizeof(TensorMap), "the kernel's TensorMap is a CUtensorMap");
static_assert(alignof(CUtensorMap) % alignof(TensorMap) == 0,
              "a CUtensorMap is at least as aligned as the kernel's TensorMap");

typedef CUresult (*EncodeTiledFn)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                  const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                  const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                  CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
typedef CUresult (*ErrorNameFn)(CUresult, const char**);

// A driver function by name, through the runtime (the probe does not link libcuda).
void* driver_entry(const char* name) {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t e =
        cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t e = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &found);
#endif
    if (e != cudaSuccess || found != cudaDriverEntryPointSuccess || !fn) {
        throw Failure(std::string("the driver gave no ") + name + " (" + cudaGetErrorString(e) +
                      ", query result " + std::to_string((int)found) + ")");
    }
    return fn;
}

// Why the TMA cannot take this layout's operands (their rows must lie a multiple of 16
// bytes apart: the leading dimension a multiple of 8), or empty. Buffers from cudaMalloc
// meet the 16-byte alignment of the base.
std::string wgmma_refusal(Shape s, int ta, int tb) {
    const int a_row = ta ? s.m : s.k, b_row = tb ? s.k : s.n;
    if (a_row % 8) return "A's rows are " + std::to_string(2 * a_row) + " bytes apart";
    if (b_row % 8) return "B's rows are " + std::to_string(2 * b_row) + " bytes apart";
    return std::string();
}

// One operand's map as kernels/ABI.md and src/device/cuda/tma.rs give it: storage `rows` x
// `cols` (row-major), dimension 0 the contiguous one, the k extent clipped to k_hi;
// k-contiguous storage has dims (k_hi, rows) and boxes of 64 x 128, outer-contiguous storage
// dims (cols, k_hi) and boxes of 64 x 64.
struct MapShape {
    cuuint64_t dims[2], stride;
    cuuint32_t box[2];
};

MapShape map_shape(int rows, int cols, bool k_major, int k_hi) {
    MapShape p;
    p.stride = std::max<cuuint64_t>(16, (cuuint64_t)cols * 2);
    const cuuint64_t kd = (cuuint64_t)std::max(1, k_hi);
    p.dims[0] = k_major ? kd : (cuuint64_t)std::max(1, cols);
    p.dims[1] = k_major ? (cuuint64_t)std::max(1, rows) : kd;
    p.box[0] = 64;
    p.box[1] = k_major ? 128 : 64;
    return p;
}

struct Encoder {
    EncodeTiledFn encode = nullptr;
    ErrorNameFn error_name = nullptr;

    CUtensorMap map(const char* operand, const void* base, const MapShape& p) const {
        CUtensorMap m;
        const cuuint32_t elem[2] = {1, 1};
        const CUresult r =
            encode(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), p.dims,
                   &p.stride, p.box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                   CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                   CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        if (r != CUDA_SUCCESS) {
            const char* name = nullptr;
            if (!error_name || error_name(r, &name) != CUDA_SUCCESS || !name) name = "?";
            char b[256];
            std::snprintf(b, sizeof b,
                          "cuTensorMapEncodeTiled for %s: %s (%d); dims (%llu, %llu), stride "
                          "%llu bytes, box (%u, %u)",
                          operand, name, (int)r, (unsigned long long)p.dims[0],
                          (unsigned long long)p.dims[1], (unsigned long long)p.stride, p.box[0],
                          p.box[1]);
            throw Failure(b);
        }
        return m;
    }
};

// One launch of gemm_bf16_wgmma over the k range [k_begin, k_end): maps encoded for it.
struct WgmmaLaunch {
    CUtensorMap map_a, map_b;
    int k_begin, k_end;
};

WgmmaLaunch wgmma_prepare(const Encoder& enc, const unsigned short* a, const unsigned short* b,
                          Shape s, int ta, int tb, int k_begin, int k_end) {
    const int k_hi = std::min(k_end, s.k);
    WgmmaLaunch l;
    l.map_a = enc.map("A", a, ta ? map_shape(s.k, s.m, false, k_hi)
                                 : map_shape(s.m, s.k, true, k_hi));
    l.map_b = enc.map("B", b, tb ? map_shape(s.n, s.k, true, k_hi)
                                 : map_shape(s.k, s.n, false, k_hi));
    l.k_begin = k_begin;
    l.k_end = k_end;
    return l;
}

void wgmma_launch(const WgmmaLaunch& l, const unsigned short* a, const unsigned short* b,
                  float* c, Shape s, int ta, int tb, float alpha, float beta, int max_ctas,
                  cudaStream_t st, const Epi& ep = Epi()) {
    int m = s.m, n = s.n, k = s.k, k_begin = l.k_begin, k_end = l.k_end, tile_begin = 0;
    int tile_end = ((m + 127) / 128) * ((n + 127) / 128);
    const int grid = std::max(1, std::min(tile_end, max_ctas));
    CUtensorMap map_a = l.map_a, map_b = l.map_b;
    const float* bias = ep.bias;
    int relu = ep.relu;
    unsigned short* c_bf16 = ep.c_bf16;
    void* args[] = {&a,     &b,     &c,     &m,      &n,     &k,     &ta,
                    &tb,    &alpha, &beta,  &tile_begin, &tile_end, &k_begin, &k_end,
                    &bias,  &relu,  &c_bf16, &map_a,  &map_b};
    cuda_ok(cudaLaunchKernel((const void*)gemm_bf16_wgmma, dim3(grid), dim3(WGMMA_BLOCK), args,
                             WGMMA_SMEM, st),
            "launch " WGMMA_NAME);
}

// Ends the process when a row's work has not finished `seconds` after it was armed, first
// handing the row (failed as a hang) to `on_hang`, which writes the report.
class Watchdog {
  public:
    explicit Watchdog(std::function<void(const Row&)> on_hang)
        : on_hang_(std::move(on_hang)), thread_([this] { loop(); }) {}
    ~Watchdog() {
        {
            std::lock_guard<std::mutex> g(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    void arm(double seconds, const Row& row) {
        std::lock_guard<std::mutex> g(mu_);
        deadline_ = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds((long long)(seconds * 1000));
        row_ = row;
        seconds_ = seconds;
        armed_ = true;
        cv_.notify_all();
    }
    void disarm() {
        std::lock_guard<std::mutex> g(mu_);
        armed_ = false;
    }

  private:
    void loop() {
        std::unique_lock<std::mutex> g(mu_);
        while (!stop_) {
            if (!armed_) {
                cv_.wait(g);
                continue;
            }
            cv_.wait_until(g, deadline_);
            if (stop_ || !armed_ || std::chrono::steady_clock::now() < deadline_) continue;
            Row row = row_;
            char b[200];
            std::snprintf(b, sizeof b,
                          "did not finish within %.0f s: the kernel hung (or a CUDA call waited "
                          "on it); the probe ended here so that the GPU is freed",
                          seconds_);
            row.reason = b;
            row.pass = false;
            g.unlock();
            on_hang_(row);
            std::_Exit(1);
        }
    }

    std::mutex mu_;
    std::condition_variable cv_;
    std::chrono::steady_clock::time_point deadline_;
    Row row_{};
    double seconds_ = 0.0;
    bool armed_ = false, stop_ = false;
    std::function<void(const Row&)> on_hang_;
    std::thread thread_;  // last: started once the members above exist
};

// What the wgmma part needs from probe.cu: where rows go (under `mu`, which the watchdog's
// report also takes), the report's notes, and the stream.
struct WgmmaCtx {
    std::vector<Row>& rows;
    std::vector<std::string>& notes;
    std::mutex& mu;
    Watchdog& dog;
    cudaStream_t st;
    Encoder enc;
    int max_ctas = 1;
    bool poisoned = false;  // a CUDA error left the context unusable

    void record(const Row& r) {
        std::lock_guard<std::mutex> g(mu);
        rows.push_back(r);
    }
    void note(const std::string& line) {
        std::lock_guard<std::mutex> g(mu);
        notes.push_back(line);
    }
};

// Why gemm_bf16_wgmma cannot run here, or empty.
std::string wgmma_unavailable(const cudaDeviceProp& prop) {
#ifndef PROBE_SM90A
    (void)prop;
    return "the probe was built without sm_90a (probe-build.sh builds it so only for sm_90; "
           "see probe-build)";
#else
    if (prop.major != 9 || prop.minor != 0)
        return "it needs an sm_90 GPU; this one is sm_" + std::to_string(prop.major) +
               std::to_string(prop.minor);
    if ((int)prop.sharedMemPerBlockOptin < WGMMA_SMEM)
        return "it needs " + std::to_string(WGMMA_SMEM) + " bytes of shared memory a block; " +
               "this GPU allows " + std::to_string(prop.sharedMemPerBlockOptin);
    return std::string();
#endif
}

// Sets up the part: the driver's functions, the shared-memory attribute, the grid bound.
// Returns why it cannot run, or empty.
std::string wgmma_setup(WgmmaCtx& cx, const cudaDeviceProp& prop) {
    std::string why = wgmma_unavailable(prop);
    if (!why.empty()) return why;
    try {
        cx.enc.encode = (EncodeTiledFn)driver_entry("cuTensorMapEncodeTiled");
        cx.enc.error_name = (ErrorNameFn)driver_entry("cuGetErrorName");
        cuda_ok(cudaFuncSetAttribute((const void*)gemm_bf16_wgmma,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, WGMMA_SMEM),
                "cudaFuncSetAttribute(max dynamic shared memory)");
        int per_sm = 0;
        cuda_ok(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                    &per_sm, (const void*)gemm_bf16_wgmma, WGMMA_BLOCK, WGMMA_SMEM),
                "occupancy of " WGMMA_NAME);
        if (per_sm < 1) return "the occupancy calculator fits no block of it on an SM";
        cx.max_ctas = per_sm * prop.multiProcessorCount;
    } catch (const Failure& e) {
        return e.what();
    }
    return std::string();
}

// After a row's CUDA error: true when the context is unusable (a sticky error), which ends
// the part. A launch refused for its arguments is not sticky.
bool context_lost(WgmmaCtx& cx, const std::string& what) {
    cudaGetLastError();
    const cudaError_t e = cudaDeviceSynchronize();
    if (e == cudaSuccess) return false;
    cx.poisoned = true;
    cx.note(WGMMA_NAME ": stopped after a CUDA error that leaves the context unusable (" +
            what + "; now " + cudaGetErrorString(e) + "); the rows after it did not run");
    return true;
}

// Fills C with NaN, so that an element the kernel does not write fails the comparison.
void poison(float* c, size_t n, cudaStream_t st) {
    cuda_ok(cudaMemsetAsync(c, 0xff, n * 4, st), "cudaMemsetAsync");
}

// One timed row: the check against cuBLAS (on the first launch and again on the last timed
// one), then the median times of the kernel, cuBLAS and gemm_bf16_128.
void wgmma_timed_row(cublasHandle_t h, WgmmaCtx& cx, int sms, Buffers& buf, Shape s, int ta,
                     int tb, int reps, Row& row) {
    const size_t mn = (size_t)s.m * s.n;
    const double flop = 2.0 * s.m * s.n * s.k;
    const WgmmaLaunch l = wgmma_prepare(cx.enc, buf.a16, buf.b16, s, ta, tb, 0, s.k);
    auto ours = [&] {
        wgmma_launch(l, buf.a16, buf.b16, buf.c, s, ta, tb, 1.0f, 0.0f, cx.max_ctas, cx.st);
    };
    poison(buf.c, mn, cx.st);
    ours();
    cuda_ok(cudaStreamSynchronize(cx.st), WGMMA_NAME);
    cublas_gemm(h, Precision::BF16, buf.a16, buf.b16, buf.ref, s.m, s.n, s.k, ta, tb);
    cuda_ok(cudaStreamSynchronize(cx.st), "cuBLAS");
    const std::vector<float> want = download(buf.ref, mn);
    row.error = scaled_error(download(buf.c, mn), want);
    poison(buf.c, mn, cx.st);
    row.ours_tflops = flop / (median_ms(reps, cx.st, ours) * 1e-3) / 1e12;
    cuda_ok(cudaStreamSynchronize(cx.st), WGMMA_NAME);
    row.error = std::max(row.error, scaled_error(download(buf.c, mn), want));
    row.cublas_tflops = flop / (median_ms(reps, cx.st, [&] {
                                    cublas_gemm(h, Precision::BF16, buf.a16, buf.b16, buf.ref,
                                                s.m, s.n, s.k, ta, tb);
                                }) * 1e-3) /
                        1e12;
    const Kernel& k128 = KERNELS[3];
    const int ctas128 = max_ctas(k128, sms);
    row.bf16_128_tflops = flop / (median_ms(reps, cx.st, [&] {
                                      launch(k128, buf.a16, buf.b16, buf.c, s.m, s.n, s.k, ta,
                                             tb, 1.0f, 0.0f, ctas128, cx.st);
                                  }) * 1e-3) /
                          1e12;
    cuda_ok(cudaStreamSynchronize(cx.st), "synchronize");
    row.pass = row.error <= row.tolerance;
}

// Runs one row under the watchdog; false once the context is lost.
template <typename F>
bool wgmma_row(WgmmaCtx& cx, Row row, F body) {
    cx.dog.arm(WGMMA_HANG_S, row);
    bool lost = false;
    try {
        body(row);
    } catch (const std::exception& e) {
        row.pass = false;
        row.reason = e.what();
        lost = context_lost(cx, row.reason);
    }
    cx.dog.disarm();
    cx.record(row);
    return !lost;
}

// The timed rows: every shape of --sizes in every layout the TMA takes.
void wgmma_rows(cublasHandle_t h, WgmmaCtx& cx, int sms, const std::vector<Shape>& sizes,
                int reps) {
    std::vector<std::string> refused;
    for (Shape s : sizes) {
        std::unique_ptr<Buffers> buf;
        for (int ta = 0; ta < 2 && !cx.poisoned; ++ta)
            for (int tb = 0; tb < 2 && !cx.poisoned; ++tb) {
                const std::string why = wgmma_refusal(s, ta, tb);
                if (!why.empty()) {
                    refused.push_back(std::to_string(s.m) + "x" + std::to_string(s.n) + "x" +
                                      std::to_string(s.k) + (ta ? " T" : " N") +
                                      (tb ? "T" : "N") + " (" + why + ")");
                    continue;
                }
                Row row{s, ta, tb, Precision::BF16, WGMMA_NAME};
                row.tolerance = tolerance(Precision::BF16, false);
                wgmma_row(cx, row, [&](Row& r) {
                    if (!buf) buf.reset(new Buffers(s.m, s.n, s.k, 1));
                    wgmma_timed_row(h, cx, sms, *buf, s, ta, tb, reps, r);
                });
            }
        if (cx.poisoned) return;
        std::fprintf(stderr, "probe: %s %dx%dx%d done\n", WGMMA_NAME, s.m, s.n, s.k);
    }
    if (!refused.empty()) {
        std::string line = WGMMA_NAME ": not run where the TMA cannot take an operand (the "
                                      "backend runs gemm_bf16/gemm_bf16_128 there): ";
        for (size_t i = 0; i < refused.size(); ++i) line += (i ? ", " : "") + refused[i];
        cx.note(line);
    }
}

// One --small row: C0 from a pattern, the product as one launch or (split) as launches over
// k ranges [0, 64) and [64, k) (maps clipped at each range's end), the epilogue (when
// trans_a == trans_b) on the launch that ends k, as the backend would; against the host
// reference.
void wgmma_small_row(WgmmaCtx& cx, Shape s, int ta, int tb, bool split, unsigned seed, Row& r) {
    Buffers buf(s.m, s.n, s.k, seed);
    EpiBuffers eb(s.m, s.n);
    const bool fused = ta == tb;
    std::vector<float> c0((size_t)s.m * s.n);
    for (size_t i = 0; i < c0.size(); ++i) c0[i] = (float)((i % 7) - 3) * 0.25f;
    cuda_ok(cudaMemcpy(buf.c, c0.data(), c0.size() * 4, cudaMemcpyHostToDevice), "upload");
    const int cut = split ? 64 : s.k;
    const WgmmaLaunch l0 = wgmma_prepare(cx.enc, buf.a16, buf.b16, s, ta, tb, 0, cut);
    const Epi ep = fused ? eb.epi() : Epi();
    wgmma_launch(l0, buf.a16, buf.b16, buf.c, s, ta, tb, 0.5f, 0.25f, 3, cx.st,
                 split ? Epi() : ep);
    if (split) {
        const WgmmaLaunch l1 = wgmma_prepare(cx.enc, buf.a16, buf.b16, s, ta, tb, cut, s.k);
        wgmma_launch(l1, buf.a16, buf.b16, buf.c, s, ta, tb, 0.5f, 1.0f, 3, cx.st, ep);
        r.variant = "split-K over k ranges [0, 64) and [64, k)";
    }
    cuda_ok(cudaStreamSynchronize(cx.st), WGMMA_NAME);
    std::vector<float> ha = buf.ha, hb = buf.hb;
    for (auto& v : ha) v = from_bf16(to_bf16(v));
    for (auto& v : hb) v = from_bf16(to_bf16(v));
    small_verdict(r, download(buf.c, c0.size()), host_gemm(ha, hb, c0, s, ta, tb, 0.5f, 0.25f),
                  fused ? &eb : nullptr);
}

// --small: odd shapes the TMA takes, alpha and beta, a grid of 3 (CTAs with several tiles),
// the epilogue on half the layouts, against the host reference; the shapes with k over one
// slice also as split-K.
void wgmma_small_rows(WgmmaCtx& cx) {
    const Shape shapes[] = {{64, 64, 64}, {136, 200, 72}, {8, 136, 200}};
    unsigned seed = 300;
    for (Shape s : shapes)
        for (int split = 0; split < (s.k > 64 ? 2 : 1); ++split)
            for (int ta = 0; ta < 2 && !cx.poisoned; ++ta)
                for (int tb = 0; tb < 2 && !cx.poisoned; ++tb) {
                    Row row{s, ta, tb, Precision::BF16, WGMMA_NAME};
                    row.tolerance = tolerance(Precision::BF16, true);
                    const unsigned sd = seed++;
                    wgmma_row(cx, row, [&](Row& r) {
                        wgmma_small_row(cx, s, ta, tb, split != 0, sd, r);
                    });
                }
}

// Headline lines for the wgmma rows: how many held, and at the largest shape, the layouts'
// spread beside gemm_bf16_128 and cuBLAS.
std::vector<std::string> wgmma_headline(const std::vector<Row>& rows, bool small) {
    std::vector<std::string> out;
    int n = 0, failed = 0;
    const Row* last = nullptr;
    for (const Row& r : rows)
        if (!std::strcmp(r.kernel, WGMMA_NAME)) {
            ++n;
            failed += !r.pass;
            last = &r;
        }
    if (!n) return out;
    char b[360];
    std::snprintf(b, sizeof b, "%s: %d rows against %s, %d failed", WGMMA_NAME, n,
                  small ? "a host reference" : "cuBLAS", failed);
    out.push_back(b);
    if (small) return out;
    const Row* lo = nullptr;
    const Row* hi = nullptr;
    layout_spread(rows, WGMMA_NAME, Precision::BF16, last->s, lo, hi);
    std::snprintf(b, sizeof b,
                  "%dx%dx%d %s: %.1f-%.1f TFLOP/s across layouts, gemm_bf16_128 %.1f, cuBLAS "
                  "%.1f (wgmma/cuBLAS %.2f, wgmma/gemm_bf16_128 %.2f at best layout)",
                  last->s.m, last->s.n, last->s.k, WGMMA_NAME, lo->ours_tflops, hi->ours_tflops,
                  hi->bf16_128_tflops, hi->cublas_tflops, hi->ours_tflops / hi->cublas_tflops,
                  hi->ours_tflops / hi->bf16_128_tflops);
    out.push_back(b);
    return out;
}
