#!/usr/bin/env bash
# Every GPU measurement in one run, for a host with an NVIDIA GPU, its driver and the CUDA
# toolkit (NVRTC, ptxas) but no Rust toolchain: it runs binaries built elsewhere.
#
#   scripts/gpu-check.sh [--quick] [BINARY] [OUT_DIR]
#
# BINARY defaults to target/release/setpoint; OUT_DIR to $OUT, else ./gpu-check-out.
# Test binaries built with `cargo test --release --no-run` and listed in $SETPOINT_GPU_TESTS
# (space-separated paths) run too, with their output kept.
#
# Writes under OUT_DIR:
#   nvidia-smi.txt       nvidia-smi -q and the driver/GPU list, once
#   nvidia-smi.csv       utilisation, memory, power and SM clock every 100 ms during the run
#   kernels-check.json   `setpoint kernels check --json`: NVRTC + ptxas for this GPU's arch
#   gpu-check.json       `setpoint gpu-check`: kernels vs the CPU backend, GEMM vs cuBLAS,
#                        training GPU vs CPU, two lanes at 0.25/0.75 (CTA budgets, then
#                        SM partitions from green contexts), inference p99 alone
#                        and beside training with and without stream priority
#   daemon/              the daemon on the GPU (device.kind = "cuda"): its log, status and
#                        metrics while a job trains beside a service under HTTP load, and
#                        the HTTP load's report
#   tests-*.txt          output of each test binary
#   summary.txt          exit status of every step
# Sized to finish within about 5 minutes (3 with --quick); not yet timed on a GPU.
set -uo pipefail

quick=""
if [ "${1:-}" = "--quick" ]; then
    quick="--quick"
    shift
fi
bin="${1:-target/release/setpoint}"
out="${2:-${OUT:-gpu-check-out}}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"

step() {
    local name="$1"
    shift
    local started=$SECONDS
    "$@"
    local rc=$?
    echo "$name: exit $rc, $((SECONDS - started)) s" | tee -a "$summary"
    return 0
}

if [ ! -x "$bin" ]; then
    echo "error: $bin is not an executable setpoint binary" | tee -a "$summary"
    exit 2
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "warning: nvidia-smi not found; no driver-side samples" | tee -a "$summary"
fi

# The toolkit's NVRTC and ptxas, wherever the toolkit is.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
    if ls "$d"/libnvrtc.so* >/dev/null 2>&1; then
        export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        break
    fi
done
if ! command -v ptxas >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/ptxas ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi

sampler=""
if command -v nvidia-smi >/dev/null 2>&1; then
    { nvidia-smi -L; nvidia-smi -q; } >"$out/nvidia-smi.txt" 2>&1
    nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used,power.draw,clocks.sm \
        --format=csv,noheader,nounits -lms 100 >"$out/nvidia-smi.csv" 2>&1 &
    sampler=$!
fi

step "kernels check" bash -c "'$bin' kernels check --json >'$out/kernels-check.json' 2>'$out/kernels-check.err'"

digits=""
for p in shared/data/digits.csv.gz ../shared/data/digits.csv.gz; do
    if [ -f "$p" ]; then
        digits="--digits $p"
        break
    fi
done
step "gpu-check" bash -c "'$bin' gpu-check $quick $digits --out '$out' 2>'$out/gpu-check.log'"

# The daemon itself on the GPU: tenants on CUDA lanes, a job beside a loaded service.
daemon_check() {
    local d="$out/daemon"
    mkdir -p "$d"
    local state
    state=$(mktemp -d)
    cat >"$d/config.toml" <<CONF
listen = "127.0.0.1:8123"
state_dir = "$state"
[device]
kind = "cuda"
[[services]]
name = "mlp"
layers = [64, 128, 10]
seed = 1
  [services.slo]
  p99_ms = 5.0
  [services.batching]
  max_batch_size = 64
CONF
    "$bin" serve --config "$d/config.toml" >"$d/serve.log" 2>&1 &
    local pid=$!
    local url="http://127.0.0.1:8123"
    local ready=1
    for _ in $(seq 1 120); do
        if "$bin" status --url "$url" --json >"$d/status-start.json" 2>/dev/null; then
            ready=0
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if [ "$ready" -ne 0 ]; then
        echo "the daemon did not answer; see daemon/serve.log"
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        return 1
    fi
    "$bin" submit --url "$url" --name big --data "synthetic:blobs:size=200000,features=64,classes=10" \
        --layers 64,2048,2048,10 --epochs 3 --batch-size 512 >"$d/submit.txt" 2>&1
    "$bin" bench http --url "$url" --model mlp --concurrency 1,16 --duration 5s --warmup 1s \
        >"$d/bench-http.txt" 2>&1
    "$bin" status --url "$url" --json >"$d/status-loaded.json" 2>&1
    curl -s "$url/metrics" >"$d/metrics.txt" 2>&1
    "$bin" jobs --url "$url" --json >"$d/jobs.json" 2>&1
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"
    local rc=$?
    echo "daemon exit status after SIGTERM: $rc" >>"$d/serve.log"
    rm -rf "$state"
    grep -q '"cuda:' "$d/status-start.json"
}
step "daemon on the GPU" daemon_check

for t in ${SETPOINT_GPU_TESTS:-}; do
    name=$(basename "$t")
    step "test $name" bash -c "'$t' --test-threads=1 --nocapture >'$out/tests-$name.txt' 2>&1"
done

if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
fi
cat "$summary"
