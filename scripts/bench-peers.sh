#!/usr/bin/env bash
# setpoint against PyTorch on the CPU, measured in the same run (DESIGN.md §7).
#
#   scripts/bench-peers.sh                 # 4 rounds, 3 s per measurement
#   ROUNDS=2 SECONDS_PER=2 scripts/bench-peers.sh
#   ONLY='gemm' scripts/bench-peers.sh     # workloads whose label matches the regex
#
# Installs PyTorch (CPU is enough) into .venv-peers/ on first use, builds setpoint's probe
# bench in release once, then for each round runs every workload on both sides, alternating
# which side goes first from round to round so drift on a shared machine hits both alike.
# Each measurement is a fresh process: --warmup untimed, then --seconds timed in windows,
# reporting the median window (benches/probe.rs, scripts/peers/torch_bench.py). The table
# gives the median over rounds of each side and the ratio setpoint / PyTorch (> 1: setpoint
# is faster). Raw JSON lines go to target/bench-peers/<time>/runs.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-4}
SECONDS_PER=${SECONDS_PER:-3}
WARMUP=${WARMUP:-1}
ONLY=${ONLY:-.}
VENV=${VENV:-.venv-peers}
PY="$VENV/bin/python"

# workload label | arguments (the same for both sides)
WORKLOADS=(
  "train digits 64-128-10 b64 adam, 1 thread|train-digits --threads 1"
  "train digits 64-128-10 b64 adam, 2 threads|train-digits --threads 2"
  "train 784-1024-1024-10 b256 adam, 1 thread|train-big --threads 1"
  "train 784-1024-1024-10 b256 adam, 2 threads|train-big --threads 2"
  "forward 64-128-10 batch 1, 1 thread|forward --batch 1 --threads 1"
  "forward 64-128-10 batch 8, 1 thread|forward --batch 8 --threads 1"
  "forward 64-128-10 batch 64, 1 thread|forward --batch 64 --threads 1"
  "gemm f32 2048^3, 1 thread|gemm --size 2048 --threads 1"
  "gemm f32 2048^3, 2 threads|gemm --size 2048 --threads 2"
)

if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "installing PyTorch into $VENV (once; about 5 GB with the default wheel)" >&2
  python3 -m venv "$VENV"
  # The CPU-only index is much smaller; where only PyPI is reachable it fails fast and the
  # default wheel (which runs fine on a CPU) is used instead.
  "$PY" -m pip install --quiet --timeout 15 --retries 0 torch \
      --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
    || "$PY" -m pip install --quiet torch
fi
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)')

echo "building the probe (cargo bench --bench probe --no-run)" >&2
PROBE=$(cargo bench --bench probe --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "probe" and m.get("executable"):
        print(m["executable"])
')
if [[ -z "$PROBE" || ! -x "$PROBE" ]]; then
  echo "could not build the probe bench; run: cargo bench --bench probe --no-run" >&2
  exit 1
fi

OUT_DIR=target/bench-peers/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT_DIR"
RUNS="$OUT_DIR/runs.jsonl"
: > "$RUNS"
COMMON="--seconds $SECONDS_PER --warmup $WARMUP"

run_side() { # side label args
  local side=$1 label=$2 args=$3 line load
  # Other work on the machine skews both sides; record it beside each figure.
  load=$(cut -d' ' -f1 /proc/loadavg)
  if [[ $side == setpoint ]]; then
    # shellcheck disable=SC2086
    line=$("$PROBE" $args $COMMON)
  else
    # shellcheck disable=SC2086
    line=$("$PY" scripts/peers/torch_bench.py $args $COMMON)
  fi
  printf '{"round": %d, "label": "%s", "load1_before": %s, "run": %s}\n' \
    "$round" "$label" "$load" "$line" >> "$RUNS"
  printf '  %-9s %-48s %s\n' "$side" "$label" \
    "$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.4g %s" % (r["median"], r["unit"]))' "$line")" >&2
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  for w in "${WORKLOADS[@]}"; do
    label=${w%%|*}
    args=${w#*|}
    [[ $label =~ $ONLY ]] || continue
    if (( round % 2 == 1 )); then
      run_side setpoint "$label" "$args"
      run_side pytorch "$label" "$args"
    else
      run_side pytorch "$label" "$args"
      run_side setpoint "$label" "$args"
    fi
  done
done

python3 - "$RUNS" "$PROBE" "$TORCH_VERSION" "$COMMON" "$(nproc)" <<'EOF'
import json, statistics, sys
runs_path, probe, torch_version, common, cores = sys.argv[1:6]
rows = {}
for line in open(runs_path):
    r = json.loads(line)
    d = rows.setdefault(r["label"], {"setpoint": [], "pytorch": [], "unit": r["run"]["unit"],
                                     "load": []})
    d[r["run"]["impl"]].append(r["run"]["median"])
    d["load"].append(r["load1_before"])
print()
print(f"{'workload':<46} {'unit':<13} {'setpoint':>10} {'PyTorch':>10} {'ratio':>6} {'load1':>5}   runs (setpoint | PyTorch)")
for label, d in rows.items():
    s, t = statistics.median(d["setpoint"]), statistics.median(d["pytorch"])
    fmt = lambda xs: " ".join(f"{x:.4g}" for x in xs)
    print(f"{label:<46} {d['unit']:<13} {s:>10.4g} {t:>10.4g} {s / t:>6.2f} {max(d['load']):>5.2f}   {fmt(d['setpoint'])} | {fmt(d['pytorch'])}")
print()
print(f"load1: the highest 1-minute load average seen just before a run of that row, on {cores} cores;"
      " the benchmarks themselves add up to 2; above that, other work competed for the cores (2-thread figures suffer most)")
print(f"medians over {len(next(iter(rows.values()))['setpoint'])} rounds of each side's median window; ratio = setpoint / PyTorch {torch_version}")
print("commands (ARGS from the list in scripts/bench-peers.sh):")
print(f"  setpoint: {probe} ARGS {common}   (= cargo bench --bench probe -- ARGS {common})")
print(f"  PyTorch:  .venv-peers/bin/python scripts/peers/torch_bench.py ARGS {common}")
print(f"raw runs: {runs_path}")
EOF
