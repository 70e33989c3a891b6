"""Per-request MoTE arguments checked where vLLM admits a request, before they reach the engine.

The worker parses each request's `mote` extra arg inside the model step (runtime.py); an error raised
there is an error of the whole step, so vLLM stops the engine and every request of the server fails
(a malformed intervention sent to `harness serve` used to kill it: HTTP 500 for everyone, then no
server). So `InputProcessor.process_inputs` (in the API server, or the offline `LLM`'s process) first
parses the intervention as the worker will (`str(value)`, JSON, `Intervention.from_data`) and checks
it against the model's MoE layout (`ModelSpec.check`: MoE layer indices, expert ids, how many experts
can be forced or masked), and refuses a bad one with vLLM's validation error: HTTP 400 naming the
field, e.g. `vllm_xargs.mote: field 'experts.40': expected an MoE layer index ...`; the engine keeps
running. The served API (`AsyncLLM.generate`) runs the same checks, and the prefix-caching ones
(prefix_cache.py), when it creates the request: its generator reaches `process_inputs` only once a
stream is read, after the HTTP 200 has gone out, so a bad streamed request would otherwise get an error
event inside a 200 stream instead of a 400.

The layout comes from the served model's config (transformers builds the model on the meta device: no
weights, once per process). A model transformers cannot build that way is checked for syntax only
(logged once); its out-of-range ids would still reach the worker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from harness.common.errors import InputError
from harness.mote.intervention import Intervention
from harness.mote.spec import ModelSpec
from harness.vllm_plugin.protocol import COUNT_KEY, INTERVENTION_KEY, THINK_KEY

PARAMETER = f"vllm_xargs.{INTERVENTION_KEY}"
_SPEC_ATTR = "_mote_admission_spec"

log = logging.getLogger("harness.vllm_plugin")


def intervention_problem(extra_args: dict[str, Any] | None, spec: ModelSpec | None) -> str | None:
    """Why the engine must refuse this request's `mote` extra arg, or None if it is fine (or absent)."""
    if not extra_args:
        return None
    value = extra_args.get(INTERVENTION_KEY)
    if not value:
        return None  # the worker treats an empty value as no intervention
    text = str(value)  # what the worker parses (runtime.MoteRuntime._scan_requests)
    try:
        data = json.loads(text)
    except ValueError as err:
        return str(
            InputError(PARAMETER, "<json>", "an intervention as a JSON string (Intervention.to_json())", str(err))
        )
    try:
        intervention = Intervention.from_data(data, PARAMETER)
        if spec is not None:
            spec.check(intervention, PARAMETER)
    except InputError as err:
        return str(err)
    return None


def spec_of_config(hf_config: Any) -> ModelSpec | None:
    """The MoE layout of a transformers config (model built on the meta device), None if it cannot be
    built that way (then only the syntax of interventions is checked at admission)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM

        from harness.backends.hf_discovery import spec_from_model

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
        return spec_from_model(model)
    except Exception as err:  # any failure only weakens the check (logged)
        log.warning(
            "MoTE: cannot read the MoE layout of %s from its config (%s: %s); interventions are checked for "
            "syntax only at admission, and an out-of-range layer or expert would stop the engine",
            getattr(hf_config, "model_type", "?"),
            type(err).__name__,
            err,
        )
        return None


def admission_spec(processor: Any) -> ModelSpec | None:
    """The spec for `processor` (an InputProcessor), computed on first use and kept on it."""
    cached = processor.__dict__.get(_SPEC_ATTR, _SPEC_ATTR)
    if cached is _SPEC_ATTR:
        cached = spec_of_config(processor.model_config.hf_config)
        processor.__dict__[_SPEC_ATTR] = cached
    return cached


def think_problem(extra_args: dict[str, Any] | None) -> str | None:
    """Why the engine must refuse this request's `mote_think` extra arg (counts.ThinkIds), or None."""
    if not extra_args or extra_args.get(THINK_KEY) is None:
        return None
    from harness.vllm_plugin.checks import MoteVLLMError
    from harness.vllm_plugin.counts import ThinkIds

    if not extra_args.get(COUNT_KEY):
        return f"vllm_xargs.{THINK_KEY}: the think / answer split is made on device-side counts; add {COUNT_KEY}"
    try:
        ThinkIds.from_data(extra_args[THINK_KEY], f"vllm_xargs.{THINK_KEY}")
    except MoteVLLMError as err:
        return str(err)
    return None


def raise_arg_problems(processor: Any, extra: dict[str, Any]) -> None:
    """vLLM's validation error (HTTP 400) for a `mote` or `mote_think` extra arg the worker could not use."""
    from vllm.exceptions import VLLMValidationError

    if extra.get(INTERVENTION_KEY):
        problem = intervention_problem(extra, admission_spec(processor))
        if problem is not None:
            raise VLLMValidationError(problem, parameter=PARAMETER)
    problem = think_problem(extra)
    if problem is not None:
        raise VLLMValidationError(problem, parameter=f"vllm_xargs.{THINK_KEY}")


def check_request_args(processor: Any, request: Any) -> None:
    """Raise vLLM's validation error (HTTP 400) if `request` (an EngineCoreRequest) carries an
    intervention (or a think split) the worker could not apply."""
    params = getattr(request, "sampling_params", None)
    extra = getattr(params, "extra_args", None)
    if extra:
        raise_arg_problems(processor, extra)


def check_before_generate(processor: Any, prompt: Any, params: Any) -> None:
    """`check_request_args` and the prefix-caching checks for a request the served API is about to create
    (`prompt` an engine input dict or an EngineCoreRequest, `params` its SamplingParams). What cannot be
    read here (another prompt form) is still checked by process_inputs."""
    extra = getattr(params, "extra_args", None)
    if not extra:
        return
    from vllm.exceptions import VLLMValidationError

    from harness.vllm_plugin.prefix_cache import prefix_cache_problem, prefix_caching_on

    raise_arg_problems(processor, extra)
    if not prefix_caching_on(processor.cache_config):
        return
    if isinstance(prompt, Mapping):
        salt = prompt.get("cache_salt")
    elif hasattr(prompt, "sampling_params"):  # an EngineCoreRequest
        salt = getattr(prompt, "cache_salt", None)
    else:
        return
    found = prefix_cache_problem(extra, salt)
    if found is not None:
        parameter, why = found
        raise VLLMValidationError(why, parameter=parameter)
