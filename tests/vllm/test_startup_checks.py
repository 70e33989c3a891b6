"""Start-up safety: unsupported versions, moved hook names, engines on which the router hook would not
run every step (traced, captured in CUDA graphs), hooks that did not fire and zeroed captures fail
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
from harness.vllm_plugin.compiled import MoEPath, compiled_hook_problem, safe_compilation_config
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


class _Runner(SimpleNamespace):
    """A model runner as the plugin sees it: `_model_forward` carries the MoTE wrapper's mark."""

    def _model_forward(self) -> None: ...


_Runner._model_forward._mote_wrapped = True  # type: ignore[attr-defined]


def _compiled_runner(cudagraphs=None):
    from vllm.config import CompilationMode, CUDAGraphMode

    request = SimpleNamespace(sampling_params=SimpleNamespace(extra_args={"mote_record": "k"}), num_prompt_tokens=3)
    return _Runner(
        input_batch=SimpleNamespace(num_reqs=1, req_ids=["r0"]),
        query_start_loc=SimpleNamespace(np=np.asarray([0, 3])),
        requests={"r0": request},
        model=None,
        device=torch.device("cpu"),
        vllm_config=SimpleNamespace(
            model_config=SimpleNamespace(enforce_eager=False),
            compilation_config=SimpleNamespace(
                mode=CompilationMode.VLLM_COMPILE,
                cudagraph_mode=cudagraphs or CUDAGraphMode.NONE,
                splitting_ops=[],
            ),
        ),
    )


def _path(name="model.layers.0.mlp.experts", moe_op=None, wrapped=True, via_op=True):
    return MoEPath(name=name, moe_op=moe_op, router_wrapped=wrapped, router_via_op=via_op)


def test_a_runner_whose_model_forward_is_not_wrapped_is_refused():
    runner = SimpleNamespace(**vars(_compiled_runner()))  # same attributes, plain class
    with pytest.raises(MoteVLLMError, match="_model_forward is not the MoTE wrapper"):
        MoteRuntime(runner)


def test_torch_compile_with_the_hook_in_an_opaque_op_is_accepted():
    config = _compiled_runner().vllm_config
    assert compiled_hook_problem(config, [_path()]) is None  # CPU: router traced, hook = mote::route_hook op
    gpu = _path(moe_op="vllm::moe_forward", via_op=False)  # GPU: the router runs inside vllm::moe_forward
    assert compiled_hook_problem(config, [gpu]) is None


def test_a_traced_python_hook_is_refused():
    config = _compiled_runner().vllm_config
    problem = compiled_hook_problem(config, [_path(via_op=False)])
    assert problem is not None and "frozen into the graph" in problem


def test_a_router_built_without_the_hook_is_refused_even_eager():
    config = _compiled_runner().vllm_config
    config.model_config.enforce_eager = True
    problem = compiled_hook_problem(config, [_path(wrapped=False)])
    assert problem is not None and "without the MoTE route hook" in problem


@pytest.mark.parametrize("mode", ["FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE"])
def test_full_cuda_graphs_are_refused(mode):
    from vllm.config import CUDAGraphMode

    config = _compiled_runner(getattr(CUDAGraphMode, mode)).vllm_config
    config.compilation_config.splitting_ops = safe_compilation_config(platform_is_cpu=False)["splitting_ops"]
    problem = compiled_hook_problem(config, [_path(moe_op="vllm::moe_forward")])
    assert problem is not None and "full CUDA graphs" in problem


def test_piecewise_cuda_graphs_need_the_moe_op_in_splitting_ops():
    from vllm.config import CUDAGraphMode

    config = _compiled_runner(CUDAGraphMode.PIECEWISE).vllm_config
    paths = [_path(moe_op="vllm::moe_forward"), _path("model.layers.1.mlp.experts", moe_op="vllm::moe_forward_shared")]
    config.compilation_config.splitting_ops = ["vllm::unified_attention_with_output", "vllm::moe_forward"]
    problem = compiled_hook_problem(config, paths)
    assert problem is not None and "vllm::moe_forward_shared" in problem and "splitting_ops" in problem
    safe = safe_compilation_config(platform_is_cpu=False)
    assert safe["cudagraph_mode"] == "PIECEWISE"
    config.compilation_config.splitting_ops = safe["splitting_ops"]
    assert compiled_hook_problem(config, paths) is None
    assert "vllm::unified_attention_with_output" in safe["splitting_ops"]  # attention still splits
    assert safe_compilation_config(platform_is_cpu=True) == {}


def test_breakable_cuda_graphs_are_refused(monkeypatch):
    from vllm.config import CUDAGraphMode

    monkeypatch.setenv("VLLM_USE_BREAKABLE_CUDAGRAPH", "1")
    config = _compiled_runner(CUDAGraphMode.PIECEWISE).vllm_config
    config.compilation_config.splitting_ops = safe_compilation_config(platform_is_cpu=False)["splitting_ops"]
    problem = compiled_hook_problem(config, [_path(moe_op="vllm::moe_forward")])
    assert problem is not None and "BREAKABLE" in problem


def test_mote_requests_on_an_engine_with_a_hook_problem_are_refused():
    runtime = MoteRuntime(_compiled_runner())
    runtime._installed_on = id(None)  # install() found the problem below
    runtime.hook_problem = "full CUDA graphs"
    with pytest.raises(MoteVLLMError, match=r"refused: full CUDA graphs.*enforce_eager=True"):
        runtime.begin_step(3, torch.arange(3))


def test_compiled_engine_without_mote_requests_runs_untouched():
    runner = _compiled_runner()
    runner.requests["r0"].sampling_params.extra_args = {}
    runtime = MoteRuntime(runner)
    runtime.begin_step(3, torch.arange(3))
    assert runtime.step is None


def test_a_step_whose_hook_did_not_fire_on_every_layer_fails_loudly():
    """What a hook traced away or replayed from a CUDA graph looks like at run time."""
    from harness.vllm_plugin.runtime import LayerHook
    from harness.vllm_plugin.selection import RouterMath

    runtime = MoteRuntime(_compiled_runner())
    runtime._installed_on = id(None)
    math = RouterMath(2, "softmax", True, 0, 0, None, 1.0)
    runtime.layers = {layer: LayerHook(layer, None, 8, math, None, column=layer) for layer in (0, 1, 2)}
    hooks = {layer: runtime._hook(hook) for layer, hook in runtime.layers.items()}
    logits = torch.randn(3, 8)

    def routed():
        weights, ids = torch.topk(logits.softmax(-1), 2)
        return logits, weights, ids.to(torch.int32)

    runtime.begin_step(3, torch.arange(3))
    for layer in (0, 1, 2):
        hooks[layer](*routed())
    runtime.end_step()  # every layer fired once: the record is kept
    assert runtime.take("k")[0].topk_ids.shape == (3, 3, 2)
    runtime.begin_step(3, torch.arange(3))
    hooks[0](*routed())
    hooks[2](*routed())
    with pytest.raises(MoteVLLMError, match=r"\{1: 0\}.*refusing to continue"):
        runtime.end_step()


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


def test_piecewise_cuda_graphs_around_a_traced_router_that_masks_logits_need_both_mote_ops_split():
    from vllm.config import CUDAGraphMode

    config = _compiled_runner(CUDAGraphMode.PIECEWISE).vllm_config
    traced = MoEPath(
        name="model.layers.0.mlp.experts",
        moe_op=None,
        router_wrapped=True,
        router_via_op=True,
        router_masks_logits=True,
    )
    config.compilation_config.splitting_ops = ["vllm::unified_attention_with_output", "mote::route_hook"]
    problem = compiled_hook_problem(config, [traced])
    assert problem is not None and "mote::route_logits" in problem
    config.compilation_config.splitting_ops = safe_compilation_config(platform_is_cpu=False)["splitting_ops"]
    assert compiled_hook_problem(config, [traced]) is None


def test_a_step_whose_logit_hook_did_not_run_is_refused():
    """A masked row relies on the logit hook: if it was traced away, the step fails instead of running
    the row unmasked."""
    from harness.vllm_plugin.runtime import LayerEdits, LayerHook, StepContext, logit_layers

    runtime = MoteRuntime(_compiled_runner())
    runtime.layers = {0: LayerHook(0, None, 4, None, None, column=0, masks_logits=True)}
    block = torch.tensor([[True, False, False, False], [False] * 4])
    edits = LayerEdits(
        masked_rows=[True, False],
        select_rows=[False, False],
        drop_rows=[False, False],
        logit_block=block,
        logit_index=(torch.tensor([0]), None),
        block=None,
        force=None,
    )
    step = StepContext(
        n_tokens=3,
        tables={},
        row_of_token=None,
        record_owner=None,
        all_recorded=False,
        positions=None,
        uniform_row=0,
        edits={0: edits},
        logit_layers=logit_layers({0: edits}),
    )
    step.fired[0] = 1
    with pytest.raises(MoteVLLMError, match="hook calls this step"):
        runtime.check_fired(step)
    step.fired_logits[0] = 1
    runtime.check_fired(step)


@pytest.mark.parametrize("fired", [{0: 2}, {0: 1}, {0: 1, 1: 2}, {}])
def test_a_step_whose_route_hooks_did_not_run_once_per_layer_is_refused(fired):
    from harness.vllm_plugin.runtime import LayerHook, StepContext

    runtime = MoteRuntime(_compiled_runner())
    runtime.layers = {layer: LayerHook(layer, None, 4, None, None, column=layer) for layer in (0, 1)}
    step = StepContext(n_tokens=3, tables={}, row_of_token=None, record_owner=None, all_recorded=False, positions=None)
    step.fired.update(fired)
    with pytest.raises(MoteVLLMError, match="hook calls this step"):
        runtime.check_fired(step)
    step.fired.clear()
    step.fired.update({0: 1, 1: 1})
    runtime.check_fired(step)
