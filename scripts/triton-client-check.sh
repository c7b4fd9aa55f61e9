#!/usr/bin/env bash
# Checks setpoint's v2 inference API with Triton's own clients, as a user would use them:
#
#   1. tritonclient[http] (Python): scripts/triton/check.py runs every call a user makes
#      (health, server/model metadata, model config, infer with JSON and binary tensors at
#      batch 1 and 4, statistics, error cases) and compares the answers with each other.
#   2. tritonclient[grpc] (Python): scripts/triton/check_grpc.py makes the same calls over
#      gRPC (inference.GRPCInferenceService), plus client timeouts and ModelStreamInfer, and
#      compares answers and error messages with what the HTTP client gets for the same request.
#   3. perf_analyzer (Triton's C++ load generator), when it can run on this machine: at
#      concurrency 1, 4 and 16, over HTTP, gRPC and gRPC streaming, interleaved per level and
#      repeated PERF_ROUNDS times (default 3), with a summary table in perf-summary.txt:
#      median infer/sec, p99, gRPC/HTTP throughput, and the daemon's CPU time per request.
#      PERF_PIN=1 runs the daemon on the first half of the CPUs and perf_analyzer on the rest
#      (taskset). Neither way is neutral on 2 cores: unpinned, the client's CPU competes with
#      the daemon's (the gRPC C++ client spends more per request than the HTTP one); pinned,
#      the gRPC client's several threads share one core. The daemon's CPU time per request is
#      the figure that compares the server's own cost.
#
# Usage: scripts/triton-client-check.sh [--debug] [--no-perf-analyzer]
#
# Creates .venv-triton/ (ignored by git through its own .gitignore), builds setpoint (release
# unless --debug), starts `setpoint serve` on two free loopback ports (HTTP and gRPC) with a
# temporary state dir and the built-in configuration's service alone (no demonstration job,
# and `leftover = "spread"`, so that the controller does not hold the service's share down to
# what its SLO needs while the protocols are measured), waits for /v2/health/ready and the gRPC port, runs the checks, and
# stops the daemon. Results are kept in target/triton-check/. Exit status: 0 when every
# tritonclient check (HTTP and gRPC) passed and the daemon stopped cleanly.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PROFILE=release
RUN_PA=1
for arg in "$@"; do
    case "$arg" in
        --debug) PROFILE=debug ;;
        --no-perf-analyzer) RUN_PA=0 ;;
        -h | --help)
            sed -n '2,21p' "$0"
            exit 0
            ;;
        *)
            echo "unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

VENV=$ROOT/.venv-triton
OUT=$ROOT/target/triton-check
mkdir -p "$OUT"
PY=${PYTHON:-python3}

log() { printf '== %s\n' "$*" >&2; }

# ------------------------------------------------------------------ venv
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
fi
# The venv ignores itself, so it never shows in `git status` whatever .gitignore says.
printf '*\n' >"$VENV/.gitignore"
if ! "$VENV/bin/python" -c 'import tritonclient.http, tritonclient.grpc, numpy' 2>/dev/null; then
    log "installing tritonclient[http,grpc] and numpy"
    "$VENV/bin/pip" install -q 'tritonclient[http,grpc]' numpy
fi
"$VENV/bin/python" -c 'import tritonclient, numpy; print("tritonclient", tritonclient.__version__ if hasattr(tritonclient, "__version__") else "?", "numpy", numpy.__version__)' >&2 || true
for p in tritonclient grpcio; do
    printf '%s ' "$p" >&2
    "$VENV/bin/pip" show "$p" 2>/dev/null | grep -i '^version' >&2 || echo "not installed" >&2
done

# ------------------------------------------------------------------ build
if [ "$PROFILE" = release ]; then
    log "building setpoint (release)"
    cargo build --release --quiet --bin setpoint
else
    log "building setpoint (debug)"
    cargo build --quiet --bin setpoint
fi
BIN=$ROOT/target/$PROFILE/setpoint

# ------------------------------------------------------------------ daemon
# Two distinct free ports: both sockets are held open while the second is chosen.
read -r PORT GRPC_PORT < <("$VENV/bin/python" -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
STATE=$(mktemp -d -t setpoint-triton.XXXXXX)
# The daemon and the load generator on separate CPUs, where there are two or more.
NCPU=$(nproc 2>/dev/null || echo 1)
DAEMON_CPUS=()
CLIENT_CPUS=()
if [ "${PERF_PIN:-0}" = 1 ] && [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    half=$((NCPU / 2))
    DAEMON_CPUS=(taskset -c "0-$((half - 1))")
    CLIENT_CPUS=(taskset -c "$half-$((NCPU - 1))")
    log "daemon on CPUs 0-$((half - 1)), perf_analyzer on CPUs $half-$((NCPU - 1))"
fi
DAEMON_LOG=$OUT/daemon.log
CONFIG=$OUT/setpoint-check.toml
# configs/default.toml (the built-in configuration) up to its first job, then the leftover.
{
    sed '/^\[\[jobs\]\]/,$d' configs/default.toml
    printf '\n# Added by scripts/triton-client-check.sh: the service alone, with the spare capacity.\n'
    printf '[control]\nleftover = "spread"\n'
} >"$CONFIG"
log "starting setpoint serve on 127.0.0.1:$PORT (HTTP) and 127.0.0.1:$GRPC_PORT (gRPC) (state dir $STATE, log $DAEMON_LOG)"
"${DAEMON_CPUS[@]}" "$BIN" serve --config "$CONFIG" --listen "127.0.0.1:$PORT" --grpc-listen "127.0.0.1:$GRPC_PORT" --state-dir "$STATE" \
    >"$DAEMON_LOG" 2>&1 &
DAEMON_PID=$!

stop_daemon() {
    if [ -n "${DAEMON_PID:-}" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -INT "$DAEMON_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$DAEMON_PID" 2>/dev/null; then
            echo "setpoint did not stop within 10 s of SIGINT; killing it" >&2
            kill -KILL "$DAEMON_PID" 2>/dev/null || true
        fi
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    DAEMON_PID=
    rm -rf "$STATE"
}
trap stop_daemon EXIT

ready=0
for _ in $(seq 1 600); do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        echo "setpoint serve exited before it was ready; its log:" >&2
        cat "$DAEMON_LOG" >&2
        exit 1
    fi
    if "$VENV/bin/python" - "$PORT" "$GRPC_PORT" <<'EOF' 2>/dev/null; then
import socket, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v2/health/ready", timeout=1) as r:
    if r.status != 200:
        sys.exit(1)
socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=1).close()
EOF
        ready=1
        break
    fi
    sleep 0.1
done
if [ "$ready" != 1 ]; then
    echo "setpoint was not ready within 60 s; its log:" >&2
    cat "$DAEMON_LOG" >&2
    exit 1
fi
log "daemon ready"

# ------------------------------------------------------------------ tritonclient
set +e
"$VENV/bin/python" scripts/triton/check.py --url "127.0.0.1:$PORT" --model mlp \
    --json-out "$OUT/tritonclient.json" | tee "$OUT/tritonclient.txt"
CHECK_RC=${PIPESTATUS[0]}
"$VENV/bin/python" scripts/triton/check_grpc.py --url "127.0.0.1:$GRPC_PORT" \
    --http-url "127.0.0.1:$PORT" --model mlp \
    --json-out "$OUT/tritonclient-grpc.json" | tee "$OUT/tritonclient-grpc.txt"
GRPC_CHECK_RC=${PIPESTATUS[0]}
set -e

# ------------------------------------------------------------------ perf_analyzer
# The perf-analyzer package on PyPI is a placeholder without the program, and the newest
# tritonclient (2.73.0) is pure Python without it. Older manylinux tritonclient wheels bundle
# it, built against some glibc: 2.59.0 needs GLIBC_2.38 (Debian 12 has 2.36), 2.50.0 needs
# 2.34 plus libb64 (Debian) and libcudart.so.12 (nvidia-cuda-runtime-cu12 from PyPI; no GPU
# is needed to benchmark over HTTP). The first one that runs here is used.
PA_RC=skipped
if [ "$RUN_PA" = 1 ]; then
    PA_DIR=$VENV/perf_analyzer
    mkdir -p "$PA_DIR"
    {
        echo "## pip install perf-analyzer"
        "$VENV/bin/pip" install -q perf-analyzer 2>&1 || true
        "$VENV/bin/pip" show -f perf-analyzer 2>&1 | sed -n '1,3p;/Files:/,$p' || true
        command -v perf_analyzer || ls "$VENV/bin/perf_analyzer" 2>&1 || true
    } >"$OUT/perf_analyzer-install.txt" 2>&1
    PA=
    PA_VERSION=
    for v in 2.59.0 2.50.0; do
        whl_dir=$PA_DIR/whl-$v
        if [ ! -x "$PA_DIR/$v/perf_analyzer" ]; then
            mkdir -p "$whl_dir" "$PA_DIR/$v"
            if "$VENV/bin/pip" download -q --no-deps "tritonclient==$v" -d "$whl_dir" >>"$OUT/perf_analyzer-install.txt" 2>&1; then
                "$VENV/bin/python" - "$whl_dir" "$PA_DIR/$v" <<'EOF' >>"$OUT/perf_analyzer-install.txt" 2>&1 || true
import glob, os, sys, zipfile
whl = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith("/bin/perf_analyzer")]
    if not names:
        sys.exit(f"{os.path.basename(whl)} holds no perf_analyzer")
    dst = os.path.join(sys.argv[2], "perf_analyzer")
    with z.open(names[0]) as src, open(dst, "wb") as f:
        f.write(src.read())
    os.chmod(dst, 0o755)
    print(f"extracted {names[0]} from {os.path.basename(whl)}")
EOF
            fi
        fi
        [ -x "$PA_DIR/$v/perf_analyzer" ] || continue
        # libcudart.so.12 comes from PyPI; libb64 from Debian.
        if ! "$VENV/bin/python" -c 'import nvidia.cuda_runtime' 2>/dev/null; then
            "$VENV/bin/pip" install -q nvidia-cuda-runtime-cu12 >>"$OUT/perf_analyzer-install.txt" 2>&1 || true
        fi
        CUDART=$("$VENV/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))' 2>/dev/null || true)
        if ! ldconfig -p 2>/dev/null | grep -q libb64.so.0d && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            (apt-get install -y -q libb64-0d || (apt-get update -q && apt-get install -y -q libb64-0d)) >>"$OUT/perf_analyzer-install.txt" 2>&1 || true
        fi
        echo "## tritonclient $v perf_analyzer --version" >>"$OUT/perf_analyzer-install.txt"
        if LD_LIBRARY_PATH=$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$PA_DIR/$v/perf_analyzer" --version >>"$OUT/perf_analyzer-install.txt" 2>&1 ||
            LD_LIBRARY_PATH=$CUDART "$PA_DIR/$v/perf_analyzer" --help >/dev/null 2>&1; then
            PA=$PA_DIR/$v/perf_analyzer
            PA_VERSION="from tritonclient $v"
            log "perf_analyzer from tritonclient $v runs here"
            break
        else
            log "perf_analyzer from tritonclient $v does not run here: $(LD_LIBRARY_PATH=$CUDART "$PA_DIR/$v/perf_analyzer" --version 2>&1 | head -1)"
        fi
    done
    # The daemon's CPU time (utime + stime, in clock ticks) and the model's inference count.
    daemon_usage() {
        local ticks count
        ticks=$(awk '{print $14 + $15}' "/proc/$DAEMON_PID/stat" 2>/dev/null || echo 0)
        count=$("$VENV/bin/python" -c '
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v2/models/mlp/stats", timeout=5) as r:
    print(json.load(r)["model_stats"][0]["inference_count"])' "$PORT" 2>/dev/null || echo 0)
        echo "$ticks $count"
    }
    # One perf_analyzer run: protocol, concurrency, round. Writes perf-PROTO-cC-rR.csv and
    # .cpu (daemon ticks and requests before and after, and the clock tick rate).
    perf_run() {
        local proto=$1 c=$2 round=$3 rc=0 try before after
        local base=$OUT/perf-$proto-c$c-r$round
        case "$proto" in
            http) pa_args=(-u "127.0.0.1:$PORT" -i http) ;;
            grpc) pa_args=(-u "127.0.0.1:$GRPC_PORT" -i grpc) ;;
            grpc-streaming) pa_args=(-u "127.0.0.1:$GRPC_PORT" -i grpc --streaming) ;;
        esac
        before=$(daemon_usage)
        # A level that does not settle within its windows is tried once more with a
        # looser rule (50 %, longer windows); the table marks such a result.
        for try in 1 2; do
            if [ "$try" = 1 ]; then
                rule=(--measurement-interval 3000 --stability-percentage 25 --max-trials 6)
            else
                rule=(--measurement-interval 4000 --stability-percentage 50 --max-trials 6)
                touch "$base.retried"
            fi
            echo "### $proto, concurrency $c, round $round, try $try: ${rule[*]}" | tee -a "$OUT/perf_analyzer.txt"
            LD_LIBRARY_PATH=$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} timeout 60 \
                "${CLIENT_CPUS[@]}" "$PA" -m mlp "${pa_args[@]}" --concurrency-range "$c" "${rule[@]}" \
                -f "$base.csv" 2>&1 | tee -a "$OUT/perf_analyzer.txt"
            rc=${PIPESTATUS[0]}
            [ "$rc" = 0 ] && break
        done
        after=$(daemon_usage)
        echo "$before $after $(getconf CLK_TCK)" >"$base.cpu"
        return "$rc"
    }
    if [ -n "$PA" ]; then
        # One run per level and protocol, each bounded: on a noisy machine perf_analyzer's
        # default stability rule (3 windows within 10 %) can keep a sweep going for many
        # minutes. The protocols take turns at each level (HTTP, gRPC, gRPC streaming for
        # c=1, then c=4, ...) so that they are measured side by side, under the same load
        # from whatever else runs on the machine; the whole sweep is repeated PERF_ROUNDS
        # times and the table gives medians. Each run writes its CSV report (-f).
        set +e
        : >"$OUT/perf_analyzer.txt"
        rm -f "$OUT"/perf-*.csv "$OUT"/perf-*.retried "$OUT"/perf-*.cpu "$OUT"/perf_analyzer-http-*.txt
        PA_RC=0
        for round in $(seq 1 "${PERF_ROUNDS:-3}"); do
            for c in 1 4 16; do
                for proto in http grpc grpc-streaming; do
                    perf_run "$proto" "$c" "$round" || PA_RC=$?
                done
            done
        done
        # What perf_analyzer's HTTP requests carry: its -v output does not show them, so a
        # short run goes through a loopback proxy that records the bytes it sends.
        read -r SNIFF_PORT < <("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        "$VENV/bin/python" scripts/triton/http_sniff.py "$SNIFF_PORT" "$PORT" \
            "$OUT/perf_analyzer-http-request.txt" 60 &
        SNIFF_PID=$!
        for _ in $(seq 1 50); do
            "$VENV/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $SNIFF_PORT), timeout=1).close()" 2>/dev/null && break
            sleep 0.1
        done
        LD_LIBRARY_PATH=$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} timeout 30 "$PA" \
            -m mlp -u "127.0.0.1:$SNIFF_PORT" -i http --concurrency-range 1 \
            --measurement-mode count_windows --measurement-request-count 20 --max-trials 1 \
            >"$OUT/perf_analyzer-http-sniffed.txt" 2>&1
        kill -TERM "$SNIFF_PID" 2>/dev/null
        wait "$SNIFF_PID"
        "$VENV/bin/python" scripts/triton/perf_summary.py "$OUT" "$PA_VERSION" |
            tee "$OUT/perf-summary.txt"
        set -e
    else
        PA_RC=unavailable
    fi
fi

# ------------------------------------------------------------------ stop
log "stopping the daemon"
kill -INT "$DAEMON_PID" 2>/dev/null || true
STOP_RC=0
wait "$DAEMON_PID" || STOP_RC=$?
DAEMON_PID=
log "setpoint serve exited with status $STOP_RC"

echo
echo "tritonclient HTTP checks: exit $CHECK_RC ($(tail -n 1 "$OUT/tritonclient.txt"))"
echo "tritonclient gRPC checks: exit $GRPC_CHECK_RC ($(tail -n 1 "$OUT/tritonclient-grpc.txt"))"
echo "perf_analyzer${PA_VERSION:+ ($PA_VERSION)}: $PA_RC (install log $OUT/perf_analyzer-install.txt)"
if [ -s "$OUT/perf-summary.txt" ]; then
    sed 's/^/  /' "$OUT/perf-summary.txt"
fi
echo "daemon stop: exit $STOP_RC"
if [ "$CHECK_RC" != 0 ] || [ "$GRPC_CHECK_RC" != 0 ] || [ "$STOP_RC" != 0 ]; then
    exit 1
fi
