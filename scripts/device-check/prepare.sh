#!/usr/bin/env bash
# Prepares the device check here (where cargo is) as one folder to carry to a GPU host that has
# no Rust toolchain and no network:
#
#   scripts/device-check/prepare.sh [--dry-run] [--dir DIR] [--bin FILE] [--test-bin FILE]...
#                                   [--digits FILE] [--max-mib N] [--no-probe-check]
#
# DIR (default .device-check, git-ignored) gets:
#   bin/setpoint        `cargo build --release --locked`, debug info stripped
#   tests/NAME          the GPU test binaries (`cargo test --release --locked --no-run`, found
#                       in cargo's JSON output), stripped the same way
#   data/digits.csv.gz  the digits data (../shared/data/digits.csv.gz unless --digits)
#   probe/              probe.cu (+ probe_report.cuh, probe_wgmma.cuh), probe-build.sh and the
#                       kernels it compiles in (gemm*.cu, common.cuh): built there with nvcc
#   run.sh run.py report.py sections.py torch_gpu.py torch_bench.py   the run's scripts
#   MANIFEST.json       what was built from which commit, and every file's size
# Then run it there with `bash DIR/run.sh` (OUT=... for the output folder).
#
# --dry-run builds debug binaries instead (`cargo build`, `cargo test --no-run`), for running
# the plumbing on a host without a GPU (`bash DIR/run.sh --dry-run`). --bin and --test-bin use
# binaries built already instead of calling cargo. The folder must stay within --max-mib
# (default 64) together with the working tree that travels with it; a larger one is refused
# and removed, with the sizes printed.
#
# Before the folder is written (not with --dry-run) the probe is compiled here for sm_90a with
# the nvcc that probe-nvcc.sh installs (no GPU needed, no linking), and a probe that does not
# compile is refused: on the GPU host it would cost the lease's time. --no-probe-check skips
# that (for a host that cannot reach PyPI), saying so.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/scripts/device-check"
cd "$root"

# The tests that need a GPU: each runs on the device and says "skipped" without one.
GPU_TESTS=(cuda_backend)

dry_run=0
dir=".device-check"
bin=""
test_bins=()
digits="../shared/data/digits.csv.gz"
digits_given=0
max_mib=64
probe_check=1
die() {
    echo "prepare: $*" >&2
    exit 1
}
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --dir) dir=${2:?--dir needs a folder}; shift ;;
        --bin) bin=${2:?--bin needs a file}; shift ;;
        --test-bin) test_bins+=("${2:?--test-bin needs a file}"); shift ;;
        --digits) digits=${2:?--digits needs a file}; digits_given=1; shift ;;
        --max-mib) max_mib=${2:?--max-mib needs a number}; shift ;;
        --no-probe-check) probe_check=0 ;;
        -h | --help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done
[[ "$max_mib" =~ ^[0-9]+$ ]] && [ "$max_mib" -gt 0 ] || die "--max-mib: expected a whole number of MiB, got '$max_mib'"
command -v python3 >/dev/null || die "python3 is needed (it reads cargo's JSON output)"

profile=release
cargo_profile=(--release)
if [ "$dry_run" = 1 ]; then
    profile=debug
    cargo_profile=()
else
    # The release binary carries machine code for sm_90 as well as PTX (build.rs assembles
    # it with ptxas): the GPU host needs no NVRTC. Without ptxas the build fails rather than
    # quietly carrying PTX only.
    cuda_env="$(scripts/cuda-tools.sh --env)" || die "scripts/cuda-tools.sh could not install ptxas"
    eval "$cuda_env"
    export SETPOINT_REQUIRE_SASS=1
fi

if [ -z "$bin" ]; then
    echo "prepare: cargo build ${cargo_profile[*]} --locked" >&2
    cargo build "${cargo_profile[@]}" --locked >&2
    bin="target/$profile/setpoint"
fi
[ -x "$bin" ] || die "$bin is not an executable setpoint binary"

if [ ${#test_bins[@]} -eq 0 ]; then
    args=()
    for t in "${GPU_TESTS[@]}"; do args+=(--test "$t"); done
    echo "prepare: cargo test ${cargo_profile[*]} --locked --no-run ${args[*]}" >&2
    mapfile -t test_bins < <(cargo test "${cargo_profile[@]}" --locked --no-run "${args[@]}" \
        --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])
')
    [ ${#test_bins[@]} -eq ${#GPU_TESTS[@]} ] ||
        die "cargo built ${#test_bins[@]} test binaries for ${#GPU_TESTS[@]} GPU tests (${GPU_TESTS[*]})"
fi

if [ ! -f "$digits" ]; then
    if [ "$dry_run" = 1 ] && [ "$digits_given" = 0 ]; then
        echo "prepare: warning: $digits not found; the digits workloads will be left out" >&2
        digits=""
    else
        die "the digits data $digits is not there (give its path with --digits)"
    fi
fi

# Build the folder beside its final place, measure it, and only then put it there.
case "$dir" in /*) ;; *) dir="$root/$dir" ;; esac
dir="${dir%/}"
if [ -e "$dir" ] && [ ! -f "$dir/MANIFEST.json" ] && [ -n "$(ls -A "$dir")" ]; then
    die "$dir exists and is not a device-check folder (no MANIFEST.json); not replacing it"
fi
mkdir -p "$(dirname "$dir")"
stage=$(mktemp -d "$dir.tmp.XXXXXX")
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"
mkdir -p "$stage/bin" "$stage/tests" "$stage/data" "$stage/probe" "$stage/scenarios"
cp configs/scenarios/replicas-gpu.toml configs/scenarios/replicas-gpu-one.toml "$stage/scenarios/"
strip --strip-debug -o "$stage/bin/setpoint" "$bin"
for t in "${test_bins[@]}"; do
    [ -x "$t" ] || die "$t is not an executable test binary"
    # cargo names test binaries NAME-HASH: keep NAME.
    name=$(basename "$t")
    strip --strip-debug -o "$stage/tests/${name%-*}" "$t"
done
if [ -n "$digits" ]; then
    cp "$digits" "$stage/data/digits.csv.gz"
    chmod 644 "$stage/data/digits.csv.gz"
fi
cp "$here/run.sh" "$here/run.py" "$here/report.py" "$here/sections.py" "$here/torch_gpu.py" \
    "$root/scripts/peers/torch_bench.py" "$stage/"
cp "$here/probe.cu" "$here/probe_report.cuh" "$here/probe_wgmma.cuh" "$here/probe-build.sh" \
    kernels/gemm.cu kernels/gemm_large.cu kernels/gemm_small.cu kernels/gemm_wgmma.cu \
    kernels/common.cuh "$stage/probe/"
if [ "$dry_run" = 0 ] && [ "$probe_check" = 1 ]; then
    nvcc_path=$("$here/probe-nvcc.sh") || die "could not install nvcc to check the probe (--no-probe-check skips the check)"
    echo "prepare: compiling the probe for sm_90a with $nvcc_path (no linking)" >&2
    obj=$(mktemp -d)
    if ! NVCC="$nvcc_path" bash "$stage/probe/probe-build.sh" --compile-only "$stage/probe" "$obj/probe.o" sm_90 >&2; then
        rm -rf "$obj"
        die "the probe does not compile (above); fix it before taking it to a GPU"
    fi
    rm -rf "$obj"
elif [ "$dry_run" = 0 ]; then
    echo "prepare: warning: --no-probe-check: the probe was not compiled here" >&2
fi

rev=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
dirty=false
[ -n "$(git status --porcelain 2>/dev/null)" ] && dirty=true
version=$("$stage/bin/setpoint" --version 2>/dev/null || echo "setpoint (version unknown)")
# What travels with the folder: the working tree less what git ignores.
tree_bytes=$({ git ls-files -z --cached --others --exclude-standard 2>/dev/null || true; } |
    python3 -c '
import os, sys
print(sum(os.path.getsize(p) for p in sys.stdin.read().split("\0") if p and os.path.isfile(p)))')
python3 - "$stage" "$profile" "$rev" "$dirty" "$version" "$dry_run" "$tree_bytes" "$max_mib" <<'PY'
import datetime, json, os, sys
stage, profile, rev, dirty, version, dry_run, tree, max_mib = sys.argv[1:]
files = {}
for root, _, names in os.walk(stage):
    for n in names:
        p = os.path.join(root, n)
        files[os.path.relpath(p, stage)] = os.path.getsize(p)
manifest = {
    "format": "setpoint-device-bundle-v1",
    "prepared_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "setpoint_version": version,
    "git_rev": rev,
    "git_dirty": dirty == "true",
    "profile": profile,
    "dry_run": dry_run == "1",
    "working_tree_bytes": int(tree),
    "limit_mib": int(max_mib),
    "files": dict(sorted(files.items())),
}
with open(os.path.join(stage, "MANIFEST.json"), "w") as f:
    json.dump(manifest, f, indent=1)
    f.write("\n")
PY

bundle_bytes=$(du -sb --apparent-size "$stage" | cut -f1)
total=$((bundle_bytes + tree_bytes))
mib() { python3 -c "print('%.1f' % ($1 / 1048576))"; }
echo "prepare: folder $(mib "$bundle_bytes") MiB (setpoint $(mib "$(stat -c %s "$stage/bin/setpoint")") MiB," \
    "tests $(mib "$(du -sb --apparent-size "$stage/tests" | cut -f1)") MiB);" \
    "working tree $(mib "$tree_bytes") MiB; together $(mib "$total") MiB of $max_mib MiB" >&2
if [ "$total" -gt $((max_mib * 1048576)) ]; then
    die "refused: the folder ($(mib "$bundle_bytes") MiB) and the working tree ($(mib "$tree_bytes") MiB)" \
        "come to $(mib "$total") MiB, over the $max_mib MiB that can be carried; nothing was written to $dir"
fi
rm -rf "$dir"
mv "$stage" "$dir"
trap - EXIT
rel=${dir#"$root"/}
echo "prepare: ready in $rel ($profile binaries, commit $rev$([ "$dirty" = true ] && echo ', uncommitted changes'))" >&2
if [ "$dry_run" = 1 ]; then
    echo "prepare: run the plumbing here with: bash $rel/run.sh --dry-run --out DIR" >&2
else
    echo "prepare: carry $rel and run there: bash $rel/run.sh   (writes to \$OUT)" >&2
fi
