#!/usr/bin/env bash
# Builds the device check's CUDA probe: probe.cu with the project's GEMM kernels (gemm.cu and
# common.cuh, copied beside it by prepare.sh) compiled in as CUDA C++, linked with cuBLAS.
#
#   probe-build.sh SRC_DIR OUT_BINARY [sm_XX]        (NVCC overrides the nvcc on PATH)
#
# When the toolkit has no libcublas.so to link with, the cuBLAS that PyTorch's NVIDIA wheels
# bring (libcublas.so.13 or .12) is linked by path, with an rpath to find it at run time.
set -euo pipefail
src=${1:?usage: probe-build.sh SRC_DIR OUT_BINARY [sm_XX]}
out=${2:?usage: probe-build.sh SRC_DIR OUT_BINARY [sm_XX]}
arch=${3:-sm_90}
nvcc=${NVCC:-nvcc}
mkdir -p "$(dirname "$out")"

build() {
    echo "+ $nvcc -O3 -std=c++17 -arch=$arch -lineinfo -I$src -o $out $src/probe.cu $*"
    "$nvcc" -O3 -std=c++17 -arch="$arch" -lineinfo -I"$src" -o "$out" "$src/probe.cu" "$@"
}

if build -lcublas; then
    exit 0
fi
echo "linking with -lcublas failed; looking for the cuBLAS of the Python NVIDIA wheels" >&2
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
    exit 1
fi
dir=$(dirname "$lib")
build -L"$dir" -l:"$(basename "$lib")" -Xlinker -rpath="$dir"
