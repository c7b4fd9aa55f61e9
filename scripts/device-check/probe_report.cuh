// The probe's report (included by probe.cu inside its anonymous namespace): JSON helpers,
// and the document it writes in the device check's section format, headline included.

std::string json_num(double v) {
    if (!std::isfinite(v)) return "null";
    char b[64];
    std::snprintf(b, sizeof b, "%.6g", v);
    return b;
}

std::string json_str(const std::string& s) {
    std::string o = "\"";
    for (char ch : s) {
        if (ch == '"' || ch == '\\') o += '\\';
        if ((unsigned char)ch < 0x20) {
            o += ' ';
            continue;
        }
        o += ch;
    }
    return o + "\"";
}

// The slowest and the fastest layout of `kern` in precision `p` at shape `s` (null if none).
void layout_spread(const std::vector<Row>& rows, const char* kern, Precision p, Shape s,
                   const Row*& lo, const Row*& hi) {
    for (const Row& r : rows) {
        if (std::strcmp(r.kernel, kern) || r.p != p || r.s.m != s.m || r.s.n != s.n ||
            r.s.k != s.k)
            continue;
        if (!lo || r.ours_tflops < lo->ours_tflops) lo = &r;
        if (!hi || r.ours_tflops > hi->ours_tflops) hi = &r;
    }
}

// In probe_wgmma.cuh, which is included after this file.
std::vector<std::string> wgmma_headline(const std::vector<Row>& rows, bool small);

// What the probe writes: its rows, lines for the headline beside the figures (the wgmma
// part's notes), and what it ran on.
struct Report {
    std::vector<Row> rows;
    std::vector<std::string> notes;
    std::string device = "unknown", error;
    int sms = 0, reps = 0;
    bool small = false;
};

// The headline: per precision at the largest shape, the best layout's figures and the
// slowest layout's, so a layout that falls behind shows; then the wgmma part's lines.
std::vector<std::string> headline(const Report& rep) {
    const std::vector<Row>& rows = rep.rows;
    std::vector<std::string> out;
    int failed = 0;
    for (const Row& r : rows) failed += !r.pass;
    char b[320];
    std::snprintf(b, sizeof b, "%zu checks against %s, %d failed", rows.size(),
                  rep.small ? "a host reference" : "cuBLAS", failed);
    out.push_back(b);
    const Row* last = nullptr;  // the largest shape: the last one of the main rows
    for (const Row& r : rows)
        if (std::strcmp(r.kernel, WGMMA_NAME)) last = &r;
    if (!rep.small && last) {
        const Shape big = last->s;
        for (const char* kern :
             {"gemm_f32", "gemm_bf16", "gemm_bf16_simt", "gemm_bf16_128", "gemm_bf16_small_m"})
            for (Precision p : {Precision::F32, Precision::TF32, Precision::BF16}) {
                const Row* lo = nullptr;
                const Row* hi = nullptr;
                layout_spread(rows, kern, p, big, lo, hi);
                if (!lo) continue;
                std::snprintf(b, sizeof b,
                              "%dx%dx%d %s vs cuBLAS %s: %.1f-%.1f TFLOP/s across layouts, "
                              "cuBLAS %.1f (ours/cuBLAS %.2f at best layout)",
                              big.m, big.n, big.k, kern, precision_name(p), lo->ours_tflops,
                              hi->ours_tflops, hi->cublas_tflops,
                              hi->ours_tflops / hi->cublas_tflops);
                out.push_back(b);
            }
    }
    for (const std::string& line : wgmma_headline(rows, rep.small)) out.push_back(line);
    for (const std::string& note : rep.notes) out.push_back(note);
    return out;
}

// The section's reason: the error that stopped the probe, or the failed rows (the first
// one named).
std::string report_reason(const Report& rep) {
    if (!rep.error.empty()) return rep.error;
    if (rep.rows.empty()) return "no check ran";
    int failed = 0;
    const Row* first = nullptr;
    for (const Row& r : rep.rows)
        if (!r.pass) {
            ++failed;
            if (!first) first = &r;
        }
    if (!first) return std::string();
    char b[200];
    std::snprintf(b, sizeof b, "%d of %zu checks failed; first: %s %dx%dx%d %s%s: ", failed,
                  rep.rows.size(), first->kernel, first->s.m, first->s.n, first->s.k,
                  first->ta ? "T" : "N", first->tb ? "T" : "N");
    return b + (first->reason.empty() ? "error " + json_num(first->error) + " over tolerance " +
                                            json_num(first->tolerance)
                                      : first->reason);
}

void write_json(FILE* f, const Report& rep) {
    const std::vector<Row>& rows = rep.rows;
    const std::string reason = report_reason(rep);
    std::fprintf(f, "{\"format\": \"setpoint-device-probe-v1\", \"section\": \"%s\",\n",
                 rep.small ? "probe-small" : "gemm");
    std::fprintf(f, " \"status\": \"%s\", \"reason\": %s,\n", reason.empty() ? "pass" : "fail",
                 reason.empty() ? "null" : json_str(reason).c_str());
    std::fprintf(f, " \"headline\": [");
    const std::vector<std::string> lines = headline(rep);
    for (size_t i = 0; i < lines.size(); ++i)
        std::fprintf(f, "%s%s", i ? ", " : "", json_str(lines[i]).c_str());
    std::fprintf(f, "],\n \"figures\": {\"device\": %s, \"sms\": %d, \"reps\": %d, \"rows\": [\n",
                 json_str(rep.device).c_str(), rep.sms, rep.reps);
    for (size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        std::fprintf(f,
                     "  {\"m\": %d, \"n\": %d, \"k\": %d, \"trans_a\": %s, \"trans_b\": %s, "
                     "\"precision\": \"%s\", \"kernel\": \"%s\", \"ours_tflops\": %s, "
                     "\"cublas_tflops\": %s, \"gemm_bf16_128_tflops\": %s, "
                     "\"max_scaled_error\": %s, \"tolerance\": %s, \"epilogue\": %s, "
                     "\"variant\": %s, \"pass\": %s, \"reason\": %s}%s\n",
                     r.s.m, r.s.n, r.s.k, r.ta ? "true" : "false", r.tb ? "true" : "false",
                     precision_name(r.p), r.kernel, json_num(r.ours_tflops).c_str(),
                     json_num(r.cublas_tflops).c_str(), json_num(r.bf16_128_tflops).c_str(),
                     json_num(r.error).c_str(), json_num(r.tolerance).c_str(),
                     r.epilogue ? "true" : "false",
                     r.variant.empty() ? "null" : json_str(r.variant).c_str(),
                     r.pass ? "true" : "false",
                     r.reason.empty() ? "null" : json_str(r.reason).c_str(),
                     i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(f, "]}}\n");
}

// Rows of every kind, with the characters JSON must escape, for --report-selftest (which
// writes a report without touching the GPU, so that its format is checked anywhere).
std::vector<Row> report_selftest_rows() {
    std::vector<Row> rows;
    Row r{{64, 64, 64}, 0, 1, Precision::BF16, "gemm_bf16_128"};
    r.ours_tflops = 1.5;
    r.cublas_tflops = 2.5;
    r.error = 1e-4;
    r.tolerance = 1e-3;
    r.pass = true;
    rows.push_back(r);
    Row w = r;
    w.kernel = WGMMA_NAME;
    w.bf16_128_tflops = 1.25;
    rows.push_back(w);
    w.pass = false;
    w.error = NAN;
    w.epilogue = true;
    w.variant = "split-K";
    w.reason = "an \"error\"\twith a \\ and a newline\n";
    rows.push_back(w);
    return rows;
}

// Writes the report to `path` (stdout when empty); false when the file cannot be opened.
bool save_report(const std::string& path, const Report& rep) {
    FILE* f = path.empty() ? stdout : std::fopen(path.c_str(), "w");
    if (!f) return false;
    write_json(f, rep);
    std::fflush(f);
    if (f != stdout) std::fclose(f);
    return true;
}

