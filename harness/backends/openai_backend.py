"""Client backend for a served MoTE-enabled vLLM (`harness serve MODEL --dev-rpc`).

Same contract as HFBackend / VLLMBackend. Each request is one chat completion carrying its
intervention in `vllm_xargs`; generated token ids come back (`return_token_ids`) and are decoded
here with the model's own tokenizer, so text, stop handling and spans follow the same rules as the
other backends. When only span counts are wanted (`routing_counts_only`, what `harness run` keeps of
its discovery) and the tokenizer's <think> / </think> are single tokens, requests are counted on the
server's device (`mote_count` + `mote_think`, counts.py) and only the counts come back; otherwise
per-token records. Routing records and the model's MoE layout come over `POST /collective_rpc`, which
the server exposes only with VLLM_SERVER_DEV_MODE=1 (`--dev-rpc`), from every worker, merged over
pipeline stages (harness.vllm_plugin.ranks). An intervened request carries `cache_salt` = its
fingerprint, so a server with prefix caching on never serves it a prefix cached under other routing.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.backends.base import GenerationRequest, GenerationResult, GenerationSettings
from harness.backends.vllm import build_record, finish_of, think_token_ids, with_span_counts
from harness.mote.spec import ModelSpec
from harness.mote.think import split_think
from harness.vllm_plugin import MoteVLLMError
from harness.vllm_plugin.protocol import (
    COUNT_KEY,
    INTERVENTION_KEY,
    RECORD_KEY,
    RPC_COUNTS,
    RPC_FETCH,
    RPC_STATUS,
    THINK_KEY,
    WorkerRecord,
)
from harness.vllm_plugin.ranks import merge_count_answers, merge_fetch, merge_status


class OpenAIBackend:
    """Chat completions against a `harness serve` endpoint."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer_path: str | Path,
        *,
        api_key: str = "unused",
        concurrency: int = 16,
        timeout_s: float = 600.0,
    ) -> None:
        """`base_url` without `/v1` (e.g. http://127.0.0.1:8000); `model` as the server names it;
        `tokenizer_path` a local folder with the served model's tokenizer."""
        from openai import OpenAI
        from transformers import AutoTokenizer

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.client = OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, timeout=timeout_s)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
        self.think_ids = think_token_ids(self.tokenizer)  # None: the think split needs per-token records
        status = merge_status(self.rpc(RPC_STATUS))
        layers = {int(k): int(v) for k, v in status["moe_layers"].items()}
        self._spec = ModelSpec(
            family=str(status["model_type"]),
            n_layers=max(layers) + 1,
            moe_layers=tuple(sorted(layers)),
            n_experts=layers,
            top_k=int(status["top_k"]),
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def rpc(self, method: str, *args: str) -> list[Any]:
        """Every worker's result of a MoTE RPC over POST /collective_rpc, in rank order (merge them with
        harness.vllm_plugin.ranks: pipeline stages hold different layers)."""
        body = json.dumps({"method": method, "args": list(args)}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/collective_rpc", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return list(json.loads(response.read())["results"])
        except OSError as err:
            raise MoteVLLMError(
                f"{self.base_url}/collective_rpc failed ({err}); start the server with "
                "`harness serve MODEL --dev-rpc` (VLLM_SERVER_DEV_MODE=1)"
            ) from err

    def stop_ids(self) -> list[int]:
        return [int(self.tokenizer.eos_token_id)]

    def generate(self, requests: Sequence[GenerationRequest], settings: GenerationSettings) -> list[GenerationResult]:
        for request in requests:
            self._spec.check(request.intervention, f"request {request.id}")
        keys = [f"{uuid.uuid4().hex}-{r.id}" for r in requests] if settings.record_routing else []
        counted = bool(keys) and settings.routing_counts_only and self.think_ids is not None
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            replies = list(
                pool.map(lambda i: self._complete(requests[i], keys, i, settings, counted), range(len(requests)))
            )
        records = self.fetch_records(keys) if keys and not counted else {}
        counts = self.fetch_counts(keys) if counted else {}
        stop = self.stop_ids()
        results = []
        for index, (request, reply) in enumerate(zip(requests, replies, strict=True)):
            choice = reply.choices[0]
            tokens = list(getattr(choice, "token_ids", None) or [])
            prompt_ids = list(getattr(reply, "prompt_token_ids", None) or [])
            n_gen, finish = finish_of(tokens, stop, str(choice.finish_reason))
            content = [t for t in tokens[:n_gen] if t not in stop and t != self.tokenizer.pad_token_id]
            text = str(self.tokenizer.decode(content, skip_special_tokens=True))
            think, answer = split_think(text)
            routing = None
            if keys and not counted:
                worker = records.get(keys[index])
                if worker is None:
                    raise MoteVLLMError(f"request {request.id}: the server returned no routing record")
                prompt_text = str(self.tokenizer.decode(prompt_ids, skip_special_tokens=False))
                routing = build_record(
                    self.tokenizer,
                    worker,
                    prompt_text,
                    len(prompt_ids),
                    tokens[:n_gen],
                    request.id,
                )
            results.append(
                GenerationResult(
                    id=request.id,
                    text=text,
                    think=think,
                    answer=answer,
                    intervention=request.intervention.fingerprint(),
                    n_prompt_tokens=len(prompt_ids),
                    n_generated_tokens=n_gen,
                    finish_reason=finish,
                    routing=routing,
                    token_ids=tuple(tokens[:n_gen]),
                )
            )
            if counted:
                results[-1] = with_span_counts(results[-1], counts.get(keys[index]))
        return results

    def fetch_records(self, keys: Sequence[str]) -> dict[str, WorkerRecord | None]:
        """Pop the records of `keys` from every worker, merged over pipeline stages (ranks.py)."""
        answers = self.rpc(RPC_FETCH, json.dumps(list(keys)))
        return merge_fetch(answers, keys, self._spec.moe_layers)

    def fetch_counts(self, keys: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Pop the device-side counts of `keys` from every worker, merged over pipeline stages."""
        return merge_count_answers(self.rpc(RPC_COUNTS, json.dumps(list(keys))), keys, self._spec.moe_layers)

    def _complete(
        self, request: GenerationRequest, keys: list[str], index: int, settings: GenerationSettings, counted: bool
    ) -> Any:
        body = extra_body(request, keys[index] if keys and not counted else None, settings)
        if counted:
            assert self.think_ids is not None
            # the server reads whether the prompt opened a trace from its own rendering of the prompt
            think = {"open": self.think_ids[0], "close": self.think_ids[1]}
            body["vllm_xargs"] = {**body.get("vllm_xargs", {}), COUNT_KEY: keys[index], THINK_KEY: json.dumps(think)}
        return self.client.chat.completions.create(
            model=self.model,
            messages=request.chat(),  # type: ignore[arg-type]
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            extra_body=body,
        )


def extra_body(request: GenerationRequest, record_key: str | None, settings: GenerationSettings) -> dict[str, Any]:
    """vLLM's fields of one chat completion: the MoTE xargs, and for an intervened request a
    `cache_salt` of its fingerprint, so a server with prefix caching on shares cached prefixes only
    between requests routed the same way (the plugin refuses an unsalted intervention there)."""
    xargs: dict[str, str] = {}
    extra: dict[str, Any] = {"return_token_ids": True, "skip_special_tokens": False}
    if not request.intervention.is_none:
        xargs[INTERVENTION_KEY] = request.intervention.to_json()
        extra["cache_salt"] = request.intervention.fingerprint()
    if record_key is not None:
        xargs[RECORD_KEY] = record_key
    if xargs:
        extra["vllm_xargs"] = xargs
    if settings.temperature > 0:
        extra["seed"] = settings.seed
    return extra
