"""The Assembly-of-Experts speed figures in the README are the table of the committed benchmark runs
(docs/bench/assembly_cpu.json from bench/assembly_bench.py, docs/bench/assembly_vllm_cpu.json from
bench/assembly_vllm_load.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START, END = "<!-- assembly-bench:start -->", "<!-- assembly-bench:end -->"


def test_readme_figures_are_the_table_of_the_committed_runs():
    spec = importlib.util.spec_from_file_location("assembly_bench", REPO / "bench" / "assembly_bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = json.loads((REPO / "docs" / "bench" / "assembly_cpu.json").read_text())
    vllm = json.loads((REPO / "docs" / "bench" / "assembly_vllm_cpu.json").read_text())
    readme = (REPO / "README.md").read_text()
    documented = readme.split(START)[1].split(END)[0].strip()
    assert documented == bench.table(report, vllm).strip()
