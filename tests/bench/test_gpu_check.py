"""The GPU device check (bench/gpu/check.sh) works end to end as a CPU dry run.

A GPU machine is rare and its time short: the check must run first time there. Its `--device cpu
--small` dry run goes through the same code (build, save, load via HFBackend, checks, alternating
timed rounds, JSON), so it is run here once and its report inspected. Speed is never asserted:
timings on a shared CPU say nothing, and the check itself never fails on speed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CONDITIONS = {"unhooked", "hooked_none", "drop", "mask", "stimulate", "recording"}
CHECKS = {
    "no_intervention_logits_identical",
    "no_intervention_tokens_identical",
    "dropped_experts_get_zero_weight",
    "suppressed_experts_absent_from_topk",
    "forced_experts_present_for_every_token",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dry_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu" / "check.sh"), str(out), "--device", "cpu", "--small"],
        cwd=tmp_path_factory.getbasetemp(),  # the wrapper must not depend on the caller's folder
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc, json.loads((out / "gpu_check.json").read_text(encoding="utf-8")), out


def test_the_dry_run_measures_every_condition_on_both_model_families(dry_run):
    _, report, _ = dry_run
    assert set(report["models"]) == {"olmoe", "qwen3_moe"}
    assert set(report["conditions"]) == CONDITIONS
    for model in report["models"].values():
        assert set(model["tokens_per_s"]) == CONDITIONS
        assert set(model["ratios_vs_unhooked"]) == CONDITIONS - {"unhooked"}
        assert all(len(runs) == model["rounds"] >= 1 for runs in model["runs_tokens_per_s"].values())


def test_every_ratio_and_rate_is_a_positive_number(dry_run):
    _, report, _ = dry_run
    for model in report["models"].values():
        for table in (model["tokens_per_s"], model["ratios_vs_unhooked"]):
            for stats in table.values():
                assert set(stats) == {"median", "min", "max"}
                assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in stats.values())
                assert stats["min"] <= stats["median"] <= stats["max"]


def test_every_correctness_check_passes_on_the_dry_run(dry_run):
    _, report, _ = dry_run
    assert report["passed"] is True
    for name, model in report["models"].items():
        assert set(model["checks"]) == CHECKS
        failed = {k: c["details"] for k, c in model["checks"].items() if not c["passed"]}
        assert not failed, f"{name}: {failed}"


def test_the_report_names_the_machine_the_shapes_and_the_time_spent(dry_run):
    proc, report, _ = dry_run
    assert report["machine"]["device"] == "cpu"
    assert report["machine"]["torch"] and report["machine"]["transformers"]
    assert report["settings"]["small"] is True
    for model in report["models"].values():
        shape = model["shape"]
        assert shape["num_experts"] > shape["num_experts_per_tok"] >= 1 and shape["params"] > 0
        assert model["seconds"] > 0 and "checks" in model["stages_s"]
    assert report["total_seconds"] > 0
    assert "wrote" in proc.stdout  # the printed summary ends with the report's path


def test_the_wrapper_refuses_a_missing_output_folder_with_usage():
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu" / "check.sh"), "--small"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_the_same_call_measures_batch_1_too(dry_run):
    _, report, out = dry_run
    batch1 = json.loads((out / "batch1" / "gpu_check.json").read_text(encoding="utf-8"))
    assert batch1["settings"]["batch"] == 1 and report["settings"]["batch"] != 1
    assert batch1["passed"] is True and set(batch1["models"]) == {"olmoe", "qwen3_moe"}
