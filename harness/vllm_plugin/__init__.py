"""MoTE plugin for vLLM: per-request expert interventions and routing capture inside the engine.

`register()` is the `vllm.general_plugins` entry point (pyproject.toml): vLLM calls it in every
process (API server, engine core, workers) before the model is built. It checks the vLLM version and
every internal name the hooks use (failing loudly if one moved), then wraps
`GPUModelRunner._model_forward` (CPUModelRunner inherits it) so each step knows which request each
token belongs to, and `MoERunner.__init__` so each router's output passes through the MoTE route
hook (route_hook.py: an opaque op where torch.compile traces the router, so it runs every step of a
compiled engine too). What the hook does is installed lazily, per model, on the first step that
needs it (see runtime.py). Where vLLM admits a request, `InputProcessor.process_inputs` refuses an
intervention that does not parse or does not fit the model (admission.py) and what prefix caching would
make wrong (prefix_cache.py). `MOTE_VLLM_PLUGIN=off` disables the plugin
entirely.

Named RPCs live in `harness.vllm_plugin.worker.MoteWorkerExtension` (pass it as
`worker_extension_cls`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from harness.assembly.vllm_loader import register_loader
from harness.vllm_plugin.checks import MoteVLLMError, check_hook_points, check_version

WORKER_EXTENSION = "harness.vllm_plugin.worker.MoteWorkerExtension"
_MARK = "_mote_wrapped"

__all__ = ["WORKER_EXTENSION", "MoteVLLMError", "register"]


def register() -> None:
    if os.environ.get("MOTE_VLLM_PLUGIN", "on").lower() in ("off", "0", "false"):
        return
    check_version()
    check_hook_points()
    _patch_model_forward()
    _patch_moe_runner_init()
    _patch_compile_cache_key()
    _patch_input_processor()
    _patch_async_generate()
    register_loader()


def _wrap_once(owner: Any, name: str, make: Callable[[Any], Callable[..., Any]]) -> None:
    """Replace `owner.name` by `make(original)`, once: vLLM may call register() more than once per
    process, and a second wrap would run every hook twice."""
    original = getattr(owner, name)
    if getattr(original, _MARK, False):
        return
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, _MARK, True)
    setattr(owner, name, wrapper)


def _patch_model_forward() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def make(original: Any) -> Callable[..., Any]:
        def _model_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            from harness.vllm_plugin.runtime import MoteRuntime

            runtime = MoteRuntime.of(self)
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
            embeds = kwargs.get("inputs_embeds")
            if input_ids is not None:
                n_tokens = int(input_ids.shape[0])
            elif embeds is not None:
                n_tokens = int(embeds.shape[0])
            else:
                n_tokens = int(positions.shape[-1]) if positions is not None else 0
            return runtime.forward(lambda: original(self, *args, **kwargs), n_tokens, positions)

        return _model_forward

    _wrap_once(GPUModelRunner, "_model_forward", make)


def _patch_moe_runner_init() -> None:
    """Each MoE layer's router ends with the MoTE route hook from the moment it is built, before
    vLLM compiles the model (route_hook.py)."""
    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    def make(original: Any) -> Callable[..., Any]:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            from vllm.config import CompilationMode, get_current_vllm_config

            from harness.vllm_plugin.compiled import MOE_OPS, op_name
            from harness.vllm_plugin.route_hook import wrap_router

            mode = get_current_vllm_config().compilation_config.mode
            compiling = mode is not None and mode != CompilationMode.NONE
            # the router is traced when the engine compiles and vLLM calls the MoE body directly (CPU);
            # inside the opaque moe_forward op (GPU) or in an eager engine it runs as Python
            traced = compiling and op_name(getattr(self, "_forward_entry", None)) not in MOE_OPS
            wrap_router(self.router, str(self.layer_name), via_op=traced)

        return __init__

    _wrap_once(MoERunner, "__init__", make)


def _patch_input_processor() -> None:
    """Requests with an intervention the worker could not apply (admission.py), and requests that prefix
    caching would make wrong (recorded, or intervened without a salt, prefix_cache.py), are refused where
    vLLM admits them: HTTP 400, the engine keeps running."""
    from vllm.v1.engine.input_processor import InputProcessor

    def make(original: Any) -> Callable[..., Any]:
        def process_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
            from harness.vllm_plugin.admission import check_request_args
            from harness.vllm_plugin.prefix_cache import check_admitted_request

            request = original(self, *args, **kwargs)
            check_request_args(self, request)
            check_admitted_request(self.cache_config, request)
            return request

        return process_inputs

    _wrap_once(InputProcessor, "process_inputs", make)


def _patch_async_generate() -> None:
    """The served API (AsyncLLM) runs the admission checks when it creates a request: `generate` is an
    async generator that reaches `process_inputs` only when a stream is first read, after the HTTP 200
    has gone out, so a bad streamed request would get an error event instead of a 400 (admission.py)."""
    from vllm.v1.engine.async_llm import AsyncLLM

    def make(original: Any) -> Callable[..., Any]:
        def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
            from harness.vllm_plugin.admission import check_before_generate

            prompt = kwargs.get("prompt", args[0] if args else None)
            params = kwargs.get("sampling_params", args[1] if len(args) > 1 else None)
            check_before_generate(self.input_processor, prompt, params)
            return original(self, *args, **kwargs)

        return generate

    _wrap_once(AsyncLLM, "generate", make)


# Bump when what the plugin puts into a compiled graph changes.
COMPILE_CACHE_FACTOR = "mote-route-hook-2"  # 2: the mote::route_logits op


def _patch_compile_cache_key() -> None:
    """vLLM keeps compiled graphs on disk (VLLM_CACHE_ROOT/torch_compile_cache/torch_aot_compile/<hash>,
    `vllm/compilation/decorators.py`) under a hash of the config and vLLM's env vars, which does not
    see the plugin. Add a factor, so a graph compiled without the plugin (no route hook op: the per-step
    check would refuse every MoTE request) is never loaded by an engine with it, and vice versa."""
    from vllm.compilation import caching

    def make(original: Any) -> Callable[..., Any]:
        def aot_compile_hash_factors(vllm_config: Any) -> list[str]:
            return [*original(vllm_config), COMPILE_CACHE_FACTOR]

        return aot_compile_hash_factors

    _wrap_once(caching, "aot_compile_hash_factors", make)
