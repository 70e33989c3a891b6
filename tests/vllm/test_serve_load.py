"""`harness serve` under load (bench/serve_load.py --short: 64 clients, 200 requests on the organism): no
intervention leaks between requests, no record lost or misbound, every bad request a 4xx naming its field
while the server keeps serving, nothing left in the worker, memory roughly flat. No timing thresholds.

Also the admission checks that made this hold (harness/vllm_plugin/admission.py): a malformed or out-of-range
intervention used to reach the worker and stop the engine (HTTP 500 for every request, then no server), and
a streamed one got an error event inside a 200 stream; and mote_status' `held` field the load test reads.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from marks import VLLM

from harness.mote.intervention import Intervention
from harness.vllm_plugin.protocol import INTERVENTION_KEY, RECORD_KEY

pytestmark = VLLM

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3


@pytest.fixture(scope="module")
def organism_config():
    from transformers import AutoConfig

    from harness.models.resolve import organism_path

    return AutoConfig.from_pretrained(str(organism_path()), local_files_only=True)


def processor(hf_config, prefix_caching: bool = False) -> SimpleNamespace:
    """An InputProcessor as the admission checks see it."""
    return SimpleNamespace(
        model_config=SimpleNamespace(hf_config=hf_config),
        cache_config=SimpleNamespace(enable_prefix_caching=prefix_caching),
    )


def params(**extra) -> SimpleNamespace:
    return SimpleNamespace(extra_args=extra or None)


BAD = {
    "malformed": ('{"kind": "suppress", "experts": {1: [2]', "field '<json>'"),
    "layer_out_of_range": ('{"kind":"suppress","mode":"mask","experts":{"40":[1]}}', "field 'experts.40'"),
    "dense_layer": ('{"kind":"suppress","mode":"drop","experts":{"0":[1]}}', "field 'experts.0'"),
    "unknown_expert": ('{"kind":"suppress","mode":"mask","experts":{"1":[999]}}', "field 'experts.1'"),
    "bad_kind": ('{"kind":"explode","experts":{"1":[2]}}', "field 'kind'"),
    "too_many_forced": ('{"kind":"stimulate","experts":{"2":[1,2,3]}}', "field 'experts.2'"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_admission_refuses_an_intervention_the_worker_could_not_apply_naming_the_field(name, organism_config):
    from vllm.exceptions import VLLMValidationError

    from harness.vllm_plugin.admission import check_before_generate, check_request_args

    text, field = BAD[name]
    proc = processor(organism_config)
    request = SimpleNamespace(sampling_params=params(**{INTERVENTION_KEY: text}), cache_salt=None)
    with pytest.raises(VLLMValidationError, match="vllm_xargs.mote: " + field.replace("(", r"\(")) as err:
        check_request_args(proc, request)
    assert err.value.parameter == "vllm_xargs.mote"
    with pytest.raises(VLLMValidationError, match=field.replace("(", r"\(")):
        check_before_generate(proc, {"prompt_token_ids": [1, 2]}, params(**{INTERVENTION_KEY: text}))


def test_admission_lets_good_requests_through(organism_config):
    from harness.vllm_plugin.admission import admission_spec, check_before_generate, check_request_args

    proc = processor(organism_config)
    good = [
        Intervention.suppress({1: [24, 41], 5: [19, 25]}, mode="drop").to_json(),
        Intervention.suppress({1: [24, 41]}, mode="mask").to_json(),
        Intervention.stimulate({1: [24, 41], 3: [15]}).to_json(),
        Intervention.none().to_json(),
        "",
    ]
    for text in good:
        check_request_args(proc, SimpleNamespace(sampling_params=params(**{INTERVENTION_KEY: text})))
        check_before_generate(proc, {"prompt_token_ids": [1]}, params(**{INTERVENTION_KEY: text, RECORD_KEY: "k"}))
    check_before_generate(proc, {"prompt_token_ids": [1]}, params())
    spec = admission_spec(proc)
    assert spec is not None and spec.moe_layers == (1, 2, 3, 4, 5) and spec.n_experts[1] == 64
    assert admission_spec(proc) is spec  # computed once per processor


def test_admission_without_a_readable_layout_still_checks_the_syntax():
    from vllm.exceptions import VLLMValidationError

    from harness.vllm_plugin.admission import admission_spec, check_request_args

    proc = processor(SimpleNamespace(model_type="unknown"))
    assert admission_spec(proc) is None
    with pytest.raises(VLLMValidationError, match="field '<json>'"):
        check_request_args(proc, SimpleNamespace(sampling_params=params(**{INTERVENTION_KEY: "{oops"})))
    check_request_args(proc, SimpleNamespace(sampling_params=params(**{INTERVENTION_KEY: BAD["dense_layer"][0]})))


def test_served_requests_are_checked_before_the_stream_starts(organism_config):
    """AsyncLLM.generate is an async generator: without the wrapper a bad request is seen only when the stream
    is first read (after the HTTP 200). The wrapper raises when generate() is called."""
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.async_llm import AsyncLLM

    from harness.vllm_plugin import register

    register()
    assert getattr(AsyncLLM.generate, "_mote_wrapped", False)
    engine = SimpleNamespace(input_processor=processor(organism_config))
    with pytest.raises(VLLMValidationError, match=r"experts\.40"):
        AsyncLLM.generate(
            engine, {"prompt_token_ids": [1]}, params(**{INTERVENTION_KEY: BAD["layer_out_of_range"][0]}), "r"
        )
    # prefix caching on: an unsalted intervention or a recording is refused there too, a salted one is not
    iv = Intervention.suppress({1: [24]}, mode="mask")
    cached = SimpleNamespace(input_processor=processor(organism_config, prefix_caching=True))
    with pytest.raises(VLLMValidationError, match="cache_salt"):
        AsyncLLM.generate(cached, {"prompt_token_ids": [1]}, params(**{INTERVENTION_KEY: iv.to_json()}), "r")
    with pytest.raises(VLLMValidationError, match="routing capture is refused"):
        AsyncLLM.generate(cached, {"prompt_token_ids": [1]}, params(**{RECORD_KEY: "k"}), "r")
    salted = {"prompt_token_ids": [1], "cache_salt": iv.fingerprint()}
    generator = AsyncLLM.generate(cached, salted, params(**{INTERVENTION_KEY: iv.to_json()}), "r")
    assert inspect.isasyncgen(generator)  # vLLM's own generator, not started (it would need a real engine)


def test_mote_status_reports_what_the_worker_holds():
    from test_vllm_records import runner, runtime_for, step

    from harness.vllm_plugin.runtime import _ATTR
    from harness.vllm_plugin.worker import MoteWorkerExtension

    iv = Intervention.suppress({0: [1]}, mode="mask").to_json()
    run = runner([{RECORD_KEY: "k"}, {INTERVENTION_KEY: iv}])
    run.vllm_config.model_config.hf_config = SimpleNamespace(model_type="test")
    run.vllm_config.model_config.model = "test-model"  # not a folder: the weights' identity is its name
    run.vllm_config.load_config = SimpleNamespace(load_format="auto")
    runtime = runtime_for(run)
    for hook in runtime.layers.values():
        hook.router = SimpleNamespace(top_k=2)
    run.__dict__[_ATTR] = runtime
    ext = MoteWorkerExtension()
    ext.model_runner = run
    status = ext.mote_status()
    assert status["held"]["records"] == 0
    assert status["weights"] == {"name": "test-model", "sha256": None, "load_format": "auto"}
    step(runtime, 6)
    held = ext.mote_status()["held"]
    assert held["records"] == 1 and held["parsed_interventions"] == 1 and held["plans"] == 1
    assert held["record_rows"] == 3  # the recorded request's 3 of the step's 6 tokens
    assert held["step_open"] is False and held["dropped_keys"] == 0 and held["cache_limit"] >= held["tables"]
    record, _ = runtime.take("k")
    assert record is not None and ext.mote_status()["held"]["records"] == 0
    assert ext.mote_status()["held"]["record_rows"] == 0


# -- the load test ---------------------------------------------------------------------------------------


def load_bench():
    spec = importlib.util.spec_from_file_location("serve_load", REPO / "bench" / "serve_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_serve_under_load_short_form(tmp_path):
    bench = load_bench()
    out = tmp_path / "serve_load.json"
    args = bench.parse_args(["--short", "--out", str(out)])
    result = bench.run(args)  # starts the server and always stops it (its own process group)
    assert result["server_exit"] is not None
    assert json.loads(out.read_text())["requests_done"] == result["requests_done"]
    detail = json.dumps({k: result[k] for k in ("errors_by_kind", "leak_examples", "records", "health")})[:3000]

    assert result["requests_not_run"] == 0 and result["requests_done"] == 200, detail
    assert result["good"]["failed"] == 0 and result["good"]["completed"] > 100, detail
    assert result["good"]["recorded"] > 0 and result["good"]["streamed"] > 0 and result["disconnected"] > 0
    assert result["leaked_interventions"] == 0, detail
    records = result["records"]
    assert records["lost"] == 0 and records["misbound"] == 0, detail
    assert records["pending_after_load_not_orphans"] == [], detail
    assert records["orphans_of_dropped_streams"]["misbound"] == 0
    assert records["orphans_of_dropped_streams"]["errors"] == 0
    # every kind of bad request was sent, each got a 4xx whose message names the field
    assert set(result["bad_requests"]) == set(bench.bad_requests()), result["bad_requests"]
    for kind, counts in result["bad_requests"].items():
        assert counts["sent"] == counts["refused_4xx_naming_field"] > 0, (kind, result["bad_request_messages"])
    assert result["bad_not_refused"] == 0
    assert result["health"]["failed"] == 0 and result["health"]["ok"] > 0 and result["health"]["after"] == 200
    held = result["worker_held_after"]
    assert held["records"] == 0 and held["dropped_keys"] == 0 and held["step_open"] is False, held
    assert max(held["parsed_interventions"], held["tables"], held["plans"]) <= held["cache_limit"], held
    assert result["pending_records_final"] == []
    rss = result["rss_bytes"]
    assert rss["before"] > 0 and rss["growth"] < GIB, rss  # generous: a leak per request would show at 200
    assert result["goals_met"] is True
