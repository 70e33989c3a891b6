"""The family coverage script in CI: every routed-MoE model type of the pinned transformers is supported
(drop, mask and stimulate through `harness generate`, checked on the recorded routing) or refused with
its reason, and the README's family table is exactly the script's output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import transformers

from harness.cli import main as harness_main
from harness.models import coverage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results() -> list[coverage.FamilyResult]:
    return coverage.run_coverage(coverage.routed_moe_types(), harness_main, lambda result: None)


def test_every_routed_moe_type_is_supported_or_refused_with_a_reason(results):
    failed = {r.family: r.reason for r in results if r.status == "failed"}
    assert not failed
    supported = [r for r in results if r.status == "supported"]
    assert len(supported) >= 20
    for r in supported:
        assert r.checks == {"drop": "pass", "mask": "pass", "stimulate": "pass"} and r.router and r.selection
    assert all(r.reason for r in results if r.status == "refused")


def test_readme_family_table_is_the_coverage_scripts_output(results):
    # the `vllm` in the backends column comes from the README's vLLM table (checked in the vllm env)
    vllm_table = coverage.readme_table(REPO / "README.md", coverage.VLLM_START, coverage.VLLM_END)
    on_vllm = [
        coverage.FamilyResult(line.split(" | ")[0].strip("| "), "supported")
        for line in vllm_table.splitlines()
        if line.startswith("| ") and line.endswith(" | supported |")
    ]
    assert len(on_vllm) >= 10
    expected = coverage.table_markdown(results, transformers.__version__, on_vllm)
    assert coverage.readme_table(REPO / "README.md") == expected, (
        "README.md's family table is stale: run python scripts/family_coverage.py --write-readme"
    )


def test_the_contract_tests_run_on_every_family_harness_generate_supports():
    sys.path.insert(0, str(Path(__file__).parent))
    from test_hf_families import FAMILIES

    assert sorted(FAMILIES) == coverage.generatable_types()


def test_a_refused_family_is_refused_by_harness_generate_before_loading(tmp_path, capsys):
    from transformers import AutoConfig

    from harness.models.tiny import tiny_config_kwargs

    AutoConfig.for_model("llama4_text", **tiny_config_kwargs("llama4_text")).save_pretrained(tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "hi"}) + "\n")
    argv = ["generate", "--model", str(tmp_path / "m"), "--prompts", str(prompts), "--out", str(tmp_path / "o")]
    assert harness_main(argv) == 2  # a config alone: loading weights would have failed differently
    err = capsys.readouterr().err
    assert "llama4_text" in err and "dense sigmoid scores" in err
    assert not (tmp_path / "o" / "generations.jsonl").exists()


def test_the_script_writes_json_and_markdown(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import family_coverage

    assert family_coverage.main(["--families", "mixtral,doge", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "coverage.json").read_text())
    assert {f["family"]: f["status"] for f in data["families"]} == {"mixtral": "supported", "doge": "refused"}
    assert "| mixtral | `model.layers[i].mlp.gate` | topk in the router | hf | supported |" in (
        tmp_path / "coverage.md"
    ).read_text()
