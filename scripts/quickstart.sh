#!/usr/bin/env bash
# The main job: install the harness (CPU), then run the quickstart.
# Until the organism and `harness run` land, the quickstart builds a tiny random Qwen3-MoE and runs
# `harness generate` on it with a suppression intervention and routing records.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_CONSTRAINT="$PWD/constraints/cpu.txt"
if [[ ! -x .venv/bin/harness ]]; then
    python3 -m venv .venv
    .venv/bin/pip install -q torch==2.13.0
    .venv/bin/pip install -q -e ".[hf]"
fi
out=results/quickstart
mkdir -p "$out"
.venv/bin/harness tiny-model --family qwen3_moe --out "$out/model"
.venv/bin/harness generate --model "$out/model" --backend hf \
    --prompts tasks/examples/prompts.jsonl --intervention tasks/examples/suppress.yaml \
    --record-routing --out "$out/generate" --max-tokens 24 --overwrite
echo "wrote $out/generate/generations.jsonl and $out/generate/routing/"
