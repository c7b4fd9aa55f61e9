#!/usr/bin/env bash
# Checks setpoint's v2 inference API with Triton's own clients, as a user would use them:
#
#   1. tritonclient[http] (Python): scripts/triton/check.py runs every call a user makes
#      (health, server/model metadata, model config, infer with JSON and binary tensors at
#      batch 1 and 4, statistics, error cases) and compares the answers with each other.
#   2. perf_analyzer (Triton's C++ load generator), when it can run on this machine.
#
# Usage: scripts/triton-client-check.sh [--debug] [--no-perf-analyzer]
#
# Creates .venv-triton/ (ignored by git through its own .gitignore), builds setpoint (release
# unless --debug), starts `setpoint serve` on a free loopback port with a temporary state
# dir, waits for /v2/health/ready, runs the checks, and stops the daemon. Results are kept in
# target/triton-check/. Exit status: 0 when every tritonclient check passed.
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
            sed -n '2,15p' "$0"
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
if ! "$VENV/bin/python" -c 'import tritonclient.http, numpy' 2>/dev/null; then
    log "installing tritonclient[http] and numpy"
    "$VENV/bin/pip" install -q 'tritonclient[http]' numpy
fi
"$VENV/bin/python" -c 'import tritonclient, numpy; print("tritonclient", tritonclient.__version__ if hasattr(tritonclient, "__version__") else "?", "numpy", numpy.__version__)' >&2 || true
"$VENV/bin/pip" show tritonclient 2>/dev/null | grep -i '^version' >&2 || true

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
PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
STATE=$(mktemp -d -t setpoint-triton.XXXXXX)
DAEMON_LOG=$OUT/daemon.log
log "starting setpoint serve on 127.0.0.1:$PORT (state dir $STATE, log $DAEMON_LOG)"
"$BIN" serve --listen "127.0.0.1:$PORT" --state-dir "$STATE" >"$DAEMON_LOG" 2>&1 &
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
    if "$VENV/bin/python" - "$PORT" <<'EOF' 2>/dev/null; then
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v2/health/ready", timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
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
            log "perf_analyzer from tritonclient $v runs here"
            break
        else
            log "perf_analyzer from tritonclient $v does not run here: $(LD_LIBRARY_PATH=$CUDART "$PA_DIR/$v/perf_analyzer" --version 2>&1 | head -1)"
        fi
    done
    if [ -n "$PA" ]; then
        # One run per level, each bounded: on a noisy machine perf_analyzer's default
        # stability rule (3 windows within 10 %) can keep a sweep going for many minutes.
        set +e
        : >"$OUT/perf_analyzer.txt"
        PA_RC=0
        for c in 1 4 16; do
            LD_LIBRARY_PATH=$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} timeout 120 "$PA" -m mlp \
                -u "127.0.0.1:$PORT" -i http --concurrency-range "$c" \
                --measurement-interval 3000 --stability-percentage 25 --max-trials 6 \
                2>&1 | tee -a "$OUT/perf_analyzer.txt"
            rc=${PIPESTATUS[0]}
            [ "$rc" != 0 ] && PA_RC=$rc
        done
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
echo "tritonclient checks: exit $CHECK_RC ($(tail -n 1 "$OUT/tritonclient.txt"))"
echo "perf_analyzer: $PA_RC (details in $OUT/perf_analyzer-install.txt)"
echo "daemon stop: exit $STOP_RC"
if [ "$CHECK_RC" != 0 ] || [ "$STOP_RC" != 0 ]; then
    exit 1
fi
