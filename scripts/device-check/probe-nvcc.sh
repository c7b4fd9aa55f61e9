#!/usr/bin/env bash
# Installs nvcc with the headers the device check's probe includes (the CUDA runtime, cuBLAS,
# CCCL) from NVIDIA's PyPI wheels, at CUDA 13.0 as on the GPU host the check last ran on, into
# .cuda-tools/probe-nvcc/ (git-ignored), and prints the path of nvcc. prepare.sh compiles the
# probe with it (probe-build.sh --compile-only, no linking), so that a probe that does not
# build is found here rather than during a GPU lease. Does nothing when already installed.
#
#   scripts/device-check/probe-nvcc.sh          install if needed; print the nvcc path
#
# The cuBLAS wheel is about 420 MB to download; only its headers are kept. Needs python3 with
# pip (PYTHON overrides the interpreter) and access to PyPI or a mirror pip is configured for.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="$root/.cuda-tools/probe-nvcc"
stamp="$dir/.installed-13.0"
nvcc="$dir/nvidia/cu13/bin/nvcc"
wheels=(
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14
)

if [ ! -f "$stamp" ] || [ ! -x "$nvcc" ]; then
    python="${PYTHON:-python3}"
    "$python" -m pip --version >/dev/null 2>&1 || {
        echo "probe-nvcc.sh: '$python -m pip' is not available" >&2
        exit 1
    }
    echo "probe-nvcc.sh: installing ${wheels[*]} into $dir" >&2
    # pip --target merges the wheels' shared nvidia/ folder only within one install: install
    # them together into a fresh folder and swap it in whole.
    tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --target "$tmp" "${wheels[@]}" >&2 || {
        echo "probe-nvcc.sh: pip could not install the wheels (see above)" >&2
        exit 1
    }
    rm -f "$tmp"/nvidia/cu13/lib/libcublas*.so* "$tmp"/nvidia/cu13/lib/libnvblas*.so*
    [ -x "$tmp/nvidia/cu13/bin/nvcc" ] || {
        echo "probe-nvcc.sh: the wheels installed but have no nvidia/cu13/bin/nvcc" >&2
        exit 1
    }
    touch "$tmp/.installed-13.0"
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    mv "$tmp" "$dir"
    trap - EXIT
fi
echo "$nvcc"
