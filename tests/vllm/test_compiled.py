"""A compiled engine (torch.compile, vLLM's default; no enforce_eager) runs the MoTE hooks every step:
the router hook is an opaque op in the traced graph (harness.vllm_plugin.route_hook), so suppressed
experts are never chosen, forced ones always are, records and greedy texts equal the HF reference,
and requests of one batch stay isolated."""

from __future__ import annotations

import numpy as np
import pytest
from marks import VLLM
from test_parity import batch, sorted_routing

from harness.backends.base import GenerationRequest, GenerationSettings
from harness.mote import Intervention

pytestmark = VLLM

PROMPT = "What happened in the city last year? Let me think about it step by step."
OTHER = "Explain how a mixture of experts routes tokens to experts in each layer."
SETTINGS = GenerationSettings(max_new_tokens=12, record_routing=True)


def column(record, layer):
    return record.topk_ids[:, list(record.layers).index(layer)]


def test_compiled_engine_accepts_the_hooks(compiled_backend):
    engine = compiled_backend
    (status,) = engine.llm.collective_rpc("mote_status")
    assert status["compiled"] is True and engine.compiled
    assert status["hook_problem"] is None, status["hook_problem"]
    # vLLM's CPU build traces the MoE body, so the hook runs as the opaque mote::route_hook op
    assert set(status["hook_ops"].values()) == {"mote::route_hook"}
    # Qwen3-MoE renormalises its softmax top-k: a mask is applied to the logits before vLLM's top-k, by
    # the mote::route_logits op (route_hook.masks_logits); the masked-mode tests below run through it
    assert set(status["mask_before_topk"].values()) == {True}


def test_compiled_suppressed_never_chosen_and_stimulated_always_chosen(compiled_backend):
    engine = compiled_backend
    first, last = engine.spec.moe_layers[0], engine.spec.moe_layers[-1]
    suppressed, forced = {first: [0, 1], last: [2]}, {first: [3], last: [4]}
    ivs = {
        "none": Intervention.none(),
        "drop": Intervention.suppress(suppressed, mode="drop"),
        "mask": Intervention.suppress(suppressed, mode="mask"),
        "stimulate": Intervention.stimulate(forced),
    }
    results = engine.generate(
        [GenerationRequest(id=k, prompt=PROMPT, intervention=v) for k, v in ivs.items()], SETTINGS
    )
    by_id = {r.id: r.routing for r in results}
    for layer, experts in suppressed.items():
        assert np.isin(column(by_id["none"], layer), experts).any(), "baseline never used the targets"
        for name in ("drop", "mask"):
            assert not np.isin(column(by_id[name], layer), experts).any(), f"{name}: layer {layer}"
    assert int((by_id["drop"].topk_ids == -1).sum()) > 0 and int((by_id["mask"].topk_ids == -1).sum()) == 0
    for layer, experts in forced.items():
        for expert in experts:
            assert (column(by_id["stimulate"], layer) == expert).any(-1).all()
    # and each changes what the model computes (next-token distribution at the prompt's end)
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    text = engine.prompt_text(GenerationRequest(id="x", prompt=PROMPT))
    prompt = TokensPrompt(prompt_token_ids=engine.tokenizer(text, add_special_tokens=False)["input_ids"])
    params = [
        SamplingParams(
            max_tokens=1, temperature=0.0, logprobs=5, extra_args=None if iv.is_none else {"mote": iv.to_json()}
        )
        for iv in ivs.values()
    ]
    outputs = engine.llm.generate([prompt] * len(params), params, use_tqdm=False)
    dists = [{t: lp.logprob for t, lp in out.outputs[0].logprobs[0].items()} for out in outputs]
    for name, dist in zip(list(ivs)[1:], dists[1:], strict=True):
        assert dist != dists[0], f"{name} left the next-token distribution unchanged"


def test_compiled_topk_and_greedy_text_equal_hf(compiled_backend, hf_backend):
    engine, reference = compiled_backend, hf_backend("qwen3_moe")
    requests = batch(engine.spec)  # 3 prompts x none / drop / mask / stimulate, one batch
    settings = GenerationSettings(max_new_tokens=16, record_routing=True)
    got, expected = engine.generate(requests, settings), reference.generate(requests, settings)
    for v, h in zip(got, expected, strict=True):
        assert v.text == h.text, v.id
        assert v.routing.topk_ids.shape == h.routing.topk_ids.shape, v.id
        v_ids, v_w = sorted_routing(v.routing)
        h_ids, h_w = sorted_routing(h.routing)
        assert np.array_equal(v_ids, h_ids), v.id
        np.testing.assert_allclose(v_w, h_w, rtol=1e-4, atol=1e-5, err_msg=v.id)


def test_compiled_mixed_batch_rows_equal_uniform_batches(compiled_backend):
    engine = compiled_backend
    first, last = engine.spec.moe_layers[0], engine.spec.moe_layers[-1]
    layout = [
        (PROMPT, Intervention.none()),
        (PROMPT, Intervention.suppress({first: [0, 1], last: [2]}, mode="mask")),
        (OTHER, Intervention.stimulate({first: [3], last: [4]})),
        (PROMPT, Intervention.suppress({first: [0, 1], last: [2]}, mode="drop")),
    ]

    def run(ivs):
        requests = [
            GenerationRequest(id=str(i), prompt=p, intervention=iv)
            for i, ((p, _), iv) in enumerate(zip(layout, ivs, strict=True))
        ]
        return engine.generate(requests, SETTINGS)

    mixed = run([iv for _, iv in layout])
    for row, (_, iv) in enumerate(layout):
        uniform = run([iv] * len(layout))  # every row under this row's intervention (the uniform fast path)
        a, b = mixed[row], uniform[row]
        assert a.text == b.text and a.intervention == b.intervention == iv.fingerprint()
        assert np.array_equal(a.routing.topk_ids, b.routing.topk_ids)
        assert np.array_equal(a.routing.topk_weights, b.routing.topk_weights)


@pytest.mark.parametrize("mode", ["mask", "drop"])
def test_compiled_global_intervention_applies(compiled_backend, mode):
    engine = compiled_backend
    layer = engine.spec.moe_layers[0]
    iv = Intervention.suppress({layer: [0, 1]}, mode=mode)
    try:
        engine.llm.collective_rpc("mote_set_global_intervention", args=(iv.to_json(),))
        (result,) = engine.generate([GenerationRequest(id="g", prompt=PROMPT)], SETTINGS)
        assert not np.isin(column(result.routing, layer), [0, 1]).any()
    finally:
        engine.llm.collective_rpc("mote_set_global_intervention", args=("",))
