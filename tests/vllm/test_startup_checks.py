"""Start-up safety: unsupported versions, moved hook names, compiled engines and zeroed captures fail
loudly instead of silently doing nothing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from marks import VLLM

from harness.vllm_plugin.checks import (
    HOOK_POINTS,
    MoteVLLMError,
    check_hook_points,
    check_version,
)
from harness.vllm_plugin.protocol import WorkerRecord
from harness.vllm_plugin.runtime import MoteRuntime, reject_all_zero

pytestmark = VLLM


def test_installed_vllm_passes_the_checks():
    check_version()
    check_hook_points()


def test_patched_away_hook_name_produces_a_clear_error(monkeypatch):
    from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter

    monkeypatch.delattr(BaseRouter, "_compute_routing")
    with pytest.raises(MoteVLLMError, match=r"BaseRouter\._compute_routing .*AttributeError") as err:
        check_hook_points()
    assert "silently do nothing" in str(err.value)


def test_plugin_register_refuses_a_moved_model_runner_method(monkeypatch):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from harness.vllm_plugin import register

    monkeypatch.delattr(GPUModelRunner, "_model_forward")
    with pytest.raises(MoteVLLMError, match=r"GPUModelRunner\._model_forward"):
        register()


def test_unsupported_version_is_refused_with_the_supported_list():
    with pytest.raises(MoteVLLMError, match=r"0\.31\.9 is not a supported version.*0\.32\.0"):
        check_version("0.31.9")


def test_every_hook_point_names_why_it_is_hooked():
    assert all(point.why for point in HOOK_POINTS)


def _compiled_runner():
    from vllm.config import CompilationMode, CUDAGraphMode

    request = SimpleNamespace(sampling_params=SimpleNamespace(extra_args={"mote_record": "k"}), num_prompt_tokens=3)
    return SimpleNamespace(
        input_batch=SimpleNamespace(num_reqs=1, req_ids=["r0"]),
        query_start_loc=SimpleNamespace(np=np.asarray([0, 3])),
        requests={"r0": request},
        model=None,
        device=torch.device("cpu"),
        vllm_config=SimpleNamespace(
            model_config=SimpleNamespace(enforce_eager=False),
            compilation_config=SimpleNamespace(mode=CompilationMode.VLLM_COMPILE, cudagraph_mode=CUDAGraphMode.NONE),
        ),
    )


def test_recording_under_torch_compile_is_refused():
    runtime = MoteRuntime(_compiled_runner())
    with pytest.raises(MoteVLLMError, match="enforce_eager=True"):
        runtime.begin_step(3, torch.arange(3))


def test_compiled_engine_without_mote_requests_runs_untouched():
    runner = _compiled_runner()
    runner.requests["r0"].sampling_params.extra_args = {}
    runtime = MoteRuntime(runner)
    runtime.begin_step(3, torch.arange(3))
    assert runtime.step is None


def test_all_zero_capture_is_rejected():
    record = WorkerRecord(
        positions=np.arange(4),
        topk_ids=np.zeros((4, 3, 2), dtype=np.int32),
        topk_weights=np.full((4, 3, 2), 0.5, dtype=np.float32),
        layers=np.arange(3, dtype=np.int32),
    )
    with pytest.raises(MoteVLLMError, match="all top-k ids equal to 0"):
        reject_all_zero(record, "req")


def test_a_real_capture_with_expert_zero_is_accepted():
    ids = np.tile(np.asarray([[0, 5]], dtype=np.int32), (4, 3, 1))
    record = WorkerRecord(np.arange(4), ids, np.ones_like(ids, dtype=np.float32), np.arange(3, dtype=np.int32))
    reject_all_zero(record, "req")
