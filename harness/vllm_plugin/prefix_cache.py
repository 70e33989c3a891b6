"""Prefix caching and MoTE: which requests an engine with prefix caching on may take.

A cached prefix was computed under whatever routing its first request had, and its tokens are never
routed again. So with `enable_prefix_caching` on:
- a recorded or counted request (`mote_record`, `mote_count`) is refused: its cached prompt tokens
  would be missing from the record;
- a request with an intervention must carry a `cache_salt` that contains its intervention's
  fingerprint, so it shares cached prefixes only with requests routed the same way (vLLM hashes the
  salt into the first block's key, `v1/core/kv_cache_utils.py`). Requests without an intervention
  need no salt: unsalted prefixes are all unintervened (the worker refuses a global intervention with
  prefix caching on, worker.py).
The plugin checks this where vLLM admits a request (`InputProcessor.process_inputs`, in the API server
or the offline `LLM`'s process), so the client gets a validation error (HTTP 400) and the engine keeps
running. With prefix caching off (the default of VLLMBackend and `harness serve`) nothing is checked.
"""

from __future__ import annotations

import json
from typing import Any

from harness.mote.intervention import Intervention
from harness.vllm_plugin.protocol import COUNT_KEY, INTERVENTION_KEY, RECORD_KEY


def prefix_cache_problem(extra_args: dict[str, Any] | None, cache_salt: str | None) -> tuple[str, str] | None:
    """(parameter, why) if an engine with prefix caching on must refuse this request, else None."""
    if not extra_args:
        return None
    for key in (RECORD_KEY, COUNT_KEY):
        if extra_args.get(key):
            return (
                f"vllm_xargs.{key}",
                "MoTE routing capture is refused with prefix caching on: cached prompt tokens are never "
                "routed, so the record would miss them; start the engine with --no-enable-prefix-caching",
            )
    text = extra_args.get(INTERVENTION_KEY)
    if not text:
        return None
    intervention = Intervention.from_data(json.loads(str(text)), f"vllm_xargs.{INTERVENTION_KEY}")
    if intervention.is_none:
        return None
    fingerprint = intervention.fingerprint()
    if not cache_salt or fingerprint not in cache_salt:
        return (
            "cache_salt",
            f"a MoTE intervention with prefix caching on needs a cache_salt containing its fingerprint "
            f"{fingerprint!r} (got {cache_salt!r}): otherwise it is served prefixes cached under another "
            "routing",
        )
    return None


def prefix_caching_on(cache_config: Any) -> bool:
    """vLLM's CacheConfig.enable_prefix_caching, read directly: a renamed field must fail loudly, not
    switch these refusals off."""
    return bool(cache_config.enable_prefix_caching)


def check_admitted_request(cache_config: Any, request: Any) -> None:
    """Raise vLLM's validation error if an engine with prefix caching on must refuse `request` (an
    EngineCoreRequest)."""
    if not prefix_caching_on(cache_config):
        return
    params = getattr(request, "sampling_params", None)
    problem = prefix_cache_problem(getattr(params, "extra_args", None), getattr(request, "cache_salt", None))
    if problem is not None:
        from vllm.exceptions import VLLMValidationError

        parameter, why = problem
        raise VLLMValidationError(why, parameter=parameter)
