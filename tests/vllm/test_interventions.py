"""Interventions inside the engine: what is suppressed never runs, what is forced always runs, outputs
change, and requests of one batch never see each other's intervention."""

from __future__ import annotations

import json

import numpy as np
import pytest
from marks import VLLM

from harness.backends.base import GenerationRequest, GenerationSettings
from harness.mote import Intervention
from harness.mote.agreement import rows_fed_alike, topk_disagreements
from harness.vllm_plugin.protocol import INTERVENTION_KEY, RECORD_KEY, RPC_COUNTS, RPC_SET_GLOBAL, RPC_STATUS

pytestmark = VLLM

# the parity tests build these engines too (one per family per session, shared)
FAMILIES = ["qwen3_moe", "mixtral", "qwen2_moe", "deepseek_v3"]
PROMPT = "What happened in the city last year? Let me think about it step by step."
OTHER = "Explain how a mixture of experts routes tokens to experts in each layer."
SETTINGS = GenerationSettings(max_new_tokens=12, record_routing=True)


def targets(spec) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    first, last = spec.moe_layers[0], spec.moe_layers[-1]
    return {first: [0, 1], last: [2]}, {first: [3], last: [4]}


def column(record, layer):
    return record.topk_ids[:, list(record.layers).index(layer)]


@pytest.mark.parametrize("family", FAMILIES)
def test_suppressed_experts_never_chosen_and_stimulated_always_chosen(vllm_backend, family):
    engine = vllm_backend(family)
    suppressed, forced = targets(engine.spec)
    ivs = {
        "drop": Intervention.suppress(suppressed, mode="drop"),
        "mask": Intervention.suppress(suppressed, mode="mask"),
        "stimulate": Intervention.stimulate(forced),
    }
    results = engine.generate(
        [GenerationRequest(id=k, prompt=PROMPT, intervention=v) for k, v in ivs.items()], SETTINGS
    )
    by_id = {r.id: r.routing for r in results}
    for name in ("drop", "mask"):
        record = by_id[name]
        for layer, experts in suppressed.items():
            assert not np.isin(column(record, layer), experts).any(), f"{name}: layer {layer}"
        empty = int((record.topk_ids == -1).sum())
        assert empty > 0 if name == "drop" else empty == 0
    for layer, experts in forced.items():
        for expert in experts:
            assert (column(by_id["stimulate"], layer) == expert).any(-1).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_intervention_changes_the_next_token_distribution(vllm_backend, family):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine = vllm_backend(family)
    suppressed, forced = targets(engine.spec)
    ivs = [
        Intervention.none(),
        Intervention.suppress(suppressed, mode="drop"),
        Intervention.suppress(suppressed, mode="mask"),
        Intervention.stimulate(forced),
    ]
    text = engine.prompt_text(GenerationRequest(id="x", prompt=PROMPT))
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    params = [
        SamplingParams(
            max_tokens=1,
            temperature=0.0,
            logprobs=5,
            extra_args=None if iv.is_none else {INTERVENTION_KEY: iv.to_json()},
        )
        for iv in ivs
    ]
    outputs = engine.llm.generate([TokensPrompt(prompt_token_ids=ids)] * 4, params, use_tqdm=False)
    dists = [{t: lp.logprob for t, lp in out.outputs[0].logprobs[0].items()} for out in outputs]
    for iv, dist in zip(ivs[1:], dists[1:], strict=True):
        assert dist != dists[0], f"{iv.fingerprint()} left the next-token distribution unchanged"


# Families with shared experts whose stock vLLM CPU output is not reproducible run to run: the same
# 7-request batch run twice with the plugin off gave different logprobs (DeepSeek-V3 bf16; Qwen2-MoE fp32
# likewise with the plugin recording only). Once a greedy token flips, every later row routes another
# input, so their rows are compared only where both runs were fed the same tokens (the prompt and the
# common prefix of the generations, harness.mote.agreement), against the engine's own noise floor: the
# same uniform batch run twice. Measured (tiny models, 12 tokens): 0 of 110-114 token x layer pairs differ
# for mixed vs uniform and for uniform vs uniform, while a row under another row's intervention differs
# in 19-86 of them (none vs drop / mask / stimulate). NOISE_SLACK is the share of pairs by which mixed vs
# uniform may exceed the floor: far under the 0.17 of the smallest leak.
NOT_REPRODUCIBLE = {"qwen2_moe", "deepseek_v3"}
NOISE_SLACK = 0.03


def disagreement(a, b) -> float:
    """Share of token x layer top-k sets that differ over the rows both runs were fed alike."""
    rows = rows_fed_alike(a.n_prompt_tokens, a.token_ids, b.token_ids)
    differ, compared = topk_disagreements(a.routing, b.routing, rows)
    return differ / compared


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_batch_rows_match_uniform_batches_and_keep_their_own_intervention(vllm_backend, family):
    engine = vllm_backend(family)
    suppressed, forced = targets(engine.spec)
    layout = [
        (PROMPT, Intervention.none()),
        (PROMPT, Intervention.suppress(suppressed, mode="mask")),
        (OTHER, Intervention.none()),
        (OTHER, Intervention.stimulate(forced)),
        (PROMPT, Intervention.suppress(suppressed, mode="drop")),
    ]

    def run(ivs):
        requests = [
            GenerationRequest(id=str(i), prompt=p, intervention=iv)
            for i, ((p, _), iv) in enumerate(zip(layout, ivs, strict=True))
        ]
        return engine.generate(requests, SETTINGS)

    mixed = run([iv for _, iv in layout])
    uniform = {row: run([iv] * len(layout)) for row, (_, iv) in enumerate(layout)}  # every row under one
    for row, (_, iv) in enumerate(layout):
        a, b = mixed[row], uniform[row][row]
        assert a.intervention == b.intervention == iv.fingerprint()
        if family in NOT_REPRODUCIBLE:
            floor = disagreement(b, run([iv] * len(layout))[row])  # the engine against itself
            share = disagreement(a, b)
            assert share <= floor + NOISE_SLACK, (
                f"row {row} ({iv.fingerprint()}): {share:.3f} of top-k sets differ from the uniform batch "
                f"over the tokens fed alike; the same uniform batch run twice differs in {floor:.3f}"
            )
            continue
        assert a.text == b.text
        assert np.array_equal(a.routing.topk_ids, b.routing.topk_ids)
        assert np.array_equal(a.routing.topk_weights, b.routing.topk_weights)
    if family in NOT_REPRODUCIBLE:  # the check tells interventions apart: what a leak would look like fails it
        for row, leaked in ((0, 1), (0, 4), (2, 3), (1, 0)):
            share = disagreement(mixed[row], uniform[leaked][row])
            assert share > NOISE_SLACK, f"row {row} vs row {leaked}'s intervention: only {share:.3f} differ"
    # what each row asked for holds exactly in the mixed batch, whatever the engine's noise
    for layer, experts in suppressed.items():
        for row in (1, 4):
            assert not np.isin(column(mixed[row].routing, layer), experts).any(), f"row {row} layer {layer}"
    for layer, experts in forced.items():
        for expert in experts:
            assert (column(mixed[3].routing, layer) == expert).any(-1).all()
    assert (mixed[4].routing.topk_ids == -1).any() and not (mixed[0].routing.topk_ids == -1).any()


def test_global_intervention_rpc_applies_to_requests_without_their_own(vllm_backend):
    engine = vllm_backend("qwen3_moe")
    suppressed, _ = targets(engine.spec)
    iv = Intervention.suppress(suppressed, mode="mask")
    try:
        (fingerprint,) = engine.llm.collective_rpc(RPC_SET_GLOBAL, args=(iv.to_json(),))
        assert fingerprint == iv.fingerprint()
        (result,) = engine.generate([GenerationRequest(id="g", prompt=PROMPT)], SETTINGS)
        for layer, experts in suppressed.items():
            assert not np.isin(column(result.routing, layer), experts).any()
    finally:
        engine.llm.collective_rpc(RPC_SET_GLOBAL, args=("",))
    (status,) = engine.llm.collective_rpc(RPC_STATUS)
    assert status["global_intervention"] == "none" and status["pending_records"] == []


def test_count_maps_rpc_matches_per_token_record(vllm_backend):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine = vllm_backend("mixtral")
    (record_result,) = engine.generate([GenerationRequest(id="c", prompt=PROMPT)], SETTINGS)
    text = engine.prompt_text(GenerationRequest(id="c", prompt=PROMPT))
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    params = SamplingParams(
        max_tokens=SETTINGS.max_new_tokens,
        temperature=0.0,
        stop_token_ids=engine.stop_ids(),
        extra_args={RECORD_KEY: "counts-key"},
    )
    engine.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    (counts,) = engine.llm.collective_rpc(RPC_COUNTS, args=(json.dumps(["counts-key"]),))
    n_experts = engine.spec.n_experts[engine.spec.moe_layers[0]]
    expected = record_result.routing.counts(n_experts, span=None)
    prompt = np.asarray(counts["counts-key"]["prompt"])
    generated = np.asarray(counts["counts-key"]["generated"])
    assert np.array_equal(prompt, record_result.routing.counts(n_experts, span=0))
    # the engine also routes nothing past the last fed-back token
    assert np.array_equal(prompt + generated, expected)
