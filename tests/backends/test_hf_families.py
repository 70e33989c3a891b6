"""The intervention contract on a tiny random model of every supported family.

FAMILIES is every routed-MoE model type of the pinned transformers that `harness generate` loads and
does not refuse; test_family_coverage.py checks it against the enumeration, so a family added to
transformers cannot go untested."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from harness.backends.base import GenerationRequest, GenerationSettings
from harness.backends.hf import HFBackend
from harness.mote import Intervention

FAMILIES = [
    "afmoe", "aria_text", "axk1", "axk2", "cohere2_moe", "dbrx", "deepseek_v2", "deepseek_v3", "deepseek_v32",
    "dots1", "ernie4_5_moe", "exaone_moe", "flex_olmo", "gemma4_text", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa",
    "gpt_oss", "granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared", "hunyuan_v1_moe", "hy_v3",
    "hy_v4", "inkling_text", "jamba", "kimi_linear", "laguna", "lfm2_moe", "longcat_flash", "mellum",
    "mimo_v2_flash", "minimax", "minimax_m2", "minimax_m3_vl_text", "mixtral", "nemotron_h", "olmoe", "phimoe",
    "qwen2_moe", "qwen3_5_moe_text", "qwen3_moe", "qwen3_next", "qwen4_exp_text", "solar_open",
]  # fmt: skip
PROMPT = "What happened in the city last year? Let me think about it step by step."
SETTINGS = GenerationSettings(max_new_tokens=10, record_routing=True)


@pytest.fixture(scope="module")
def backends(tiny_model_dir):
    cache: dict[str, HFBackend] = {}

    def get(family: str) -> HFBackend:
        if family not in cache:
            cache[family] = HFBackend(tiny_model_dir(family))
        return cache[family]

    return get


def _interventions(backend: HFBackend) -> dict[str, Intervention]:
    first, last = backend.spec.moe_layers[0], backend.spec.moe_layers[-1]
    targets = {first: [0, 1], last: [2]}
    return {
        "drop": Intervention.suppress(targets, mode="drop"),
        "mask": Intervention.suppress(targets, mode="mask"),
        "stimulate": Intervention.stimulate({first: [3], last: [4]}),
    }


def _run(backend: HFBackend, interventions: list[Intervention], prompt: str = PROMPT):
    requests = [GenerationRequest(id=str(i), prompt=prompt, intervention=iv) for i, iv in enumerate(interventions)]
    return backend.generate(requests, SETTINGS)


@pytest.mark.parametrize("family", FAMILIES)
def test_suppressed_experts_never_appear_in_recorded_topk(backends, family):
    backend = backends(family)
    ivs = _interventions(backend)
    for name in ("drop", "mask"):
        (result,) = _run(backend, [ivs[name]])
        record = result.routing
        assert record is not None and record.n_tokens > 5
        for layer, experts in ivs[name].experts.to_mapping().items():
            column = record.topk_ids[:, list(record.layers).index(layer)]
            assert not np.isin(column, experts).any(), f"{name}: suppressed expert chosen in layer {layer}"
        empty_slots = int((record.topk_ids == -1).sum())
        assert (empty_slots > 0) if name == "drop" else (empty_slots == 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_stimulated_experts_appear_for_every_token(backends, family):
    backend = backends(family)
    iv = _interventions(backend)["stimulate"]
    (result,) = _run(backend, [iv])
    record = result.routing
    assert record is not None
    for layer, experts in iv.experts.to_mapping().items():
        column = record.topk_ids[:, list(record.layers).index(layer)]
        for expert in experts:
            assert (column == expert).any(axis=-1).all(), f"expert {expert} missing in layer {layer}"


@pytest.mark.parametrize("family", FAMILIES)
def test_drop_mode_keeps_each_tokens_weight_sum(backends, family):
    """Weights after a drop sum to what the router's own normalisation gave the token: compared on
    the first MoE layer's prompt tokens, whose inputs no intervention can have changed yet."""
    backend = backends(family)
    iv = _interventions(backend)["drop"]
    base, dropped = _run(backend, [Intervention.none(), iv])
    assert base.routing is not None and dropped.routing is not None
    n_prompt = int((base.routing.span == 0).sum())
    ids = dropped.routing.topk_ids[:n_prompt, 0]
    before = base.routing.topk_weights[:n_prompt, 0].sum(-1)
    after = dropped.routing.topk_weights[:n_prompt, 0].sum(-1)
    touched = (ids == -1).any(-1) & (ids != -1).any(-1)
    assert touched.any()
    np.testing.assert_allclose(after[touched], before[touched], rtol=1e-5)
    assert (dropped.routing.topk_weights[:n_prompt, 0][ids == -1] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_experts_module_receives_zero_weight_for_dropped_experts(backends, family):
    """Checked on what the fused experts module computes with (its class's forward, behind the
    controller's edit), not on the routing record the controller writes."""
    from harness.contract.hf import experts_inputs

    backend = backends(family)
    iv = _interventions(backend)["drop"]
    with experts_inputs(backend.controller.blocks) as seen:
        _run(backend, [iv])
    hits = 0
    for layer, experts in iv.experts.to_mapping().items():
        ids = torch.cat([i for i, _ in seen[layer]])
        weights = torch.cat([w for _, w in seen[layer]])
        hit = torch.isin(ids, torch.tensor(experts))
        assert (weights[hit] == 0).all(), f"layer {layer}: a dropped expert still gets weight"
        assert (weights[~hit] != 0).any()
        hits += int(hit.sum())
    assert hits > 0, "no token was routed to a suppressed expert: nothing was dropped"


def test_a_router_that_selects_some_other_way_is_an_error_not_a_silent_no_op(tiny_model_dir):
    from harness.backends.hf_discovery import Selection
    from harness.backends.hf_hooks import RoutingController

    backend = HFBackend(tiny_model_dir("qwen3_moe"))  # selects with topk: watching `max` only sees no selection
    blocks = backend.controller.blocks
    backend.controller.remove()
    selections = [Selection(b.router, "router", ("max",), False) for b in blocks]
    backend.controller = RoutingController(blocks, selections, backend.model)
    with pytest.raises(RuntimeError, match="did not apply"):
        _run(backend, [_interventions(backend)["mask"]])
    backend.controller.reset()
    (result,) = _run(backend, [_interventions(backend)["drop"]])  # the backend is still usable
    assert result.routing is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_every_intervention_changes_the_output(backends, family):
    backend = backends(family)
    requests = [GenerationRequest(id="0", prompt=PROMPT)] + [
        GenerationRequest(id=name, prompt=PROMPT, intervention=iv) for name, iv in _interventions(backend).items()
    ]
    logits = backend.prompt_logits(requests)
    for name, changed in zip(["drop", "mask", "stimulate"], logits[1:], strict=True):
        assert not torch.allclose(changed, logits[0]), f"{name} left the logits unchanged"


@pytest.mark.parametrize("family", FAMILIES)
def test_no_intervention_is_bit_identical_to_the_unpatched_model(backends, tiny_model_dir, family):
    backend = backends(family)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family), dtype=torch.float32).eval()
    enc = backend.tokenizer([backend.prompt_text(GenerationRequest(id="x", prompt=PROMPT))], return_tensors="pt")
    with torch.no_grad():
        expected = plain(**enc).logits[0]
    (hooked,) = backend.prompt_logits([GenerationRequest(id="x", prompt=PROMPT)])
    assert torch.equal(hooked, expected)
    # recording on, no intervention: same tokens as the plain model's greedy decode
    (result,) = _run(backend, [Intervention.none()])
    with torch.no_grad():
        plain_out = plain.generate(
            **enc,
            max_new_tokens=SETTINGS.max_new_tokens,
            do_sample=False,
            pad_token_id=backend.tokenizer.pad_token_id,
            eos_token_id=backend._stop_ids(),
        )
    plain_text = backend.tokenizer.decode(
        [t for t in plain_out[0, enc["input_ids"].shape[1] :].tolist() if t not in backend._stop_ids()],
        skip_special_tokens=True,
    )
    assert result.text == plain_text


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_batch_gives_each_row_its_solo_result(backends, family):
    backend = backends(family)
    ivs = [Intervention.none(), *_interventions(backend).values()]
    batch = _run(backend, ivs)
    for iv, row in zip(ivs, batch, strict=True):
        (solo,) = _run(backend, [iv])
        assert row.text == solo.text
        assert row.intervention == iv.fingerprint()
        assert row.routing is not None and solo.routing is not None
        assert np.array_equal(row.routing.topk_ids, solo.routing.topk_ids)
        assert np.array_equal(row.routing.span, solo.routing.span)


def test_rows_of_different_lengths_are_routed_without_padding(backends):
    backend = backends("qwen3_moe")
    short, long = "Hi?", PROMPT + " And more words to make it longer than the other one."
    batch = backend.generate(
        [GenerationRequest(id="s", prompt=short), GenerationRequest(id="l", prompt=long)], SETTINGS
    )
    for prompt, row in zip((short, long), batch, strict=True):
        (solo,) = backend.generate([GenerationRequest(id="x", prompt=prompt)], SETTINGS)
        assert row.routing is not None and solo.routing is not None
        assert row.n_prompt_tokens == solo.n_prompt_tokens == int((row.routing.span == 0).sum())
        assert np.array_equal(row.routing.topk_ids, solo.routing.topk_ids)


def test_a_dense_model_is_refused_before_loading(tmp_path):
    from transformers import AutoConfig

    from harness.backends.hf_discovery import inspect_model
    from harness.common.errors import UnsupportedModelError

    AutoConfig.for_model("llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="no routed-experts module"):
        inspect_model(tmp_path)  # a config alone: had it tried to load weights, it would fail differently


@pytest.mark.parametrize("family", ["qwen3_moe", "dbrx"])  # dbrx: the block itself selects
def test_hooks_are_installed_only_on_the_layers_a_call_touches_and_only_during_it(backends, family):
    backend = backends(family)
    first, last = backend.spec.moe_layers[0], backend.spec.moe_layers[-1]
    seen: list[tuple[dict[int, tuple[bool, bool]], int]] = []
    original = backend.model.generate

    def spy(*args, **kwargs):
        seen.append((backend.controller.armed(), len(backend.model._forward_pre_hooks)))
        return original(*args, **kwargs)

    ivs = _interventions(backend)
    calls = [(Intervention.none(), False), (ivs["drop"], False), (ivs["mask"], False), (Intervention.none(), True)]
    backend.model.generate = spy
    try:
        for iv, record in calls:
            requests = [GenerationRequest(id="0", prompt=PROMPT, intervention=iv)]
            backend.generate(requests, GenerationSettings(max_new_tokens=3, record_routing=record))
    finally:
        del backend.model.generate
    touched = {first, last}
    off = dict.fromkeys(backend.spec.moe_layers, (False, False))
    assert seen[0] == (off, 0)  # no intervention, no recording: the model's own modules, no hook at all
    assert seen[1] == ({**off, **dict.fromkeys(touched, (False, True))}, 0)
    assert seen[2] == ({**off, **dict.fromkeys(touched, (True, False))}, 0)
    assert seen[3] == (dict.fromkeys(backend.spec.moe_layers, (False, True)), 1)
    assert backend.controller.armed() == off and not backend.model._forward_pre_hooks
    for block in backend.controller.blocks:
        assert not block.experts._forward_pre_hooks and "forward" not in block.experts.__dict__
        assert "forward" not in block.router.__dict__ and "forward" not in block.block.__dict__


def _without_fast_selection(backend: HFBackend) -> None:
    for fast in backend.controller._fast.values():
        if fast is not None:
            fast.verdict = False


@pytest.mark.parametrize("family", FAMILIES)
def test_the_router_edit_without_the_mode_gives_what_the_mode_gives(tiny_model_dir, family):
    """A router edited through its own forward's `torch` stand-in (used once its first edited call matched
    the mode's) generates the same tokens and routing as the mode alone, for mask and stimulate."""
    fast, mode = HFBackend(tiny_model_dir(family)), HFBackend(tiny_model_dir(family))
    _without_fast_selection(mode)
    ivs = _interventions(fast)
    for name in ("mask", "stimulate"):
        (a,), (b,) = _run(fast, [ivs[name]]), _run(mode, [ivs[name]])
        assert a.token_ids == b.token_ids, name
        assert a.routing is not None and b.routing is not None
        assert np.array_equal(a.routing.topk_ids, b.routing.topk_ids), name
        assert np.array_equal(a.routing.topk_weights, b.routing.topk_weights), name
    verdicts = fast.controller.fast_selection()
    decided = {verdicts[layer] for layer in ivs["mask"].experts.to_mapping()}
    if family in SELECT_IN_FORWARD:  # their router's forward itself calls torch.topk: no mode needed
        assert decided == {True}


# families whose router forward calls torch.topk itself (24 of the 46 at transformers 5.19; docs/gpu.md)
SELECT_IN_FORWARD = {"mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "qwen3_next", "gpt_oss", "minimax"}


def test_a_router_that_selects_with_a_tensor_method_keeps_the_mode(tiny_model_dir):
    """The stand-in sees only `torch.topk(...)` calls: a router calling `scores.topk(...)` is found out on
    its first edited call and keeps the mode, whose edit it gets."""
    backend = HFBackend(tiny_model_dir("qwen3_moe"))
    for block in backend.controller.blocks:
        router = block.router

        class MethodTopK(type(router)):
            def forward(self, hidden_states):
                hidden_states = hidden_states.reshape(-1, self.hidden_dim)
                logits = torch.nn.functional.linear(hidden_states, self.weight)
                probs = torch.nn.functional.softmax(logits, dtype=torch.float, dim=-1)
                top, indices = probs.topk(self.top_k, dim=-1)
                top = top / top.sum(dim=-1, keepdim=True) if self.norm_topk_prob else top
                return logits, top.to(logits.dtype), indices

        router.__class__ = MethodTopK
    from harness.backends.hf_discovery import Selection
    from harness.backends.hf_hooks import RoutingController

    blocks = backend.controller.blocks
    backend.controller.remove()
    selections = [Selection(b.router, "router", ("topk",), False) for b in blocks]
    backend.controller = RoutingController(blocks, selections, backend.model)
    iv = _interventions(backend)["mask"]
    (result,) = _run(backend, [iv])
    for layer, experts in iv.experts.to_mapping().items():
        assert backend.controller.fast_selection()[layer] is False
        column = result.routing.topk_ids[:, list(result.routing.layers).index(layer)]
        assert not np.isin(column, experts).any()
