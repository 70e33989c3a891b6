"""Routing records in the worker: a key reused by another request is refused (not merged), records
nobody fetched are capped, and an engine with prefix caching on refuses what it would make wrong."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from marks import VLLM

from harness.mote import Intervention
from harness.vllm_plugin.checks import MoteVLLMError
from harness.vllm_plugin.protocol import INTERVENTION_KEY, RECORD_KEY, RPC_FETCH, answer_error
from harness.vllm_plugin.runtime import LayerHook, MoteRuntime
from harness.vllm_plugin.selection import RouterMath

pytestmark = VLLM

PROMPT = "What happened in the city last year? Let me think about it step by step."


class _Runner(SimpleNamespace):
    """A model runner as the plugin sees it: `_model_forward` carries the MoTE wrapper's mark."""

    def _model_forward(self) -> None: ...


_Runner._model_forward._mote_wrapped = True  # type: ignore[attr-defined]


def runner(extra_args: list[dict], prefix_caching: bool = False) -> _Runner:
    """Eager runner with one 3-token request per entry of `extra_args`."""
    ids = [f"r{i}" for i in range(len(extra_args))]
    requests = {
        rid: SimpleNamespace(sampling_params=SimpleNamespace(extra_args=extra), num_prompt_tokens=3)
        for rid, extra in zip(ids, extra_args, strict=True)
    }
    return _Runner(
        input_batch=SimpleNamespace(num_reqs=len(ids), req_ids=ids),
        query_start_loc=SimpleNamespace(np=np.arange(len(ids) + 1) * 3),
        requests=requests,
        model=None,
        device=torch.device("cpu"),
        vllm_config=SimpleNamespace(
            model_config=SimpleNamespace(enforce_eager=True),
            cache_config=SimpleNamespace(enable_prefix_caching=prefix_caching),
        ),
    )


def runtime_for(run: _Runner, layers=(0, 1)) -> MoteRuntime:
    runtime = MoteRuntime(run)
    runtime._installed_on = id(None)  # as if install() found these layers
    math = RouterMath(2, "softmax", True, 0, 0, None, 1.0)
    runtime.layers = {layer: LayerHook(layer, None, 8, math, None, column=i) for i, layer in enumerate(layers)}
    return runtime


def step(runtime: MoteRuntime, n_tokens: int, start: int = 0) -> None:
    """One step over `n_tokens` tokens at positions start.., every layer's hook firing once."""
    runtime.begin_step(n_tokens, torch.arange(start, start + n_tokens))
    logits = torch.randn(n_tokens, 8)
    for hook in runtime.layers.values():
        weights, ids = torch.topk(logits.softmax(-1), 2)
        runtime._hook(hook)(logits, weights, ids.to(torch.int32))
    runtime.end_step()


def test_a_key_reused_by_another_request_in_the_same_batch_is_refused_at_fetch():
    runtime = runtime_for(runner([{RECORD_KEY: "k"}, {RECORD_KEY: "k"}]))
    step(runtime, 6)
    with pytest.raises(MoteVLLMError, match=r"used by request 'r0' and again by request 'r1'"):
        runtime.take("k")
    assert runtime.take("k") == (None, 0)  # refused once, then gone


def test_a_key_reused_by_a_later_request_before_the_fetch_is_refused():
    first = runner([{RECORD_KEY: "k"}])
    runtime = runtime_for(first)
    step(runtime, 3)
    first.input_batch.req_ids = ["later"]  # the first request finished; a new one reuses its key
    first.requests = {"later": first.requests["r0"]}
    step(runtime, 3)
    with pytest.raises(MoteVLLMError, match=r"'r0' and again by request 'later'"):
        runtime.take("k")


def test_the_same_request_over_several_steps_is_one_record():
    runtime = runtime_for(runner([{RECORD_KEY: "k"}]))
    step(runtime, 3)
    step(runtime, 1, start=3)  # a decode step of the same request
    record, prompt_length = runtime.take("k")
    assert record is not None and record.positions.tolist() == [0, 1, 2, 3] and prompt_length == 3


def test_records_never_fetched_are_capped_oldest_first(caplog):
    run = runner([{RECORD_KEY: "a"}])
    runtime = runtime_for(run)
    runtime.max_pending = 2
    for key in ("a", "b", "c"):
        run.requests["r0"] = SimpleNamespace(
            sampling_params=SimpleNamespace(extra_args={RECORD_KEY: key}), num_prompt_tokens=3
        )
        with caplog.at_level(logging.WARNING, logger="harness.vllm_plugin"):
            step(runtime, 3)
    assert list(runtime.records) == ["b", "c"]
    assert "dropped the oldest, 'a'" in caplog.text
    with pytest.raises(MoteVLLMError, match=r"record 'a' was dropped: more than 2 records"):
        runtime.take("a")
    assert runtime.take("b")[0] is not None and runtime.take("c")[0] is not None


def test_a_pipeline_stage_applies_only_the_experts_of_its_own_layers():
    runtime = runtime_for(runner([{}]), layers=(2,))
    runtime.stage_layers = range(2, 3)  # the second of two stages over 3 layers
    both = Intervention.suppress({0: [1], 2: [3, 4]}, mode="mask")
    assert runtime._local(both) == Intervention.suppress({2: [3, 4]}, mode="mask")
    assert runtime._local(Intervention.stimulate({0: [1]})).is_none  # nothing on this stage
    assert runtime._local(Intervention.suppress({2: [5]})) == Intervention.suppress({2: [5]})


def worker(prefix_caching: bool):
    from harness.vllm_plugin.worker import MoteWorkerExtension

    ext = MoteWorkerExtension()
    run = runner([{}], prefix_caching=prefix_caching)
    MoteRuntime.of(run)._installed_on = id(None)
    ext.model_runner = run
    return ext


def test_with_prefix_caching_the_worker_refuses_record_all_and_a_global_intervention():
    iv = Intervention.suppress({0: [1]}, mode="mask").to_json()
    ext = worker(prefix_caching=True)
    with pytest.raises(MoteVLLMError, match="prefix caching on"):
        ext.mote_set_recording("on")
    with pytest.raises(MoteVLLMError, match="prefix caching on"):
        ext.mote_set_global_intervention(iv)
    assert ext.mote_set_recording("off") is False
    ok = worker(prefix_caching=False)
    assert ok.mote_set_recording("on") is True
    assert ok.mote_set_global_intervention(iv).startswith("suppress-mask-")


def test_with_prefix_caching_admission_refuses_recording_and_unsalted_interventions():
    from vllm.exceptions import VLLMValidationError

    from harness.vllm_plugin.prefix_cache import check_admitted_request

    iv = Intervention.suppress({0: [1]}, mode="mask")
    on, off = SimpleNamespace(enable_prefix_caching=True), SimpleNamespace(enable_prefix_caching=False)

    def request(extra, salt=None):
        return SimpleNamespace(sampling_params=SimpleNamespace(extra_args=extra), cache_salt=salt)

    recorded = request({RECORD_KEY: "k"}, salt=iv.fingerprint())
    with pytest.raises(VLLMValidationError, match="routing capture is refused with prefix caching on"):
        check_admitted_request(on, recorded)
    with pytest.raises(VLLMValidationError, match="needs a cache_salt containing its fingerprint"):
        check_admitted_request(on, request({INTERVENTION_KEY: iv.to_json()}))
    with pytest.raises(VLLMValidationError, match="cache_salt"):
        check_admitted_request(on, request({INTERVENTION_KEY: iv.to_json()}, salt="suppress-mask-000000000000"))
    check_admitted_request(on, request({INTERVENTION_KEY: iv.to_json()}, salt=iv.fingerprint()))
    check_admitted_request(on, request(None))  # no intervention: nothing to isolate
    check_admitted_request(off, recorded)  # prefix caching off: nothing is checked


def test_the_plugin_checks_requests_where_vllm_admits_them():
    from vllm.v1.engine.input_processor import InputProcessor

    from harness.vllm_plugin import register

    register()
    assert getattr(InputProcessor.process_inputs, "_mote_wrapped", False)


def test_served_requests_carry_a_cache_salt_per_intervention():
    from harness.backends.base import GenerationRequest, GenerationSettings
    from harness.backends.openai_backend import extra_body

    settings = GenerationSettings(max_new_tokens=4)
    iv = Intervention.suppress({0: [1]}, mode="drop")
    body = extra_body(GenerationRequest(id="a", prompt="x", intervention=iv), "key-a", settings)
    assert body["cache_salt"] == iv.fingerprint()
    assert body["vllm_xargs"] == {INTERVENTION_KEY: iv.to_json(), RECORD_KEY: "key-a"}
    plain = extra_body(GenerationRequest(id="b", prompt="x"), None, settings)
    assert "cache_salt" not in plain and "vllm_xargs" not in plain


def test_engine_refuses_a_record_key_two_requests_used(vllm_backend):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from harness.backends.base import GenerationRequest

    engine = vllm_backend("qwen3_moe")
    text = engine.prompt_text(GenerationRequest(id="x", prompt=PROMPT))
    prompts = [TokensPrompt(prompt_token_ids=engine.tokenizer(text, add_special_tokens=False)["input_ids"])] * 2
    params = SamplingParams(max_tokens=4, temperature=0.0, extra_args={RECORD_KEY: "shared-key"})
    engine.llm.generate(prompts, params, use_tqdm=False)
    (answer,) = engine.llm.collective_rpc(RPC_FETCH, args=(json.dumps(["shared-key"]),))
    assert "was used by request" in str(answer_error(answer["shared-key"]))
    engine.llm.generate(prompts, params, use_tqdm=False)
    with pytest.raises(MoteVLLMError, match="give every request its own key"):
        engine.fetch_records(["shared-key"])
    assert engine.fetch_records(["shared-key"]) == {"shared-key": None}  # refused once, then gone


def test_both_fetches_hand_back_the_same_record(vllm_backend):
    """`mote_fetch` (base64 npz, JSON-safe for HTTP) and `mote_fetch_arrays` (raw bytes, what VLLMBackend
    uses) carry the same record: two greedy requests of one prompt, one fetched each way."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from harness.backends.base import GenerationRequest
    from harness.vllm_plugin.protocol import RPC_FETCH_ARRAYS, WorkerRecord

    engine = vllm_backend("qwen3_moe")
    text = engine.prompt_text(GenerationRequest(id="x", prompt=PROMPT))
    prompt = TokensPrompt(prompt_token_ids=engine.tokenizer(text, add_special_tokens=False)["input_ids"])
    params = [SamplingParams(max_tokens=6, temperature=0.0, extra_args={RECORD_KEY: key}) for key in ("npz", "raw")]
    engine.llm.generate([prompt, prompt], params, use_tqdm=False)
    (npz,) = engine.llm.collective_rpc(RPC_FETCH, args=(json.dumps(["npz"]),))
    (raw,) = engine.llm.collective_rpc(RPC_FETCH_ARRAYS, args=(json.dumps(["raw"]),))
    assert isinstance(npz["npz"], str) and isinstance(raw["raw"]["topk_ids"], bytes)
    a, b = WorkerRecord.decode(npz["npz"]), WorkerRecord.decode(raw["raw"])
    assert a.topk_ids.shape[0] > 6 and a.topk_ids.dtype == b.topk_ids.dtype == np.int32
    for field in ("positions", "topk_ids", "topk_weights", "layers"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    b.topk_ids[0, 0, 0] = -1  # a decoded record is the caller's own (writable) copy
