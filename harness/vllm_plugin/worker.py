"""Worker extension: named RPCs mixed into every vLLM worker (`worker_extension_cls`).

Callable offline as `llm.collective_rpc("mote_status")` and over HTTP as
`POST /collective_rpc {"method": "mote_status", "args": ["..."]}` (server started with
`VLLM_SERVER_DEV_MODE=1`). Arguments and results are JSON-safe (the HTTP endpoint passes strings),
except `mote_fetch_arrays` (raw bytes, for in-process clients).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from harness import __version__ as harness_version
from harness.mote.intervention import Intervention
from harness.vllm_plugin.checks import MoteVLLMError, vllm_version
from harness.vllm_plugin.protocol import WorkerRecord, error_answer


class MoteWorkerExtension:
    """Methods vLLM adds to its worker class; `self.model_runner` is the worker's runner."""

    model_runner: Any

    def _mote(self) -> Any:
        from harness.vllm_plugin.runtime import MoteRuntime

        runtime = MoteRuntime.of(self.model_runner)
        runtime.install()
        return runtime

    def mote_status(self, _: str = "") -> dict[str, Any]:
        runtime = self._mote()
        config = self.model_runner.vllm_config
        return {
            "vllm_version": vllm_version(),
            "plugin_version": harness_version,
            # what a replica check compares: the served folder's content hash (run_store.model_identity)
            # and how it was loaded (a child assembled at load names its recipe in its folder's json)
            "weights": weights_identity(str(config.model_config.model), str(config.load_config.load_format)),
            "model_type": str(getattr(config.model_config.hf_config, "model_type", "")),
            "moe_layers": {str(layer): n for layer, n in runtime.n_experts().items()},
            "top_k": runtime.top_k(),
            "compiled": runtime.compiled,
            # None: interventions and recording work on this engine (eager, or compiled with the MoE op
            # outside every traced graph / captured CUDA graph); else why they are refused
            "hook_problem": runtime.hook_problem,
            # layer -> the opaque op in which its router hook runs: "mote::route_hook" where
            # torch.compile traces the router (CPU), "vllm::moe_forward" (GPU), "python" (eager)
            "hook_ops": {str(layer): op for layer, op in runtime.hook_ops.items()},
            "global_intervention": runtime.global_intervention.fingerprint(),
            "record_all": runtime.record_all,
            "pending_records": sorted(runtime.records),
            # what the worker holds between steps (read-only; this rank's): records not fetched yet, keys
            # the cap dropped (their fetch says so), the bounded caches of parsed interventions / tables /
            # step plans, and whether a step is open (only inside a forward)
            "held": runtime.held(),
            "selection_edits": {str(layer): hook.math_error or "ok" for layer, hook in runtime.layers.items()},
            # layer -> True where a mask-mode suppression is applied to the logits before vLLM's own top-k
            # (route_hook.masks_logits), False where the selection is redone after it
            "mask_before_topk": {str(layer): hook.masks_logits for layer, hook in runtime.layers.items()},
            # with MOTE_VLLM_TIMING=1 in the worker's environment: cumulative seconds per part of a step
            # (harness/vllm_plugin/timing.py); None when off
            "timing": None if runtime.timing is None else runtime.timing.as_dict(),
        }

    def _prefix_caching(self) -> bool:
        from harness.vllm_plugin.prefix_cache import prefix_caching_on

        return prefix_caching_on(self.model_runner.vllm_config.cache_config)

    def mote_set_global_intervention(self, intervention_json: str) -> str:
        """Intervention for every request that carries none of its own; returns its fingerprint.
        Refused with prefix caching on: requests without their own intervention carry no cache_salt
        that could keep prefixes cached before the change apart from those after it."""
        runtime = self._mote()
        data = json.loads(intervention_json) if intervention_json else {"kind": "none"}
        intervention = Intervention.from_data(data, "mote_set_global_intervention")
        if not intervention.is_none and self._prefix_caching():
            raise MoteVLLMError(
                "mote_set_global_intervention: refused with prefix caching on (cached prefixes were routed "
                "without it and would be served as if under it); start the engine with "
                "--no-enable-prefix-caching, or send per-request interventions with a cache_salt"
            )
        runtime.global_intervention = intervention
        return intervention.fingerprint()

    def mote_set_recording(self, on: str) -> bool:
        """Record every request (keyed by vLLM's request id) while on; per-request `mote_record`
        keys work either way. Refused with prefix caching on (cached tokens are never routed)."""
        runtime = self._mote()
        record_all = str(on).strip().lower() in ("1", "true", "on", "yes")
        if record_all and self._prefix_caching():
            raise MoteVLLMError(
                "mote_set_recording: refused with prefix caching on (cached prompt tokens are never routed, "
                "so records would miss them); start the engine with --no-enable-prefix-caching"
            )
        runtime.record_all = record_all
        return bool(runtime.record_all)

    def mote_fetch(self, keys_json: str) -> dict[str, Any]:
        """Pop the records of the given keys: key -> base64 npz (protocol.WorkerRecord), None (nothing
        recorded under it), or {"error": why} (a key two requests used, a record dropped by the cap):
        one bad key does not cost the others their records."""
        return self._fetch(keys_json, WorkerRecord.encode)

    def mote_fetch_arrays(self, keys_json: str) -> dict[str, Any]:
        """`mote_fetch` with each record as raw array bytes (WorkerRecord.to_arrays): for in-process
        clients, whose RPC carries bytes (not JSON-safe, so not over HTTP)."""
        return self._fetch(keys_json, WorkerRecord.to_arrays)

    def _fetch(self, keys_json: str, encode: Callable[[WorkerRecord], Any]) -> dict[str, Any]:
        runtime = self._mote()
        out: dict[str, Any] = {}
        for key in json.loads(keys_json):
            try:
                record, _ = runtime.take(str(key))
            except MoteVLLMError as err:
                out[str(key)] = error_answer(str(err))
                continue
            out[str(key)] = None if record is None else encode(record)
        return out

    def mote_counts(self, keys_json: str) -> dict[str, Any]:
        """Pop the counts of the given keys as count maps {layers, prompt [L][E], generated [L][E]}: for a
        `mote_count` key the device-side counts (with `think` / `answer` too when the request gave
        `mote_think`; counts.py), for a `mote_record` key made here from its per-token record. No
        per-token ids travel: the cheap path for fTRI over many prompts."""
        import numpy as np

        from harness.mote.records import count_map

        runtime = self._mote()
        n_experts = max(runtime.n_experts().values(), default=0)
        out: dict[str, Any] = {}
        for key in json.loads(keys_json):
            try:
                counted = runtime.take_counts(str(key))
                if counted is not None:
                    out[str(key)] = counted
                    continue
                record, prompt_length = runtime.take(str(key))
            except MoteVLLMError as err:
                out[str(key)] = error_answer(str(err))
                continue
            if record is None:
                out[str(key)] = None
                continue
            in_prompt = record.positions < prompt_length
            out[str(key)] = {
                "layers": record.layers.tolist(),
                "prompt": np.asarray(count_map(record.topk_ids[in_prompt], n_experts)).tolist(),
                "generated": np.asarray(count_map(record.topk_ids[~in_prompt], n_experts)).tolist(),
            }
        return out


@functools.lru_cache(maxsize=4)
def weights_identity(model: str, load_format: str) -> dict[str, Any]:
    """The served model's identity, computed once per worker: the sha256 of its local folder (full content
    up to 2 GiB of weights, else the safetensors headers and sizes), or its name when it is not a folder."""
    from pathlib import Path

    from harness.run.run_store import model_identity

    folder = Path(model)
    if not folder.is_dir():
        return {"name": model, "sha256": None, "load_format": load_format}
    identity = model_identity(folder)
    return {"name": folder.name, "sha256": identity["sha256"], "hashed": identity["hashed"], "load_format": load_format}
