"""vLLM and the HF reference agree: same prompts and interventions -> same top-k and greedy text."""

from __future__ import annotations

import numpy as np
import pytest
from marks import VLLM

from harness.backends.base import GenerationRequest, GenerationSettings
from harness.mote import Intervention
from harness.mote.agreement import rows_fed_alike, topk_disagreements

pytestmark = VLLM

FP32_FAMILIES = ["qwen3_moe", "mixtral", "qwen2_moe"]
PROMPTS = [
    "What happened in the city last year? Let me think about it step by step.",
    "Hi?",
    "Explain how a mixture of experts routes tokens to experts in each layer.",
]
SETTINGS = GenerationSettings(max_new_tokens=16, record_routing=True)


def interventions(spec) -> dict[str, Intervention]:
    first, last = spec.moe_layers[0], spec.moe_layers[-1]
    targets = {first: [0, 1], last: [2]}
    return {
        "none": Intervention.none(),
        "drop": Intervention.suppress(targets, mode="drop"),
        "mask": Intervention.suppress(targets, mode="mask"),
        "stimulate": Intervention.stimulate({first: [3], last: [4]}),
    }


def batch(spec) -> list[GenerationRequest]:
    return [
        GenerationRequest(id=f"{name}-{p}", prompt=prompt, intervention=iv)
        for p, prompt in enumerate(PROMPTS)
        for name, iv in interventions(spec).items()
    ]


def sorted_routing(record) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(record.topk_ids, axis=-1, kind="stable")
    return np.take_along_axis(record.topk_ids, order, -1), np.take_along_axis(record.topk_weights, order, -1)


def agreement(vllm_results, hf_results) -> tuple[int, int]:
    """Token x layer top-k sets equal, over the rows both engines were fed alike (a flipped greedy token
    makes every later row route another input: those rows measure the text, not the routing)."""
    agree = total = 0
    for v, h in zip(vllm_results, hf_results, strict=True):
        rows = rows_fed_alike(v.n_prompt_tokens, v.token_ids, h.token_ids)
        differ, compared = topk_disagreements(v.routing, h.routing, rows)
        agree += compared - differ
        total += compared
    return agree, total


@pytest.mark.parametrize("family", FP32_FAMILIES)
def test_topk_and_greedy_text_equal_hf_for_every_intervention(vllm_backend, hf_backend, family):
    engine, reference = vllm_backend(family), hf_backend(family)
    assert engine.spec == reference.spec
    requests = batch(engine.spec)
    got, expected = engine.generate(requests, SETTINGS), reference.generate(requests, SETTINGS)
    for v, h in zip(got, expected, strict=True):
        assert v.text == h.text, v.id
        assert (v.n_prompt_tokens, v.n_generated_tokens, v.finish_reason) == (
            h.n_prompt_tokens,
            h.n_generated_tokens,
            h.finish_reason,
        ), v.id
        assert v.intervention == h.intervention
        assert v.routing.topk_ids.shape == h.routing.topk_ids.shape, v.id
        assert np.array_equal(v.routing.span, h.routing.span), v.id
        v_ids, v_w = sorted_routing(v.routing)
        h_ids, h_w = sorted_routing(h.routing)
        assert np.array_equal(v_ids, h_ids), v.id  # 100% of token x layer pairs
        np.testing.assert_allclose(v_w, h_w, rtol=1e-4, atol=1e-5, err_msg=v.id)


def test_deepseek_v3_bf16_topk_agreement_share_is_reported(vllm_backend, hf_backend, record_property):
    """bf16 on both sides, two engines' kernels: near-ties may flip, so the share over the rows fed alike is
    measured (and must stay high)."""
    engine, reference = vllm_backend("deepseek_v3"), hf_backend("deepseek_v3")
    assert engine.spec.moe_layers == reference.spec.moe_layers
    requests = batch(engine.spec)
    got, expected = engine.generate(requests, SETTINGS), reference.generate(requests, SETTINGS)
    agree, total = agreement(got, expected)
    texts = sum(v.text == h.text for v, h in zip(got, expected, strict=True))
    share = agree / total
    record_property("deepseek_v3_topk_agreement", share)
    record_property("deepseek_v3_text_agreement", texts / len(got))
    print(f"\ndeepseek_v3 bf16: top-k agreement {agree}/{total} = {share:.4f}; greedy texts {texts}/{len(got)}")
    assert share >= 0.9
