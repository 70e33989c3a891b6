"""vLLM backend: the production path. One engine, every request with its own intervention.

Same contract as `HFBackend`: the prompt is the tokenizer's chat template (tokenised here and sent as
token ids, so both backends see identical inputs), text is decoded here from the generated ids with
the same rules, and routing records cover the prompt plus each generated token fed back. The routing
change itself runs inside the engine through the MoTE plugin (harness.vllm_plugin), per request via
`SamplingParams.extra_args`.

Prefix caching is off by default: a cached prefix was computed under another routing and is never
routed again. If the caller turns it on, each intervened request gets `cache_salt` = its
intervention fingerprint (prefixes are then shared only under the same routing), and recording is
refused (cached tokens are never routed, so the record would miss them): here before the batch
starts, and by the plugin itself at admission (harness.vllm_plugin.prefix_cache) for raw requests.
Status and records come from every worker and are merged (harness.vllm_plugin.ranks): under
pipeline parallel each stage holds only its own MoE layers.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.assembly.in_memory import assembled_at_load
from harness.assembly.vllm_loader import LOAD_FORMAT
from harness.backends.base import GenerationRequest, GenerationResult, GenerationSettings, render_prompt
from harness.backends.vllm_dtype import vllm_dtype
from harness.mote.intervention import Intervention
from harness.mote.records import RoutingRecord, Span, SpanCounts
from harness.mote.spec import ModelSpec
from harness.mote.think import THINK_CLOSE, THINK_OPEN, generated_spans, prompt_opens_think, split_think
from harness.vllm_plugin import WORKER_EXTENSION, MoteVLLMError
from harness.vllm_plugin.compiled import safe_compilation_config
from harness.vllm_plugin.protocol import (
    COUNT_KEY,
    INTERVENTION_KEY,
    RECORD_KEY,
    RPC_COUNTS,
    RPC_FETCH_ARRAYS,
    RPC_STATUS,
    THINK_KEY,
    WorkerRecord,
)
from harness.vllm_plugin.ranks import merge_count_answers, merge_fetch, merge_status


class VLLMBackend:
    """Offline `vllm.LLM` with the MoTE worker extension."""

    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        enforce_eager: bool = True,
        seed: int = 0,
        **engine_args: Any,
    ) -> None:
        """`engine_args` go to `vllm.LLM` unchanged (tensor_parallel_size, enable_expert_parallel,
        distributed_executor_backend, gpu_memory_utilization, ...). `enforce_eager=False` runs the
        compiled engine (torch.compile; on GPU piecewise CUDA graphs split at the MoE op, from
        `safe_compilation_config()` unless `compilation_config` is given), where interventions and
        recording work as in eager mode (harness.vllm_plugin.compiled; refused if the MoE op would be
        traced or captured)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer
        from vllm import LLM

        self.model_path = Path(model_path)
        dtype, note = vllm_dtype(self.model_path, dtype, "dtype")
        if note:
            print(note)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        # span counts made on the device need <think> / </think> as single tokens (the split is on ids)
        self.think_ids = think_token_ids(self.tokenizer)
        args: dict[str, Any] = {
            "model": str(model_path),
            "dtype": dtype,
            "enforce_eager": enforce_eager,
            "enable_prefix_caching": False,
            "seed": seed,
            "worker_extension_cls": WORKER_EXTENSION,
        }
        if max_model_len is not None:
            args["max_model_len"] = max_model_len  # default: the model's own limit
        if assembled_at_load(self.model_path):  # an Assembly-of-Experts child: interpolated as vLLM loads it
            args["load_format"] = LOAD_FORMAT
        if not enforce_eager and "compilation_config" not in engine_args:
            safe = safe_compilation_config()
            if safe:
                args["compilation_config"] = safe
        args.update(engine_args)
        self.engine_args = args
        self.prefix_caching = bool(args["enable_prefix_caching"])
        self.llm: Any = LLM(**args)
        # every worker's answer: pipeline-parallel stages each hold part of the MoE layers
        self.status: dict[str, Any] = merge_status(self.llm.collective_rpc(RPC_STATUS))
        self.compiled = bool(self.status["compiled"])
        self.hook_problem: str | None = self.status.get("hook_problem")
        layers = {int(k): int(v) for k, v in self.status["moe_layers"].items()}
        config = self.llm.llm_engine.model_config.hf_config
        self._spec = ModelSpec(
            family=str(self.status["model_type"]),
            n_layers=int(getattr(config, "num_hidden_layers", max(layers) + 1)),
            moe_layers=tuple(sorted(layers)),
            n_experts=layers,
            top_k=int(self.status["top_k"]),
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def prompt_text(self, request: GenerationRequest) -> str:
        return render_prompt(request, self.tokenizer, self.model_path)

    def stop_ids(self) -> list[int]:
        """The tokenizer's EOS plus the generation config's (as HFBackend._stop_ids)."""
        ids = {self.tokenizer.eos_token_id}
        configured = self.llm.llm_engine.model_config.hf_config.eos_token_id
        generation = getattr(self.llm, "get_default_sampling_params", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif isinstance(configured, list):
            ids.update(configured)
        if generation is not None:
            ids.update(generation().stop_token_ids or [])
        return sorted(i for i in ids if i is not None)

    def generate(self, requests: Sequence[GenerationRequest], settings: GenerationSettings) -> list[GenerationResult]:
        """One result per request, in order; the whole list goes to the engine as one batch."""
        from vllm import SamplingParams

        for request in requests:
            self._spec.check(request.intervention, f"request {request.id}")
        self._check_hooks([r.intervention for r in requests], settings.record_routing)
        if self.prefix_caching and settings.record_routing:
            raise MoteVLLMError(
                "routing capture with prefix caching on would miss every cached prompt token; build the "
                "backend with enable_prefix_caching=False"
            )
        stop = self.stop_ids()
        prompts = [self.prompt_text(r) for r in requests]
        keys = [f"{uuid.uuid4().hex}-{r.id}" for r in requests] if settings.record_routing else []
        think = self.think_ids if settings.routing_counts_only else None
        inputs: list[Any] = []
        params: list[Any] = []
        for index, (request, text) in enumerate(zip(requests, prompts, strict=True)):
            token_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            prompt: dict[str, Any] = {"prompt_token_ids": list(token_ids)}
            extra: dict[str, Any] = {}
            if not request.intervention.is_none:
                extra[INTERVENTION_KEY] = request.intervention.to_json()
                if self.prefix_caching:
                    prompt["cache_salt"] = request.intervention.fingerprint()
            if keys and think is not None:
                extra[COUNT_KEY] = keys[index]
                extra[THINK_KEY] = {"open": think[0], "close": think[1], "prompt_opens": prompt_opens_think(text)}
            elif keys:
                extra[RECORD_KEY] = keys[index]
            inputs.append(prompt)  # a vllm.inputs.TokensPrompt
            params.append(
                SamplingParams(
                    max_tokens=settings.max_new_tokens,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    seed=settings.seed if settings.temperature > 0 else None,
                    stop_token_ids=stop,
                    extra_args=extra or None,
                )
            )
        outputs = self.llm.generate(inputs, sampling_params=params, use_tqdm=False)
        records = self.fetch_records(keys) if keys and think is None else {}
        counts = self.fetch_counts(keys) if keys and think is not None else {}
        results = []
        for index, (request, text, output) in enumerate(zip(requests, prompts, outputs, strict=True)):
            result = self._result(request, text, output, stop, records.get(keys[index]) if records else None, settings)
            if counts:
                result = with_span_counts(result, counts.get(keys[index]))
            results.append(result)
        return results

    def fetch_counts(self, keys: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Pop the device-side counts of `keys` from every worker, merged over pipeline stages."""
        answers = self.llm.collective_rpc(RPC_COUNTS, args=(json.dumps(list(keys)),))
        return merge_count_answers(answers, keys, self._spec.moe_layers)

    def fetch_records(self, keys: Sequence[str]) -> dict[str, WorkerRecord | None]:
        """Pop the records of `keys` from every worker, merged over pipeline stages (ranks.py)."""
        answers = self.llm.collective_rpc(RPC_FETCH_ARRAYS, args=(json.dumps(list(keys)),))
        return merge_fetch(answers, keys, self._spec.moe_layers)

    def continuation_logprobs(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], interventions: Sequence[Intervention]
    ) -> list[tuple[float, bool]]:
        """For each (context ids, continuation ids): the continuation's summed log-probability and
        whether it is the greedy continuation (lm-eval's loglikelihood), each under its own
        intervention, as one engine call (vLLM's prompt logprobs; a token is greedy when its rank is 1)."""
        from vllm import SamplingParams

        for index, intervention in enumerate(interventions):
            self._spec.check(intervention, f"pair {index}")
        self._check_hooks(interventions, record=False)
        inputs: list[Any] = []
        params: list[Any] = []
        for (context, continuation), intervention in zip(pairs, interventions, strict=True):
            prompt: dict[str, Any] = {"prompt_token_ids": [*context, *continuation]}
            extra: dict[str, Any] = {}
            if not intervention.is_none:
                extra[INTERVENTION_KEY] = intervention.to_json()
                if self.prefix_caching:
                    prompt["cache_salt"] = intervention.fingerprint()
            inputs.append(prompt)
            params.append(SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, extra_args=extra or None))
        outputs = self.llm.generate(inputs, sampling_params=params, use_tqdm=False)
        out: list[tuple[float, bool]] = []
        for (context, continuation), output in zip(pairs, outputs, strict=True):
            steps = output.prompt_logprobs[len(context) :]  # position i: log p(token i | tokens < i)
            scored = [step[token] for token, step in zip(continuation, steps, strict=True)]
            out.append((float(sum(s.logprob for s in scored)), all(s.rank == 1 for s in scored)))
        return out

    def _check_hooks(self, interventions: Sequence[Intervention], record: bool) -> None:
        """Refuse interventions or recording on an engine whose router hooks cannot run every step."""
        intervening = any(not iv.is_none for iv in interventions)
        if self.hook_problem is not None and (intervening or record):
            raise MoteVLLMError(
                f"this engine cannot run the MoTE router hooks every step ({self.hook_problem}); build "
                "VLLMBackend with enforce_eager=True, or without your compilation_config, for interventions "
                "or recording"
            )

    def _result(
        self,
        request: GenerationRequest,
        prompt: str,
        output: Any,
        stop: list[int],
        worker: WorkerRecord | None,
        settings: GenerationSettings,
    ) -> GenerationResult:
        tokens = list(output.outputs[0].token_ids)
        n_gen, finish = finish_of(tokens, stop, str(output.outputs[0].finish_reason))
        content = [t for t in tokens[:n_gen] if t not in stop and t != self.tokenizer.pad_token_id]
        text = str(self.tokenizer.decode(content, skip_special_tokens=True))
        think, answer = split_think(text)
        n_prompt = len(output.prompt_token_ids)
        routing = None
        if settings.record_routing and (worker is not None or not settings.routing_counts_only):
            if worker is None:
                raise MoteVLLMError(f"request {request.id}: the engine returned no routing record")
            routing = build_record(self.tokenizer, worker, prompt, n_prompt, tokens[:n_gen], request.id)
        return GenerationResult(
            id=request.id,
            text=text,
            think=think,
            answer=answer,
            intervention=request.intervention.fingerprint(),
            n_prompt_tokens=n_prompt,
            n_generated_tokens=n_gen,
            finish_reason=finish,
            routing=routing,
            token_ids=tuple(tokens[:n_gen]),
        )

    def close(self) -> None:
        """Shut the engine down (frees its processes and memory)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            shutdown_engine(llm)


def think_token_ids(tokenizer: Any) -> tuple[int, int] | None:
    """(id of <think>, id of </think>) if each is one token of this tokenizer, else None."""
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in (THINK_OPEN, THINK_CLOSE)]
    if any(len(i) != 1 for i in ids):
        return None
    return int(ids[0][0]), int(ids[1][0])


def with_span_counts(result: GenerationResult, counts: dict[str, Any] | None) -> GenerationResult:
    """`result` with its device-side span counts; checks they cover the prompt and each token fed back."""
    from dataclasses import replace

    if counts is None:
        raise MoteVLLMError(f"request {result.id}: the engine returned no routing counts")
    fed = max(result.n_generated_tokens - 1, 0)  # the last sampled token is never routed
    tokens = counts["tokens"]
    if tokens["prompt"] != result.n_prompt_tokens or tokens["think"] + tokens["answer"] != fed:
        raise MoteVLLMError(
            f"request {result.id}: the routing counts cover {tokens} tokens, expected {result.n_prompt_tokens} "
            f"prompt and {fed} generated (was a prefix served from cache?)"
        )
    names = {Span.PROMPT: "prompt", Span.THINK: "think", Span.ANSWER: "answer"}
    return replace(
        result,
        span_counts=SpanCounts(
            counts={span: np.asarray(counts[name], dtype=np.int64) for span, name in names.items()},
            tokens={span: int(tokens[name]) for span, name in names.items()},
        ),
    )


def finish_of(tokens: list[int], stop: list[int], engine_reason: str) -> tuple[int, str]:
    """(generated tokens up to and including the first stop token, "stop" | "length"), as HFBackend."""
    for i, token in enumerate(tokens):
        if token in stop:
            return i + 1, "stop"
    return len(tokens), "stop" if engine_reason == "stop" else "length"


def build_record(
    tokenizer: Any, worker: WorkerRecord, prompt: str, n_prompt: int, generated: list[int], request_id: str
) -> RoutingRecord:
    """Prompt tokens then each generated token fed back (the last sampled one is never routed)."""
    fed = max(len(generated) - 1, 0)
    expected = np.arange(n_prompt + fed)
    keep = worker.positions < n_prompt + fed
    if not np.array_equal(worker.positions[keep], expected):
        raise MoteVLLMError(
            f"request {request_id}: routing record covers positions {worker.positions.tolist()[:8]}..., "
            f"expected 0..{n_prompt + fed - 1} (was a prefix served from cache?)"
        )
    pieces = [str(tokenizer.decode([t], skip_special_tokens=False)) for t in generated[:fed]]
    spans = [Span.PROMPT] * n_prompt + generated_spans(pieces, prompt_opens_think(prompt))
    return RoutingRecord(
        topk_ids=worker.topk_ids[keep].astype(np.int32),
        topk_weights=worker.topk_weights[keep].astype(np.float32),
        layers=worker.layers.astype(np.int32),
        span=np.asarray([int(s) for s in spans], dtype=np.int8),
    )


def shutdown_engine(llm: Any) -> None:
    """Stop an offline engine's processes now (vLLM 0.32 has no public LLM.shutdown)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        shutdown()
