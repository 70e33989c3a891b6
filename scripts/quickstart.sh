#!/usr/bin/env bash
# The main job: install the harness (CPU), run the quickstart suite on the model organism, gate it
# and write the leaderboard. Everything is offline; the organism ships inside the package.
#   results/quickstart/summary.json, leaderboard.md   the run (resumable: rerun continues it)
#   results/quickstart/report/index.html              leaderboard and plots (static page)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_CONSTRAINT="$PWD/constraints/cpu.txt"
if [[ ! -x .venv/bin/harness ]]; then
    python3 -m venv .venv
    .venv/bin/pip install -q torch==2.13.0
    .venv/bin/pip install -q -e ".[hf,report]"
fi
run=results/quickstart
if [[ -f $run/run.json ]]; then
    .venv/bin/harness run tasks/suites/quickstart.yaml --resume "$run"
else
    .venv/bin/harness run tasks/suites/quickstart.yaml --out results --run-id quickstart
fi
.venv/bin/harness gate "$run" --rules tasks/gates/quickstart.yaml --junit "$run/gate.xml"
.venv/bin/harness report "$run" --format md,csv,html --out "$run/report"
echo "leaderboard: $run/leaderboard.md   report: $run/report/index.html"
