"""Two tensor-parallel workers behave exactly like one device (what can be tested of TP/EP on CPU)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from marks import VLLM

from harness.backends.base import GenerationRequest, GenerationSettings
from harness.mote import Intervention

pytestmark = [*VLLM, pytest.mark.slow]


@pytest.mark.skipif((os.cpu_count() or 1) < 2 and torch.cuda.device_count() < 2, reason="needs 2 CPU cores or 2 GPUs")
def test_two_tensor_parallel_workers_match_hf(vllm_model_dir, hf_backend, monkeypatch):
    from harness.backends.vllm import VLLMBackend

    if not torch.cuda.is_available():
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per worker (one NUMA node here)
    engine = VLLMBackend(vllm_model_dir("qwen3_moe"), max_model_len=512, tensor_parallel_size=2)
    try:
        statuses = engine.llm.collective_rpc("mote_status")
        assert len(statuses) == 2 and statuses[0]["moe_layers"] == statuses[1]["moe_layers"]
        ivs = [
            Intervention.none(),
            Intervention.suppress({0: [0, 1], 2: [2]}, mode="mask"),
            Intervention.suppress({1: [4]}, mode="drop"),
            Intervention.stimulate({0: [3]}),
        ]
        prompt = "What happened in the city last year? Let me think about it step by step."
        requests = [GenerationRequest(id=str(i), prompt=prompt, intervention=iv) for i, iv in enumerate(ivs)]
        settings = GenerationSettings(max_new_tokens=12, record_routing=True)
        got, expected = engine.generate(requests, settings), hf_backend("qwen3_moe").generate(requests, settings)
        for v, h in zip(got, expected, strict=True):
            assert v.text == h.text
            assert np.array_equal(np.sort(v.routing.topk_ids, -1), np.sort(h.routing.topk_ids, -1))
    finally:
        engine.close()
