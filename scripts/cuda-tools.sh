#!/usr/bin/env bash
# Installs the CUDA tools that check the kernels on a host with no GPU and no CUDA toolkit:
# NVRTC (libnvrtc.so.12: `setpoint` compiles kernels/*.cu to PTX with it at run time) and
# ptxas (PTX to Hopper machine code; `ptxas -v` reports registers and spills), both from
# NVIDIA's PyPI wheels pinned below, into .cuda-tools/ at the repository root (git-ignored).
# It does nothing when those versions are already there, so it is safe to run every time.
#
#   scripts/cuda-tools.sh               install if needed, then print the environment to use
#   eval "$(scripts/cuda-tools.sh --env)"
#                                       install if needed and set the environment in this shell
#   source scripts/cuda-tools.sh        the same, for shells that prefer `source`
#   scripts/cuda-tools.sh --check       exit 0 when installed at the pinned versions, 1 if not
#
# The environment is two variables: LD_LIBRARY_PATH gains .cuda-tools/nvidia/cuda_nvrtc/lib
# (once), and PTXAS names .cuda-tools/nvidia/cuda_nvcc/bin/ptxas. Progress and errors go to
# stderr; stdout carries only the `export` lines. Needs python3 with pip (PYTHON overrides
# the interpreter) and access to PyPI or a mirror pip is configured for.

_cuda_tools_main() {
    local nvrtc_version="12.9.86" nvcc_version="12.9.86"
    local root dir lib ptxas mode="${1:-}"
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    dir="$root/.cuda-tools"
    lib="$dir/nvidia/cuda_nvrtc/lib"
    ptxas="$dir/nvidia/cuda_nvcc/bin/ptxas"

    case "$mode" in
        "" | --env | --check) ;;
        -h | --help)
            sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
            return 0
            ;;
        *)
            echo "cuda-tools.sh: unknown option '$mode' (use --env, --check or --help)" >&2
            return 2
            ;;
    esac

    _installed() {
        [ -d "$dir/nvidia_cuda_nvrtc_cu12-$nvrtc_version.dist-info" ] &&
            [ -d "$dir/nvidia_cuda_nvcc_cu12-$nvcc_version.dist-info" ] &&
            [ -f "$lib/libnvrtc.so.12" ] && [ -x "$ptxas" ]
    }

    if [ "$mode" = "--check" ]; then
        if _installed; then
            echo "CUDA tools present in $dir (NVRTC $nvrtc_version, ptxas $nvcc_version)" >&2
            return 0
        fi
        echo "CUDA tools missing or not at the pinned versions in $dir" >&2
        return 1
    fi

    if ! _installed; then
        local python="${PYTHON:-python3}" tmp
        if ! "$python" -m pip --version >/dev/null 2>&1; then
            echo "cuda-tools.sh: '$python -m pip' is not available; install python3 and pip" \
                "(or set PYTHON) and run again" >&2
            return 1
        fi
        echo "installing nvidia-cuda-nvrtc-cu12==$nvrtc_version and" \
            "nvidia-cuda-nvcc-cu12==$nvcc_version into $dir" >&2
        # Both wheels share the top-level `nvidia/` folder, which `pip install --target` will
        # not merge into an existing one: install both at once into a fresh folder, then
        # swap it in whole, so an interrupted run leaves the old state and no half install.
        tmp="$dir.tmp.$$"
        rm -rf "$tmp"
        if ! "$python" -m pip install --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: --target "$tmp" \
            "nvidia-cuda-nvrtc-cu12==$nvrtc_version" "nvidia-cuda-nvcc-cu12==$nvcc_version" >&2; then
            rm -rf "$tmp"
            echo "cuda-tools.sh: pip could not install the wheels (see above)" >&2
            return 1
        fi
        rm -rf "$dir" && mv "$tmp" "$dir" || return 1
        if ! _installed; then
            echo "cuda-tools.sh: the wheels installed but $lib/libnvrtc.so.12 or $ptxas" \
                "is missing; is this an x86_64 or aarch64 Linux host?" >&2
            return 1
        fi
    elif [ "$mode" = "" ]; then
        echo "CUDA tools already present in $dir (NVRTC $nvrtc_version, ptxas $nvcc_version)" >&2
    fi

    # The exports, evaluated in the caller's environment (which this process inherits), so
    # LD_LIBRARY_PATH gains the folder only once however often this runs.
    local ld="${LD_LIBRARY_PATH:-}"
    case ":$ld:" in
        *":$lib:"*) ;;
        *) ld="$lib${ld:+:$ld}" ;;
    esac
    _CUDA_TOOLS_LD_LIBRARY_PATH="$ld"
    _CUDA_TOOLS_PTXAS="$ptxas"
    if [ "$mode" = "" ] && [ "${_CUDA_TOOLS_SOURCED:-0}" = 0 ]; then
        echo "to use them in this shell: eval \"\$(scripts/cuda-tools.sh --env)\"" >&2
    fi
    return 0
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # Sourced: set the variables here, and leave the caller's shell options alone.
    _CUDA_TOOLS_SOURCED=1
    _CUDA_TOOLS_STATUS=0
    _cuda_tools_main "$@" || _CUDA_TOOLS_STATUS=$?
    if [ "$_CUDA_TOOLS_STATUS" = 0 ] && [ -n "${_CUDA_TOOLS_PTXAS:-}" ]; then
        export LD_LIBRARY_PATH="$_CUDA_TOOLS_LD_LIBRARY_PATH"
        export PTXAS="$_CUDA_TOOLS_PTXAS"
    fi
    unset -f _cuda_tools_main _installed
    set -- "$_CUDA_TOOLS_STATUS"
    unset _CUDA_TOOLS_SOURCED _CUDA_TOOLS_LD_LIBRARY_PATH _CUDA_TOOLS_PTXAS _CUDA_TOOLS_STATUS
    return "$1"
else
    set -euo pipefail
    status=0
    _cuda_tools_main "$@" || status=$?
    if [ "$status" -ne 0 ] || [ "${1:-}" = "--check" ] || [ "${1:-}" = "-h" ] ||
        [ "${1:-}" = "--help" ]; then
        exit "$status"
    fi
    printf 'export LD_LIBRARY_PATH=%q\n' "$_CUDA_TOOLS_LD_LIBRARY_PATH"
    printf 'export PTXAS=%q\n' "$_CUDA_TOOLS_PTXAS"
fi
