#!/usr/bin/env bash
# Checks Kubernetes objects against the API's published schemas (kubernetes-validate from
# PyPI, pinned below, strict: unknown fields are errors) for the Kubernetes version setpoint
# targets (1.34, where resource.k8s.io/v1 is GA). Installs the tool into .venv-kube/ at the
# repository root (git-ignored) the first time; later runs reuse it.
#
#   scripts/kube-validate.sh FILE...     validate YAML or JSON files (multi-document YAML too)
#   scripts/kube-validate.sh --install   install only
#
# Exit status: 0 when every object is valid, 1 when one is not (the tool names it and the
# field), 2 when the tool could not be installed.
set -euo pipefail

version="1.37.0"
k8s="1.34.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-kube"
tool="$venv/bin/kubernetes-validate"

installed="$("$venv/bin/pip" show kubernetes-validate 2>/dev/null || true)"
if ! grep -qx "Version: $version" <<<"$installed"; then
    echo "kube-validate: installing kubernetes-validate $version into .venv-kube/" >&2
    if ! { "${PYTHON:-python3}" -m venv "$venv" &&
        "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$version"; }; then
        echo "kube-validate: could not install kubernetes-validate $version (needs python3 with venv and pip, and PyPI)" >&2
        exit 2
    fi
fi
[ "${1:-}" = "--install" ] && exit 0
if [ "$#" -eq 0 ]; then
    echo "usage: scripts/kube-validate.sh FILE... (or --install)" >&2
    exit 2
fi
exec "$tool" --strict --quiet -k "$k8s" "$@"
