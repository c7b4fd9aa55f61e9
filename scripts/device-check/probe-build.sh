#!/usr/bin/env bash
# Builds the device check's CUDA probe: probe.cu (with probe_report.cuh and probe_wgmma.cuh)
# and the project's GEMM kernels (gemm*.cu and common.cuh, copied beside it by prepare.sh)
# compiled in as CUDA C++, linked with cuBLAS.
#
#   probe-build.sh SRC_DIR OUT_BINARY [sm_XX]        (NVCC overrides the nvcc on PATH)
#   probe-build.sh --compile-only SRC_DIR OUT_OBJECT [sm_XX]
#
# For sm_90 it builds for sm_90a (compute_90a), which gemm_bf16_wgmma needs, and defines
# PROBE_SM90A so that the probe runs it; when that build fails (an nvcc without sm_90a, or an
# error in the wgmma part) it says so and builds for sm_90 without it, so the rest of the
# check still runs (the probe then reports the wgmma part as not run). --compile-only stops
# before linking (no cuBLAS library needed): prepare.sh uses it to check the probe compiles.
#
# When the toolkit has no libcublas.so to link with, the cuBLAS that PyTorch's NVIDIA wheels
# bring (libcublas.so.13 or .12) is linked by path, with an rpath to find it at run time.
set -euo pipefail
compile_only=0
if [ "${1:-}" = "--compile-only" ]; then
    compile_only=1
    shift
fi
src=${1:?usage: probe-build.sh [--compile-only] SRC_DIR OUT_BINARY [sm_XX]}
out=${2:?usage: probe-build.sh [--compile-only] SRC_DIR OUT_BINARY [sm_XX]}
arch=${3:-sm_90}
nvcc=${NVCC:-nvcc}
mkdir -p "$(dirname "$out")"

targets=(-arch="$arch")
if [ "$arch" = sm_90 ]; then
    targets=(-gencode arch=compute_90a,code=sm_90a -DPROBE_SM90A)
fi

build() {
    local step=()
    [ "$compile_only" = 1 ] && step=(-c)
    echo "+ $nvcc -O3 -std=c++17 ${targets[*]} -lineinfo -I$src ${step[*]} -o $out $src/probe.cu $*"
    "$nvcc" -O3 -std=c++17 "${targets[@]}" -lineinfo -I"$src" "${step[@]}" -o "$out" "$src/probe.cu" "$@"
}

link_cublas() {
    if [ "$compile_only" = 1 ]; then
        build
        return
    fi
    if build -lcublas; then
        return 0
    fi
    echo "linking with -lcublas failed; looking for the cuBLAS of the Python NVIDIA wheels" >&2
    local lib dir
    lib=$(python3 - <<'PY'
import glob, os, site
dirs = site.getsitepackages() + [site.getusersitepackages()]
for d in dirs:
    for pattern in ("nvidia/*/lib/libcublas.so.*", "nvidia/cublas/lib/libcublas.so.*"):
        for path in sorted(glob.glob(os.path.join(d, pattern)), reverse=True):
            if "Lt" not in os.path.basename(path):
                print(path)
                raise SystemExit
PY
)
    if [ -z "$lib" ]; then
        echo "no libcublas.so.* found in the Python packages either" >&2
        return 1
    fi
    dir=$(dirname "$lib")
    build -L"$dir" -l:"$(basename "$lib")" -Xlinker -rpath="$dir"
}

if link_cublas; then
    exit 0
fi
if [ "$arch" = sm_90 ] && [ "$compile_only" = 0 ]; then
    echo "probe-build: the sm_90a build failed (above); building for sm_90 without" \
        "gemm_bf16_wgmma" >&2
    targets=(-arch=sm_90)
    link_cublas
    exit $?
fi
exit 1
