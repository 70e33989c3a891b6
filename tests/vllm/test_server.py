"""`harness serve`: the OpenAI-compatible server answers a chat completion with a per-request
intervention and the MoTE RPCs over HTTP; the test owns the process and ends it by its pid."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from marks import VLLM
from servers import Server, start_all

from harness.mote import Intervention
from harness.vllm_plugin.protocol import RECORD_KEY, RPC_FETCH, RPC_STATUS, WorkerRecord

pytestmark = [*VLLM, pytest.mark.slow]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(vllm_model_dir, tmp_path_factory):
    model = str(vllm_model_dir("qwen3_moe"))
    served = Server(model, Path(tmp_path_factory.mktemp("serve")), max_model_len=512)
    try:
        yield start_all([served])[0].url, model
    finally:
        served.kill(signal.SIGTERM)  # our process group only: the server and the engine it spawned
    assert served.proc is not None and served.proc.returncode is not None


def test_chat_completion_with_per_request_intervention_and_rpc(server):
    from openai import OpenAI

    base, model = server
    status = post(f"{base}/collective_rpc", {"method": RPC_STATUS})["results"][0]
    assert status["compiled"] is False and status["moe_layers"] == {"0": 8, "1": 8, "2": 8}
    iv = Intervention.suppress({0: [0, 1], 2: [2]}, mode="mask")
    client = OpenAI(base_url=f"{base}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What happened in the city last year?"}],
        max_tokens=8,
        temperature=0.0,
        extra_body={"vllm_xargs": {"mote": iv.to_json(), RECORD_KEY: "served-1"}},
    )
    assert reply.choices[0].message.content is not None
    fetched = post(f"{base}/collective_rpc", {"method": RPC_FETCH, "args": [json.dumps(["served-1"])]})
    record = WorkerRecord.decode(fetched["results"][0]["served-1"])
    assert record.topk_ids.shape[0] >= reply.usage.prompt_tokens
    layer0 = record.topk_ids[:, list(record.layers).index(0)]
    assert not np.isin(layer0, [0, 1]).any()


def test_serve_command_passes_vllm_arguments_through_after_its_defaults():
    from harness.cli.serve import SERVER_MODULE, server_command

    argv, env = server_command(
        "/m", ["--port", "9001", "--tensor-parallel-size", "8", "--enable-expert-parallel", "--dev-rpc"]
    )
    assert argv[1:3] == ["-m", SERVER_MODULE]
    assert argv[argv.index("--port") + 1] == "9001" and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv.index("--enforce-eager") < argv.index("--tensor-parallel-size")  # user args come last
    assert argv[-3:] == ["--tensor-parallel-size", "8", "--enable-expert-parallel"]
    assert env["VLLM_SERVER_DEV_MODE"] == "1"


def test_openai_backend_matches_hf_through_the_server(server, hf_backend):
    from harness.backends.base import GenerationRequest, GenerationSettings
    from harness.backends.openai_backend import OpenAIBackend

    base, model = server
    client = OpenAIBackend(base, model, model)
    reference = hf_backend("qwen3_moe")
    assert client.spec == reference.spec
    prompt = "What happened in the city last year? Let me think about it step by step."
    ivs = [
        Intervention.none(),
        Intervention.suppress({0: [0, 1], 2: [2]}, mode="drop"),
        Intervention.suppress({0: [0, 1], 2: [2]}, mode="mask"),
        Intervention.stimulate({0: [3], 2: [4]}),
    ]
    requests = [GenerationRequest(id=str(i), prompt=prompt, intervention=iv) for i, iv in enumerate(ivs)]
    settings = GenerationSettings(max_new_tokens=12, record_routing=True)
    for got, expected in zip(client.generate(requests, settings), reference.generate(requests, settings), strict=True):
        assert got.text == expected.text
        assert (got.n_prompt_tokens, got.n_generated_tokens) == (expected.n_prompt_tokens, expected.n_generated_tokens)
        assert np.array_equal(got.routing.span, expected.routing.span)
        assert np.array_equal(np.sort(got.routing.topk_ids, -1), np.sort(expected.routing.topk_ids, -1))


def test_openai_backend_span_counts_from_the_servers_device_equal_those_of_per_token_records(server):
    """What `harness run` keeps of a served model's discovery (span counts) comes from device-side counts
    over vllm_xargs, equal to the per-token records' (the server reads whether the prompt opened a trace)."""
    from harness.backends.base import GenerationRequest, GenerationSettings
    from harness.backends.openai_backend import OpenAIBackend
    from harness.mote.records import Span

    base, model = server
    client = OpenAIBackend(base, model, model)
    assert client.think_ids is not None  # the tiny model's <think> / </think> are single tokens
    prompt = "What happened in the city last year? Let me think about it step by step."
    ivs = [Intervention.none(), Intervention.suppress({0: [0, 1], 2: [2]}, mode="drop")]
    requests = [GenerationRequest(id=str(i), prompt=prompt, intervention=iv) for i, iv in enumerate(ivs)]
    per_token = client.generate(requests, GenerationSettings(max_new_tokens=12, record_routing=True))
    counted = client.generate(
        requests, GenerationSettings(max_new_tokens=12, record_routing=True, routing_counts_only=True)
    )
    n_experts = max(client.spec.n_experts.values())
    for reference, device in zip(per_token, counted, strict=True):
        assert device.routing is None and device.span_counts is not None and reference.routing is not None
        expected = reference.routing.span_counts(n_experts)
        for span in Span:
            assert device.span_counts.tokens[span] == expected.tokens[span], (reference.id, span)
            assert np.array_equal(device.span_counts.counts[span], expected.counts[span]), (reference.id, span)


def test_harness_run_with_backend_openai_runs_every_condition_through_the_server(server, tmp_path):
    from harness.run.runner import Runner
    from harness.suite.schema import load_suite

    base, model = server
    (tmp_path / "iv.yaml").write_text("kind: suppress\nmode: drop\nexperts: {0: [0, 1], 2: [2]}\n")
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(
        f"""name: served
model: {model}
backend: openai
server: {{base_url: "{base}", model: "{model}"}}
generation: {{max_new_tokens: 8}}
tasks:
  - {{name: sensitive, type: refusal, source: organism/refusal, judge: refusal-string, limit: 3}}
conditions:
  targeted: {{intervention: iv.yaml, modes: [drop, mask]}}
  random: {{seeds: 2, modes: [drop]}}
"""
    )
    rows = Runner(load_suite(suite_file), suite_file, tmp_path / "run").run()
    conditions = {r.condition for r in rows if r.metric == "refusal_rate"}
    assert {"baseline", "targeted", "targeted:mask", "random"} <= conditions
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    prompts = {s["id"] for s in samples}
    assert len(samples) == 5 * len(prompts)  # baseline, 2 targeted modes, 2 random seeds
    assert len({s["intervention"] for s in samples}) == 5
