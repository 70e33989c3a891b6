"""vLLM's loader for a child assembled at load (`load_format="mote_assembly"`): the model folder is a
child folder without weights (in_memory.py), and each tensor is interpolated from the parents as vLLM
asks for the next one, so a lambda sweep over R1 children writes no child to disk. Registered by the
MoTE plugin in every vLLM process; VLLMBackend picks it for such folders. Pinned to vLLM 0.32's
`DefaultModelLoader.get_all_weights` (the plugin's start-up checks fail loudly if it moves)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOAD_FORMAT = "mote_assembly"


def register_loader() -> None:
    from vllm.model_executor.model_loader import register_model_loader
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    if getattr(register_loader, "done", False):
        return

    class AssemblyLoader(DefaultModelLoader):
        """vLLM's default loading (its weight mapping, loaded-weights check, post-processing), fed by
        the child's tensors instead of safetensors files."""

        def download_model(self, model_config: Any) -> None:
            pass  # the parents are local folders, checked when the plan is made

        def get_all_weights(self, model_config: Any, model: Any) -> Iterator[tuple[str, Any]]:
            import time

            from harness.assembly.in_memory import child_tensors, plan_of_child

            if getattr(self, "counter_before_loading_weights", 0.0) == 0.0:  # vLLM's "Loading weights took"
                self.counter_before_loading_weights = time.perf_counter()
            yield from child_tensors(plan_of_child(Path(model_config.model)))

    register_model_loader(LOAD_FORMAT)(AssemblyLoader)
    register_loader.done = True  # type: ignore[attr-defined]
