#!/usr/bin/env bash
# The device check, run on the GPU host from the folder prepare.sh made:
#
#   bash .device-check/run.sh [--dry-run] [--out DIR] ...     (run.py --help for every option)
#
# Needs python3 (PyTorch there is measured if present), coreutils' timeout, and the NVIDIA
# driver; the toolkit's nvcc and compute-sanitizer where available.
exec python3 "$(dirname "$0")/run.py" "$@"
