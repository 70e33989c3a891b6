"""docs/gpu.md's ratio tables are those of the device-check runs committed beside it (docs/bench/hf_*.json)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "gpu.md"
RUNS = sorted((REPO / "docs" / "bench").glob("hf_*.json"))


@pytest.fixture
def hf_check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench" / "gpu"))
    return importlib.import_module("hf_check")


def test_every_committed_run_is_linked_from_the_doc():
    assert RUNS, "no committed device-check run"
    linked = set(re.findall(r"\(bench/(hf_[a-z0-9_]+\.json)\)", DOC.read_text(encoding="utf-8")))
    assert linked == {run.name for run in RUNS}


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_the_doc_holds_each_runs_ratio_table_as_the_script_prints_it(hf_check, run):
    table = hf_check.ratio_table(json.loads(run.read_text(encoding="utf-8")))
    assert table in DOC.read_text(encoding="utf-8"), (
        f"docs/gpu.md is out of date: python bench/gpu/hf_check.py --table {run.relative_to(REPO)}"
    )


def test_the_table_gives_median_and_range_of_each_condition_per_model(hf_check):
    ratio = {"median": 0.9871, "min": 0.5, "max": 1.25}
    report = {
        "conditions": ["unhooked", "hooked_none", "recording"],
        "models": {"olmoe": {"name": "OLMoE-1B-7B", "ratios_vs_unhooked": {"hooked_none": ratio, "recording": ratio}}},
    }
    assert hf_check.ratio_table(report).splitlines() == [
        "| model | hooked, none | recording |",
        "|---|---|---|",
        "| OLMoE-1B-7B shape | 0.987 (0.50-1.25) | 0.987 (0.50-1.25) |",
    ]
