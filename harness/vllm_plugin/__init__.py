"""MoTE plugin for vLLM: per-request expert interventions and routing capture inside the engine.

`register()` is the `vllm.general_plugins` entry point (pyproject.toml): vLLM calls it in every
process (API server, engine core, workers) before the model is built. It checks the vLLM version and
every internal name the hooks use (failing loudly if one moved), then wraps
`GPUModelRunner._model_forward` (CPUModelRunner inherits it) so each step knows which request each
token belongs to. The router hooks themselves are installed lazily, per model, on the first step
that needs them (see runtime.py). `MOTE_VLLM_PLUGIN=off` disables the plugin entirely.

Named RPCs live in `harness.vllm_plugin.worker.MoteWorkerExtension` (pass it as
`worker_extension_cls`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

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


def _patch_model_forward() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._model_forward
    if getattr(original, _MARK, False):
        return  # idempotent: vLLM may call register() more than once per process

    @functools.wraps(original)
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
        runtime.begin_step(n_tokens, positions)
        try:
            output = original(self, *args, **kwargs)
            runtime.end_step()
        finally:
            runtime.step = None
        return output

    setattr(_model_forward, _MARK, True)
    runner_class: Any = GPUModelRunner
    runner_class._model_forward = _model_forward
