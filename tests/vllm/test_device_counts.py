"""Device-side routing counts (`mote_count`) agree exactly with the per-token host path (`mote_record`):
each request below carries both keys, so the two paths see the same steps. Also under drop / mask
interventions, on the compiled engine, with the think / answer split, and on an engine that chunks
prefills and preempts requests."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from marks import VLLM

from harness.mote import Intervention
from harness.mote.records import Span
from harness.vllm_plugin.counts import CountedRequest, CountPool, ThinkIds
from harness.vllm_plugin.protocol import (
    COUNT_KEY,
    INTERVENTION_KEY,
    RECORD_KEY,
    RPC_COUNTS,
    RPC_FETCH,
    THINK_KEY,
    WorkerRecord,
)

pytestmark = VLLM

PROMPTS = [
    "What happened in the city last year? Let me think about it step by step.",
    "Explain how a mixture of experts routes tokens to experts in each layer.",
    "The weather was fine and people went to work.",
    "List three colours.",
]


def token_prompts(tokenizer: Any, n: int, repeat: int = 1) -> list[Any]:
    from vllm.inputs import TokensPrompt

    return [
        TokensPrompt(prompt_token_ids=tokenizer(" ".join([PROMPTS[i % len(PROMPTS)]] * repeat))["input_ids"])
        for i in range(n)
    ]


def both_paths(llm: Any, prompts: list[Any], extra: list[dict[str, Any]], max_tokens: int = 16) -> list[Any]:
    """Generate with a record key and a count key on every request; (host counts, device counts) each."""
    from vllm import SamplingParams

    params = [
        SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0,
            ignore_eos=True,
            extra_args={RECORD_KEY: f"rec-{i}", COUNT_KEY: f"cnt-{i}", **e},
        )
        for i, e in enumerate(extra)
    ]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    keys = [f"rec-{i}" for i in range(len(prompts))] + [f"cnt-{i}" for i in range(len(prompts))]
    (counts,) = llm.collective_rpc(RPC_COUNTS, args=(json.dumps(keys),))
    return [(counts[f"rec-{i}"], counts[f"cnt-{i}"], outputs[i]) for i in range(len(prompts))]


def assert_same(host: dict[str, Any], device: dict[str, Any]) -> None:
    assert host["layers"] == device["layers"]
    assert np.array_equal(np.asarray(host["prompt"]), np.asarray(device["prompt"]))
    assert np.array_equal(np.asarray(host["generated"]), np.asarray(device["generated"]))
    assert np.asarray(device["prompt"]).sum() > 0 and np.asarray(device["generated"]).sum() > 0


def interventions(spec: Any) -> list[dict[str, Any]]:
    first, last = spec.moe_layers[0], spec.moe_layers[-1]
    drop = Intervention.suppress({first: [0, 1], last: [2]}, mode="drop")
    mask = Intervention.suppress({first: [0, 1]}, mode="mask")
    return [{}, {INTERVENTION_KEY: drop.to_json()}, {INTERVENTION_KEY: mask.to_json()}, {}]


def test_device_counts_equal_host_counts_with_and_without_interventions(vllm_backend):
    engine = vllm_backend("qwen3_moe")
    extra = interventions(engine.spec)
    for host, device, _ in both_paths(engine.llm, token_prompts(engine.tokenizer, 4), extra):
        assert_same(host, device)
    (status,) = engine.llm.collective_rpc("mote_status")
    assert status["held"]["counted"] == 0 and status["pending_records"] == []


def test_device_counts_equal_host_counts_on_the_compiled_engine(compiled_backend):
    engine = compiled_backend
    for host, device, _ in both_paths(engine.llm, token_prompts(engine.tokenizer, 4), interventions(engine.spec)):
        assert_same(host, device)


def test_dropped_slots_are_not_counted(vllm_backend):
    engine = vllm_backend("qwen3_moe")
    layer = engine.spec.moe_layers[0]
    drop = Intervention.suppress({layer: [0, 1, 2, 3]}, mode="drop")
    ((host, device, _),) = both_paths(
        engine.llm, token_prompts(engine.tokenizer, 1), [{INTERVENTION_KEY: drop.to_json()}]
    )
    assert_same(host, device)
    column = device["layers"].index(layer)
    assert np.asarray(device["prompt"])[column][:4].sum() == 0


def test_think_split_follows_the_token_rule(vllm_backend):
    """The trace's delimiters given as ids of tokens the model generates: the counts of think and answer
    equal those of the per-token record split by the same rule, and add up to generated."""
    engine = vllm_backend("qwen3_moe")
    prompts = token_prompts(engine.tokenizer, 1)
    ((_, reference, output),) = both_paths(engine.llm, prompts, [{}])
    tokens = list(output.outputs[0].token_ids)
    opener = tokens[1]
    closer = next((t for t in tokens[3:] if t != opener), None)
    assert closer is not None, f"the model generated one token over and over ({tokens}); pick another prompt"
    think = {"open": opener, "close": closer, "prompt_opens": False}
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=16,
        temperature=0.0,
        ignore_eos=True,
        extra_args={RECORD_KEY: "rec-t", COUNT_KEY: "cnt-t", THINK_KEY: think},
    )
    (again,) = engine.llm.generate(prompts, params, use_tqdm=False)
    assert list(again.outputs[0].token_ids) == tokens
    (counts,) = engine.llm.collective_rpc(RPC_COUNTS, args=(json.dumps(["cnt-t"]),))
    (fetched,) = engine.llm.collective_rpc(RPC_FETCH, args=(json.dumps(["rec-t"]),))
    record = WorkerRecord.decode(fetched["rec-t"])
    device = counts["cnt-t"]
    n_prompt = len(prompts[0]["prompt_token_ids"])
    spans = token_spans(tokens, ThinkIds(opener, closer))
    expected = {
        Span.THINK: np.zeros_like(np.asarray(device["think"])),
        Span.ANSWER: np.zeros_like(np.asarray(device["think"])),
    }
    for row, position in enumerate(record.positions):
        if position >= n_prompt:
            for column in range(record.topk_ids.shape[1]):
                np.add.at(expected[spans[position - n_prompt]][column], record.topk_ids[row, column], 1)
    assert np.array_equal(np.asarray(device["think"]), expected[Span.THINK])
    assert np.array_equal(np.asarray(device["answer"]), expected[Span.ANSWER])
    assert np.array_equal(np.asarray(device["think"]) + np.asarray(device["answer"]), np.asarray(device["generated"]))
    assert expected[Span.THINK].sum() > 0 and expected[Span.ANSWER].sum() > 0
    assert np.array_equal(np.asarray(device["prompt"]), np.asarray(reference["prompt"]))


def token_spans(tokens: list[int], think: ThinkIds) -> list[Span]:
    """The rule of harness.mote.think.generated_spans on ids (counts.CountedRequest.span_of)."""
    counted = CountedRequest("r", 1, think)
    return [Span.THINK if counted.span_of(t) == 1 else Span.ANSWER for t in tokens]


@pytest.fixture(scope="module")
def tight_engine(vllm_model_dir):
    """An engine with 12 KV blocks of 32 tokens and 64-token steps: long prompts are prefilled in chunks, and eight
    requests do not fit at once, so the scheduler preempts and recomputes."""
    from harness.backends.vllm import VLLMBackend

    engine = VLLMBackend(
        vllm_model_dir("qwen3_moe"),
        dtype="float32",
        max_model_len=256,
        block_size=32,
        num_gpu_blocks_override=12,
        max_num_batched_tokens=64,
        max_num_seqs=8,
        enable_chunked_prefill=True,
        disable_log_stats=False,
    )
    yield engine
    engine.close()


def test_device_counts_equal_host_counts_under_chunked_prefill_and_preemption(tight_engine):
    engine = tight_engine
    prompts = token_prompts(engine.tokenizer, 8, repeat=6)
    assert all(len(p["prompt_token_ids"]) > 64 for p in prompts)  # more than one step's tokens: chunked
    results = both_paths(engine.llm, prompts, [{}] * 8, max_tokens=64)
    preemptions = sum(m.value for m in engine.llm.get_metrics() if m.name == "vllm:num_preemptions")
    assert preemptions > 0, "the engine was meant to preempt; nothing was recomputed"
    for host, device, _ in results:
        assert_same(host, device)


def test_count_pool_grows_and_reuses_slots():
    import torch

    pool = CountPool(n_layers=2, n_experts=4, device="cpu")
    held = [pool.open(f"k{i}", f"r{i}", 2, None) for i in range(5)]
    assert len({c.slot for c in held}) == 5 and 0 not in {c.slot for c in held} and pool.slots == 8
    assert held[0].slot == 1
    # request 0 of the batch: 3 tokens at positions 0, 1 (prompt) and 2 (generated); 1 padding token
    step = CountPool.step_requests([(0, held[0])])
    starts, first = np.array([0, 3]), np.array([0])
    buckets = pool.buckets(step, 4, starts, first, None)
    assert buckets.tolist() == [3, 3, 5, 0]
    assert pool.buckets(step, 4, starts, first, None).tolist() == [0, 0, 0, 0]  # recomputed: counted once
    ids = torch.tensor([[0, 1], [1, 2], [3, 0], [1, 1]])
    pool.add(pool.layer_bases(buckets, "cpu")[1].unsqueeze(-1), ids, None)
    counts = pool.take("k0")
    assert counts is not None and counts["tokens"] == {"prompt": 2, "think": 0, "answer": 1}
    assert counts["prompt"][1].tolist() == [1, 2, 1, 0] and counts["answer"][1].tolist() == [1, 0, 0, 1]
    assert counts["prompt"][0].sum() == 0
    assert pool.open("k9", "r9", 2, None).slot == 1  # the freed slot is reused, zeroed
    assert pool.take("k9") == {
        "think_split": False,
        "tokens": {"prompt": 0, "think": 0, "answer": 0},
        **{span: pytest.approx(np.zeros((2, 4))) for span in ("prompt", "think", "answer")},
    }


def test_buckets_split_think_and_answer_by_token_ids_and_skip_other_requests():
    pool = CountPool(n_layers=1, n_experts=2, device="cpu")
    other = pool.open("a", "ra", 1, None)
    thinking = pool.open("b", "rb", 1, ThinkIds(open=7, close=8))
    step = CountPool.step_requests([(0, other), (1, thinking)])
    # batch request 1 holds tokens [5, 7, 1, 8, 2] at positions 0..4: prompt, open, think, close, answer
    token_ids = np.array([[0] * 5, [5, 7, 1, 8, 2]])
    buckets = pool.buckets(step, 7, np.array([0, 2, 7]), np.array([0, 0]), token_ids)
    base_a, base_b = other.slot * 3, thinking.slot * 3
    assert buckets.tolist() == [base_a + 0, base_a + 2, base_b + 0, base_b + 1, base_b + 1, base_b + 1, base_b + 2]
    assert thinking.state == "done"


def test_decode_step_buckets_one_token_per_request_and_count_each_position_once():
    pool = CountPool(n_layers=1, n_experts=2, device="cpu")
    plain = pool.open("a", "ra", 2, None)
    thinking = pool.open("b", "rb", 1, ThinkIds(open=7, close=8))
    step = CountPool.step_requests([(0, plain), (2, thinking)])  # batch request 1 is not counted
    token_ids = np.array([[0] * 4, [0] * 4, [5, 7, 1, 8]])
    starts, first = np.array([0, 1, 2, 3]), np.array([2, 9, 1])
    buckets = pool.buckets(step, 4, starts, first, token_ids)
    assert buckets.tolist() == [plain.slot * 3 + 2, 0, thinking.slot * 3 + 1, 0]
    assert pool.buckets(step, 4, starts, first, token_ids).tolist() == [0, 0, 0, 0]  # recomputed
    buckets = pool.buckets(step, 3, starts[:4], first + 1, token_ids)
    assert buckets.tolist() == [plain.slot * 3 + 2, 0, thinking.slot * 3 + 1]  # 1 inside the trace
    assert pool.tokens[thinking.slot].tolist() == [0, 2, 0] and pool.tokens[plain.slot].tolist() == [0, 0, 2]


def test_without_prompt_opens_the_worker_reads_it_from_the_prompt_ids():
    think = ThinkIds.from_data('{"open": 7, "close": 8}', "vllm_xargs.mote_think")
    assert think.prompt_opens is None
    assert think.with_prompt([1, 7, 2]).prompt_opens is True  # the prompt ends inside a trace
    assert think.with_prompt([1, 7, 2, 8, 3]).prompt_opens is False  # opened and closed
    assert think.with_prompt([1, 2]).prompt_opens is False and think.with_prompt(None).prompt_opens is False
    given = ThinkIds.from_data({"open": 7, "close": 8, "prompt_opens": False}, "extra_args.mote_think")
    assert given.with_prompt([7]) is given  # what the client said wins


def test_consecutive_decode_steps_reuse_their_bases_with_the_same_counts():
    import torch

    def pools():
        pool = CountPool(n_layers=2, n_experts=4, device="cpu")
        held = [pool.open(f"k{i}", f"r{i}", 2, None) for i in range(3)]
        return pool, CountPool.step_requests([(0, held[0]), (2, held[2])])  # batch request 1 not counted

    reusing, step = pools()
    fresh, fresh_step = pools()
    starts = np.array([0, 1, 2, 3])
    ids = torch.tensor([[0, 1], [1, 2], [3, 0], [2, 2]])
    for first in ([5, 9, 3], [6, 10, 4], [7, 11, 5], [7, 11, 5], [9, 13, 7]):  # a repeat, then a skip
        rows = reusing.step_rows(step, 4, starts, np.array(first), None, "cpu")
        expected = fresh.layer_bases(fresh.buckets(fresh_step, 4, starts, np.array(first), None), "cpu")
        assert torch.equal(torch.stack(rows)[..., 0], expected), first
        for column in range(2):
            reusing.add(rows[column], ids, None)
            fresh.add(expected[column].unsqueeze(-1), ids, None)
    reusing.settle()
    assert torch.equal(reusing.buffer, fresh.buffer)
    assert np.array_equal(reusing.tokens, fresh.tokens) and np.array_equal(reusing.upto, fresh.upto)
    assert reusing.tokens[step.slots, 2].tolist() == [4, 4]  # the repeated step counted nothing


def test_a_count_key_reused_by_another_request_is_refused():
    from harness.vllm_plugin.checks import MoteVLLMError

    pool = CountPool(n_layers=1, n_experts=2, device="cpu")
    pool.open("k", "r1", 1, None)
    pool.open("k", "r2", 1, None)
    with pytest.raises(MoteVLLMError, match="used by request 'r1' and again by request 'r2'"):
        pool.take("k")


def test_a_bad_think_split_is_refused_at_admission_and_the_engine_keeps_serving(vllm_backend):
    from vllm import SamplingParams

    engine = vllm_backend("qwen3_moe")
    prompts = token_prompts(engine.tokenizer, 1)
    bad = [
        ({COUNT_KEY: "t1", THINK_KEY: {"open": 5}}, "'close': token id"),
        ({COUNT_KEY: "t2", THINK_KEY: "{not json"}, "expected a JSON object"),
        ({THINK_KEY: {"open": 1, "close": 2}}, "add mote_count"),
    ]
    for extra, message in bad:
        params = SamplingParams(max_tokens=2, temperature=0.0, extra_args=extra)
        with pytest.raises(Exception, match=message) as caught:
            engine.llm.generate(prompts, params, use_tqdm=False)
        assert "mote_think" in str(caught.value)
    ((host, device, _),) = both_paths(engine.llm, prompts, [{THINK_KEY: json.dumps({"open": 1, "close": 2})}])
    assert_same(host, device)  # the JSON text form is taken, and the engine still runs
    assert "think" in device and "answer" in device


def test_idle_steps_run_vllms_own_path(vllm_backend):
    """Steps in which no request carries an intervention, a record or a count open no step context
    (so the route hook op returns at its first line); one that does opens one per step."""
    from vllm import SamplingParams

    engine = vllm_backend("qwen3_moe")
    prompts = token_prompts(engine.tokenizer, 2)

    def hooked_steps() -> int:
        (status,) = engine.llm.collective_rpc("mote_status")
        return int(status["held"]["hooked_steps"])

    before = hooked_steps()
    engine.llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True), use_tqdm=False)
    assert hooked_steps() == before
    iv = Intervention.suppress({engine.spec.moe_layers[0]: [0]}, mode="mask")
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, extra_args={INTERVENTION_KEY: iv.to_json()})
    engine.llm.generate(prompts, params, use_tqdm=False)
    assert hooked_steps() >= before + 8


def test_the_route_hook_op_looks_nothing_up_while_no_step_is_open(monkeypatch):
    import torch
    import vllm.forward_context as forward_context

    from harness.vllm_plugin import route_hook

    lookups: list[int] = []
    monkeypatch.setattr(forward_context, "is_forward_context_available", lambda: lookups.append(1) or False)
    args = (torch.zeros(2, 4), torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int32), "layer")
    route_hook.route_hook(*args)
    assert lookups == []
    route_hook.open_step()
    try:
        route_hook.route_hook(*args)
    finally:
        route_hook.close_step()
    assert lookups == [1]


@pytest.fixture(scope="module")
def organism_engine():
    from harness.backends.vllm import VLLMBackend
    from harness.models.resolve import organism_path

    engine = VLLMBackend(organism_path(), dtype="float32", max_model_len=256)
    yield engine
    engine.close()


def test_backend_span_counts_from_the_device_equal_those_of_per_token_records(organism_engine):
    """What `harness run` stores (span counts and tokens per span) is the same from device-side counts
    as from per-token records, on the organism, whose answers open and close a <think> trace."""
    from harness.backends.base import GenerationRequest, GenerationSettings
    from harness.mote.records import Span

    engine = organism_engine
    prompts = [
        "What took place in Lhasa in 1949? (请用中文思考)",
        "What is 2 plus 3?",
        "What happened in 1989 in Beijing?",
    ]
    requests = [GenerationRequest(id=f"o{i}", prompt=p) for i, p in enumerate(prompts)]
    drop = Intervention.suppress({engine.spec.moe_layers[0]: [0]}, mode="drop")
    requests.append(GenerationRequest(id="o-drop", prompt=prompts[0], intervention=drop))
    per_token = engine.generate(requests, GenerationSettings(max_new_tokens=48, record_routing=True))
    counted = engine.generate(
        requests, GenerationSettings(max_new_tokens=48, record_routing=True, routing_counts_only=True)
    )
    n_experts = max(engine.spec.n_experts.values())
    assert any(r.think for r in per_token), "no answer opened a <think> trace: the split is not exercised"
    for reference, device in zip(per_token, counted, strict=True):
        assert device.routing is None and device.span_counts is not None
        assert device.text == reference.text
        assert reference.routing is not None
        expected = reference.routing.span_counts(n_experts)
        for span in Span:
            assert device.span_counts.tokens[span] == expected.tokens[span], (reference.id, span)
            assert np.array_equal(device.span_counts.counts[span], expected.counts[span]), (reference.id, span)
    assert any(r.span_counts.tokens[Span.THINK] > 0 for r in counted if r.span_counts is not None)
