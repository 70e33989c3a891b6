#!/usr/bin/env bash
# The test command: lint, type check and tests, each in its own tox env that installs what it needs.
# Usage: bash scripts/test.sh [tox envs, default lint,type,py]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ ! -x .venv-tox/bin/tox ]]; then
    python3 -m venv .venv-tox
    .venv-tox/bin/pip install -q "tox>=4"
fi
.venv-tox/bin/tox run -e "${1:-lint,type,py}"
