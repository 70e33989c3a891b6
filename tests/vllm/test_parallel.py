"""Two workers behave exactly like one device: tensor parallel (eager) and pipeline parallel (compiled:
vLLM 0.32's eager CPU runner never allocates the buffer a second pipeline stage receives into, so
`pipeline_parallel_size=2` fails there with or without the plugin). What can be tested of TP/EP/PP on
CPU."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from marks import VLLM

from harness.backends.base import GenerationRequest, GenerationSettings
from harness.mote import Intervention
from harness.mote.records import Span

pytestmark = [*VLLM, pytest.mark.slow]
TWO_WORKERS = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2 and torch.cuda.device_count() < 2, reason="needs 2 CPU cores or 2 GPUs"
)
PROMPT = "What happened in the city last year? Let me think about it step by step."
SETTINGS = GenerationSettings(max_new_tokens=12, record_routing=True)


@TWO_WORKERS
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
        requests = [GenerationRequest(id=str(i), prompt=PROMPT, intervention=iv) for i, iv in enumerate(ivs)]
        got, expected = engine.generate(requests, SETTINGS), hf_backend("qwen3_moe").generate(requests, SETTINGS)
        for v, h in zip(got, expected, strict=True):
            assert v.text == h.text
            assert np.array_equal(np.sort(v.routing.topk_ids, -1), np.sort(h.routing.topk_ids, -1))
    finally:
        engine.close()


@TWO_WORKERS
def test_two_pipeline_stages_record_every_layer_and_apply_second_stage_interventions(
    vllm_model_dir, compiled_backend, monkeypatch
):
    from harness.backends.vllm import VLLMBackend

    if not torch.cuda.is_available():
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    engine = VLLMBackend(vllm_model_dir("qwen3_moe"), max_model_len=512, enforce_eager=False, pipeline_parallel_size=2)
    try:
        statuses = engine.llm.collective_rpc("mote_status")
        stages = [sorted(int(k) for k in s["moe_layers"]) for s in statuses]
        assert stages == [[0, 1], [2]]  # each stage holds part of the MoE layers
        assert engine.spec == compiled_backend.spec  # the merged spec is the whole model
        late = engine.spec.moe_layers[-1]  # a layer of the second stage
        ivs = [
            Intervention.none(),
            Intervention.suppress({0: [0, 1], late: [2]}, mode="mask"),
            Intervention.suppress({late: [4]}, mode="drop"),
            Intervention.stimulate({late: [3]}),
        ]
        requests = [GenerationRequest(id=str(i), prompt=PROMPT, intervention=iv) for i, iv in enumerate(ivs)]
        got, expected = engine.generate(requests, SETTINGS), compiled_backend.generate(requests, SETTINGS)
        for v, one in zip(got, expected, strict=True):
            assert v.text == one.text, v.id
            assert v.routing.layers.tolist() == one.routing.layers.tolist() == [0, 1, 2]
            assert np.array_equal(v.routing.topk_ids, one.routing.topk_ids), v.id
            np.testing.assert_allclose(v.routing.topk_weights, one.routing.topk_weights, rtol=1e-5, atol=1e-6)
        column = got[0].routing.layers.tolist().index(late)
        assert not np.isin(got[1].routing.topk_ids[:, column], [2]).any()
        assert (got[2].routing.topk_ids[:, column] == -1).any() and not (got[2].routing.topk_ids[:, column] == 4).any()
        assert (got[3].routing.topk_ids[:, column] == 3).any(-1).all()
        # device-side counts, merged over the two stages, equal the per-token records' span counts
        counted = engine.generate(requests, replace(SETTINGS, routing_counts_only=True))
        n_experts = max(engine.spec.n_experts.values())
        for c, one in zip(counted, expected, strict=True):
            assert c.span_counts is not None and one.routing is not None
            reference = one.routing.span_counts(n_experts)
            for span in Span:
                assert np.array_equal(c.span_counts.counts[span], reference.counts[span]), (c.id, span)
                assert c.span_counts.tokens[span] == reference.tokens[span], (c.id, span)
    finally:
        engine.close()
