#!/usr/bin/env bash
# Device check of the HF hook path at real MoE shapes (see bench/gpu/README.md).
#   bash bench/gpu/check.sh OUT_DIR [--device cuda|cpu] [--small] [more hf_check.py options]
# Two stages in one call: the default batch (OUT_DIR/gpu_check.json), then batch 1, where a step is
# host-bound (OUT_DIR/batch1/gpu_check.json). Passing --batch runs that one batch size only.
# Needs torch + transformers + pydantic and this repository; installs and downloads nothing.
# MOTE_WHEELS=DIR: install the wheels in DIR (no index, no deps) into a temporary folder first: the
# GPU image has no pydantic. PYTHON=...: the interpreter (default python3, else python).
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 OUT_DIR [--device cuda|cpu] [--small] [hf_check.py options]" >&2
    exit 2
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# deterministic cuBLAS for the bit-identity checks (torch.use_deterministic_algorithms needs it)
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"

if [[ -n "${MOTE_WHEELS:-}" ]]; then
    SITE="$(mktemp -d -t mote-site-XXXXXX)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$MOTE_WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:$SITE"
fi

# fail in a second, naming what is missing, rather than after a model build
"$PYTHON" - <<'PY'
import importlib.util
import sys

need = ("torch", "transformers", "tokenizers", "numpy", "yaml", "pydantic", "harness")
missing = [name for name in need if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"missing Python modules: {', '.join(missing)} (carry wheels and set MOTE_WHEELS; bench/gpu/README.md)")
PY

OUT="$1"
shift
status=0
"$PYTHON" "$REPO/bench/gpu/hf_check.py" "$OUT" "$@" || status=$?
if [[ " $* " != *" --batch "* && " $* " != *" --batch="* ]]; then
    "$PYTHON" "$REPO/bench/gpu/hf_check.py" "$OUT/batch1" --batch 1 --timing-budget-s 60 "$@" || status=$?
fi
exit "$status"
