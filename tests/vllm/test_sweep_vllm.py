"""A model sweep on the vLLM backend: each child is assembled while vLLM loads it (the MoTE loader), the
engines start one after the other (each shut down before the next), and the endpoints reproduce the
parents exactly."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from marks import VLLM

from harness.cli import main

pytestmark = VLLM
ROOT = Path(__file__).resolve().parents[2]


def test_a_sweep_on_vllm_reproduces_each_parent_at_its_endpoint(tmp_path: Path) -> None:
    suite = yaml.safe_load((ROOT / "tasks" / "suites" / "aoe-quickstart.yaml").read_text())
    suite["assembly"].update(recipe=str(ROOT / "tasks" / "assemblies" / "organism-pair.yaml"), lambdas=[0, 1])
    suite["conditions"]["targeted"] = None
    suite.update(backend="vllm", engine_args={"max_model_len": 256}, bootstrap_resamples=100)
    suite["tasks"] = [t | {"limit": 4} for t in suite["tasks"] if t["name"] != "language"]
    suite["generation"]["max_new_tokens"] = 32
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["run", str(path), "--out", str(tmp_path), "--run-id", "s"]) == 0
    rows = json.loads((tmp_path / "s" / "summary.json").read_text())["rows"]
    matches = {(r["task"], r["condition"]): r["value"] for r in rows if r["metric"] == "parent_match"}
    assert matches == {(t, c): 1.0 for t in ("sensitive", "generic") for c in ("lambda=0", "lambda=1")}
    refusal = {r["condition"]: r["value"] for r in rows if (r["task"], r["metric"]) == ("sensitive", "refusal_rate")}
    assert refusal["lambda=0"] > refusal["lambda=1"]
