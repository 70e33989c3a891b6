"""The vLLM speed figures in the README and docs/vllm.md are the tables of one benchmark JSON
(docs/bench/vllm_cpu.json, written by bench/vllm_bench.py): medians over rounds with their range,
for every size and sweep setting the run measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULT = REPO / "docs" / "bench" / "vllm_cpu.json"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vllm_bench", REPO / "bench" / "vllm_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("doc", ["README.md", "docs/vllm.md"])
def test_documented_figures_are_the_tables_of_the_committed_run(doc):
    module = bench()
    report = json.loads(RESULT.read_text())
    text = (REPO / doc).read_text()
    assert f"source={RESULT.relative_to(REPO)}" in text, f"{doc}: the figures must name their JSON"
    assert module.block_of(text) == module.markdown(report), (
        f"{doc} is out of date: python bench/vllm_bench.py --table {RESULT.relative_to(REPO)} --write-docs"
    )


def test_the_committed_run_covers_the_sizes_and_sweeps_the_goals_name():
    report = json.loads(RESULT.read_text())
    sizes = {(s["prompts"], s["max_tokens"]) for s in report["sizes"]}
    assert {(16, 64), (16, 256), (64, 64), (64, 256)} <= sizes
    assert {s["prompts"] for s in report["sweep"]} >= {32, 128}
    for size in report["sizes"]:
        for ratio in size["ratios_vs_stock"].values():
            assert ratio["rounds"] >= 5 and ratio["min"] <= ratio["median"] <= ratio["max"]


def test_ratios_are_per_round_and_reported_as_median_and_range():
    module = bench()
    runs = {c: [1.0, 1.0, 1.0] for c in module.CONDITIONS}
    runs["recording"] = [1.25, 1.0, 2.0]  # stock seconds / recording seconds: 0.8, 1.0, 0.5
    summary = module.size_summary(16, 64, runs, {c: 1024 for c in module.CONDITIONS})
    assert summary["ratios_vs_stock"]["recording"] == {"median": 0.8, "min": 0.5, "max": 1.0, "rounds": 3}
    assert summary["goals_met"]["recording"] is False and summary["goals_met"]["idle"] is True


def test_sizes_are_checked():
    module = bench()
    assert module.parse_args(["--sizes", "16x64, 64x256"]).size_list == [(16, 64), (64, 256)]
    assert module.parse_args(["--prompts", "32", "--max-tokens", "128"]).size_list == [(32, 128)]
    with pytest.raises(SystemExit, match="not PROMPTSxTOKENS"):
        module.parse_args(["--sizes", "16by64"])
