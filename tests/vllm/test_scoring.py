"""Likelihood scoring on vLLM (what lm-eval's `loglikelihood` asks of `mote-vllm`) equals the HF
backend's under every intervention, greedy flags included, in one engine call."""

from __future__ import annotations

import pytest
import torch
from marks import VLLM

from harness.mote import Intervention

pytestmark = [*VLLM, pytest.mark.slow]

INTERVENTIONS = [
    Intervention.none(),
    Intervention.suppress({0: [0, 1], 2: [2]}, mode="drop"),
    Intervention.suppress({0: [0, 1], 2: [2]}, mode="mask"),
    Intervention.stimulate({0: [3], 2: [4]}),
]


def test_continuation_logprobs_match_hf_under_every_intervention(vllm_backend, hf_backend):
    engine, reference = vllm_backend("qwen3_moe"), hf_backend("qwen3_moe")

    def ids(text: str) -> list[int]:
        return list(reference.tokenizer(text, add_special_tokens=False)["input_ids"])

    context = ids("What happened in the city last year? Let me think.")
    with torch.no_grad():
        greedy_next = int(reference.model(input_ids=torch.tensor([context])).logits[0, -1].argmax())
    continuations = [ids(" Nothing much happened."), ids(" A festival")]
    pairs = [(context, c) for _ in INTERVENTIONS for c in continuations]
    rows = [iv for iv in INTERVENTIONS for _ in continuations]
    got = engine.continuation_logprobs(pairs, rows)
    expected = reference.continuation_logprobs(pairs, rows)
    for (value, greedy), (ref_value, ref_greedy) in zip(got, expected, strict=True):
        assert value == pytest.approx(ref_value, abs=2e-3)
        assert greedy == ref_greedy
    assert len({round(v, 4) for v, _ in got[:: len(continuations)]}) == len(INTERVENTIONS)  # each changes it
    assert engine.continuation_logprobs([(context, [greedy_next])], [Intervention.none()])[0][1] is True
