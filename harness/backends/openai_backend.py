"""Client backend for a served MoTE-enabled vLLM (`harness serve MODEL --dev-rpc`).

Same contract as HFBackend / VLLMBackend. Each request is one chat completion (POST
/v1/chat/completions, the OpenAI wire format, over keep-alive HTTP: harness/backends/replicas.py)
carrying its intervention in `vllm_xargs`; generated token ids come back (`return_token_ids`) and are decoded
here with the model's own tokenizer, so text, stop handling and spans follow the same rules as the
other backends. When only span counts are wanted (`routing_counts_only`, what `harness run` keeps of
its discovery) and the tokenizer's <think> / </think> are single tokens, requests are counted on the
server's device (`mote_count` + `mote_think`, counts.py) and only the counts come back; otherwise
per-token records. Routing records and the model's MoE layout come over `POST /collective_rpc`, which
the server exposes only with VLLM_SERVER_DEV_MODE=1 (`--dev-rpc`), from every worker, merged over
pipeline stages (harness.vllm_plugin.ranks). An intervened request carries `cache_salt` = its
fingerprint, so a server with prefix caching on never serves it a prefix cached under other routing.
Several replicas of one model (a list of URLs) share the requests: harness/backends/replicas.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backends.base import GenerationRequest, GenerationResult, GenerationSettings
from harness.backends.replicas import Replica, ReplicaError, ReplicaPool
from harness.backends.vllm import build_record, finish_of, think_token_ids, with_span_counts
from harness.common.errors import ReplicasUnavailableError
from harness.mote.spec import ModelSpec
from harness.mote.think import split_think
from harness.vllm_plugin import MoteVLLMError
from harness.vllm_plugin.protocol import COUNT_KEY, INTERVENTION_KEY, RECORD_KEY, RPC_COUNTS, RPC_FETCH, THINK_KEY
from harness.vllm_plugin.ranks import merge_count_answers, merge_fetch


@dataclass
class _Served:
    """One request's answer: which replica gave it, and the key its routing is fetched under."""

    reply: Any
    replica: Replica
    key: str | None


class OpenAIBackend:
    """Chat completions against one `harness serve` endpoint, or several replicas of one model."""

    name = "openai"

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        tokenizer_path: str | Path,
        *,
        api_key: str = "unused",
        concurrency: int = 16,
        timeout_s: float = 600.0,
        attempts: int = 3,
        rejoin_s: float = 10.0,
    ) -> None:
        """`base_url` without `/v1` (e.g. http://127.0.0.1:8000), or a list of replicas' URLs; `model` as
        the servers name it; `tokenizer_path` a local folder with the served model's tokenizer;
        `concurrency` requests in flight per replica, `attempts` tries per request over the replicas."""
        from transformers import AutoTokenizer

        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.pool = ReplicaPool(urls, api_key, concurrency, timeout_s, rejoin_s)
        self.base_url = self.pool.replicas[0].url
        self.model = model
        self.attempts = attempts
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
        self.think_ids = think_token_ids(self.tokenizer)  # None: the think split needs per-token records
        status = self.pool.check()
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
        """Every worker's result of a MoTE RPC on the first replica, in rank order (merge them with
        harness.vllm_plugin.ranks: pipeline stages hold different layers)."""
        return self.pool.replicas[0].rpc(method, *args)

    def stop_ids(self) -> list[int]:
        return [int(self.tokenizer.eos_token_id)]

    def generate(self, requests: Sequence[GenerationRequest], settings: GenerationSettings) -> list[GenerationResult]:
        for request in requests:
            self._spec.check(request.intervention, f"request {request.id}")
        record = settings.record_routing
        counted = record and settings.routing_counts_only and self.think_ids is not None
        tries = [0] * len(requests)
        served: dict[int, _Served] = {}
        routing: dict[int, Any] = {}
        pending = list(range(len(requests)))
        while pending:
            with ThreadPoolExecutor(max_workers=min(self.pool.capacity, len(pending))) as pool:
                answers = list(pool.map(lambda i: self._serve(requests[i], tries, i, settings, counted), pending))
            done = dict(zip(pending, answers, strict=True))
            pending = self._fetch_routing(done, routing, counted) if record else []
            served.update({i: a for i, a in done.items() if i not in pending})
        return [self._result(r, served[i], routing.get(i), counted) for i, r in enumerate(requests)]

    def _serve(
        self, request: GenerationRequest, tries: list[int], index: int, settings: GenerationSettings, counted: bool
    ) -> _Served:
        """One request on the least busy live replica; on a replica's failure, on another, `attempts` tries
        in all (a request whose routing was lost with its replica counts its earlier tries)."""
        avoid: set[str] = set()
        errors: list[str] = []
        while True:
            if tries[index] >= self.attempts:
                raise ReplicasUnavailableError(
                    f"request {request.id} failed on {tries[index]} tries (server.attempts); last: "
                    f"{errors[-1] if errors else 'its routing was lost with its replica'}; continue with "
                    "`harness run --resume RUN_DIR`"
                )
            replica = self.pool.acquire(frozenset(avoid))
            tries[index] += 1
            key = f"{uuid.uuid4().hex}-{request.id}" if settings.record_routing else None
            try:
                reply = self._complete(replica, request, key, settings, counted)
            except ReplicaError as err:  # refused, reset, timed out, 5xx
                self.pool.release(replica, error=err)
                avoid.add(replica.url)
                errors.append(f"{replica.url}: {err}")
                continue
            except BaseException:
                self.pool.release(replica)
                raise
            self.pool.release(replica, tokens=len(reply["choices"][0].get("token_ids") or []))
            return _Served(reply, replica, key)

    def _fetch_routing(self, done: dict[int, _Served], routing: dict[int, Any], counted: bool) -> list[int]:
        """Fetch each answered request's record (or counts) from the replica that served it; the requests
        whose record is gone (its replica went down, or restarted, before the fetch) are returned, to be
        served again."""
        by_replica: dict[str, list[int]] = {}
        for index, answer in done.items():
            by_replica.setdefault(answer.replica.url, []).append(index)
        lost: list[int] = []
        for indices in by_replica.values():
            replica = done[indices[0]].replica
            keys = [str(done[i].key) for i in indices]
            found: dict[str, Any]
            try:
                if counted:
                    found = merge_count_answers(replica.rpc(RPC_COUNTS, json.dumps(keys)), keys, self._spec.moe_layers)
                else:
                    found = dict(merge_fetch(replica.rpc(RPC_FETCH, json.dumps(keys)), keys, self._spec.moe_layers))
            except ReplicaError as err:
                self.pool.mark_down(replica, err)
                lost += indices
                continue
            for index, key in zip(indices, keys, strict=True):
                if found.get(key) is None:  # the replica restarted between serving and the fetch
                    lost.append(index)
                else:
                    routing[index] = found[key]
        return sorted(lost)

    def _result(self, request: GenerationRequest, answer: _Served, fetched: Any, counted: bool) -> GenerationResult:
        choice = answer.reply["choices"][0]
        tokens = list(choice.get("token_ids") or [])
        prompt_ids = list(answer.reply.get("prompt_token_ids") or [])
        stop = self.stop_ids()
        n_gen, finish = finish_of(tokens, stop, str(choice.get("finish_reason")))
        content = [t for t in tokens[:n_gen] if t not in stop and t != self.tokenizer.pad_token_id]
        text = str(self.tokenizer.decode(content, skip_special_tokens=True))
        think, answer_text = split_think(text)
        routing = None
        if answer.key is not None and not counted:
            if fetched is None:
                raise MoteVLLMError(f"request {request.id}: {answer.replica.url} returned no routing record")
            prompt_text = str(self.tokenizer.decode(prompt_ids, skip_special_tokens=False))
            routing = build_record(self.tokenizer, fetched, prompt_text, len(prompt_ids), tokens[:n_gen], request.id)
        result = GenerationResult(
            id=request.id,
            text=text,
            think=think,
            answer=answer_text,
            intervention=request.intervention.fingerprint(),
            n_prompt_tokens=len(prompt_ids),
            n_generated_tokens=n_gen,
            finish_reason=finish,
            routing=routing,
            token_ids=tuple(tokens[:n_gen]),
            served_by=answer.replica.url,
        )
        return with_span_counts(result, fetched) if counted else result

    def _complete(
        self, replica: Replica, request: GenerationRequest, key: str | None, settings: GenerationSettings, counted: bool
    ) -> Any:
        body = extra_body(request, None if counted else key, settings)
        if counted:
            assert self.think_ids is not None and key is not None
            # the server reads whether the prompt opened a trace from its own rendering of the prompt
            think = {"open": self.think_ids[0], "close": self.think_ids[1]}
            body["vllm_xargs"] = {**body.get("vllm_xargs", {}), COUNT_KEY: key, THINK_KEY: json.dumps(think)}
        completion = {
            "model": self.model,
            "messages": request.chat(),
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            **body,
        }
        reply = replica.post("/v1/chat/completions", completion)
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("token_ids"), list):
            raise ReplicaError(replica.url, f"a chat completion without choices[0].token_ids: {str(reply)[:200]}")
        return reply


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
