#!/usr/bin/env bash
# The GPU check is the device check now (scripts/device-check/): prepared where cargo is,
# run where the GPU is. On a host that has both, this does the two in one go:
#
#   scripts/gpu-check.sh [OUT_DIR] [run.sh options...]
#
# which is scripts/device-check/prepare.sh, then .device-check/run.sh --out OUT_DIR (default
# $OUT, else device-check-out). See scripts/device-check/run.py --help for the options.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-device-check-out}}
[ $# -gt 0 ] && shift
scripts/device-check/prepare.sh
exec bash .device-check/run.sh --out "$out" "$@"
