"""Judge client for any OpenAI-compatible chat endpoint, on the official `openai` async client.

Retries with backoff on 429, 5xx and timeouts are the `openai` client's own (`max_retries`,
`timeout`); on top we bound concurrency with a semaphore and cache successful replies in sqlite.
A call that still fails after its retries, or that returns something that is not a chat completion,
comes back as a `ChatResult` with `error` set, so the judge can label it unscored; it never raises
out of a batch. The API key is read from the environment variable *named* in the config and is
never stored, returned or logged.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from harness.common.errors import InputError
from judges.cache import ReplyCache, cache_key
from judges.labels import Usage


class EndpointConfig(BaseModel):
    """Where the judge model is served and how hard to push it. Holds the key's variable name only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(default=8, ge=1, le=256)
    max_retries: int = Field(default=3, ge=0, le=10)
    timeout_s: float = Field(default=120.0, gt=0)
    cache_path: Path | None = None


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str
    content: str


class ChatRequest(BaseModel):
    """One judge call: the messages plus the judge prompt's identity, which is part of the cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item_id: str
    prompt_id: str
    prompt_version: str
    messages: tuple[Message, ...]
    temperature: float = 0.0
    max_tokens: int = 2048

    def body(self) -> dict[str, Any]:
        return {
            "messages": [m.model_dump() for m in self.messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }


class ChatResult(BaseModel):
    """The reply text, or the error that left no reply; `cached` says no request was sent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item_id: str
    reply: str | None
    error: str | None = None
    usage: Usage = Usage()
    cached: bool = False


@dataclass
class ClientStats:
    """Counts for one client's lifetime: what a run reports next to its labels."""

    requests: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)


def read_api_key(env_name: str) -> str:
    """The key from the environment; the message names the variable, never a value."""
    key = os.environ.get(env_name)
    if not key:
        raise InputError(
            "environment",
            env_name,
            "an API key in this environment variable (use any value, e.g. "
            "'EMPTY', for a local server that needs none)",
        )
    return key


class JudgeClient:
    """Sends many chat requests to one endpoint with bounded concurrency, retries and a cache."""

    def __init__(self, config: EndpointConfig, cache: ReplyCache | None = None) -> None:
        self.config = config
        self.cache = cache
        self.stats = ClientStats()
        self._api_key = read_api_key(config.api_key_env)

    def run(self, requests: Sequence[ChatRequest], progress: bool = False) -> list[ChatResult]:
        """Synchronous entry point: one event loop for the whole batch."""
        return asyncio.run(self.complete_many(requests, progress=progress))

    async def complete_many(
        self, requests: Sequence[ChatRequest], progress: bool = False
    ) -> list[ChatResult]:
        """Results in the order of `requests`. Requests with the same cache key (the same judge prompt
        and input, e.g. one answer given under many conditions) are sent once; the others get its
        result as `cached` (they would all miss the cache while the first is in flight)."""
        first: dict[str, ChatRequest] = {}
        keys = [self._key(r) for r in requests]
        for key, request in zip(keys, requests, strict=True):
            first.setdefault(key, request)
        results = dict(zip(first, await self._complete_unique(first, progress), strict=True))
        out = []
        for key, request in zip(keys, requests, strict=True):
            result = results[key]
            if request is not first[key]:  # a copy: served by its first request's call
                result = result.model_copy(update={"item_id": request.item_id, "cached": True})
                if result.reply is None:
                    self.stats.failures += 1
                else:
                    self.stats.cache_hits += 1
            out.append(result)
        return out

    async def _complete_unique(self, requests: Mapping[str, ChatRequest], progress: bool) -> list[ChatResult]:
        """One call (or cache hit) per cache key -> request, in the mapping's order."""
        client = openai.AsyncOpenAI(
            base_url=self.config.base_url,
            api_key=self._api_key,
            max_retries=self.config.max_retries,
            timeout=self.config.timeout_s,
        )
        semaphore = asyncio.Semaphore(self.config.max_concurrency)
        bar = tqdm(total=len(requests), desc=f"judge {self.config.model}", disable=not progress, unit="call")

        async def one(key: str, request: ChatRequest) -> ChatResult:
            async with semaphore:
                result = await self._complete(client, key, request)
            bar.update(1)
            return result

        try:
            return list(await asyncio.gather(*(one(k, r) for k, r in requests.items())))
        finally:
            bar.close()
            await client.close()

    def _key(self, request: ChatRequest) -> str:
        return cache_key(
            self.config.base_url, self.config.model, request.prompt_id, request.prompt_version, request.body()
        )

    async def _complete(self, client: openai.AsyncOpenAI, key: str, request: ChatRequest) -> ChatResult:
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                return ChatResult(item_id=request.item_id, reply=hit[0], usage=hit[1], cached=True)
        self.stats.requests += 1
        try:
            response = await client.chat.completions.create(
                model=self.config.model,
                messages=[m.model_dump() for m in request.messages],  # type: ignore[misc]
                temperature=request.temperature,
                max_tokens=request.max_tokens,
            )
            reply, usage = _reply_of(response)
        except (openai.OpenAIError, ValueError, TypeError, AttributeError) as err:
            return self._failure(request, f"{type(err).__name__}: {_short(str(err))}")
        if reply is None:
            return self._failure(request, "response has no message content")
        self.stats.prompt_tokens += usage.prompt_tokens
        self.stats.completion_tokens += usage.completion_tokens
        if self.cache is not None:
            self.cache.put(
                key,
                endpoint=self.config.base_url,
                model=self.config.model,
                prompt_id=request.prompt_id,
                prompt_version=request.prompt_version,
                request=request.body(),
                reply=reply,
                usage=usage,
            )
        return ChatResult(item_id=request.item_id, reply=reply, usage=usage)

    def _failure(self, request: ChatRequest, error: str) -> ChatResult:
        self.stats.failures += 1
        self.stats.errors.append(f"{request.item_id}: {error}")
        return ChatResult(item_id=request.item_id, reply=None, error=error)


def _reply_of(response: object) -> tuple[str | None, Usage]:
    """Message text and usage from whatever came back; a non-completion body gives (None, zeros)."""
    choices = getattr(response, "choices", None)
    if not choices:
        return None, Usage()
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    usage_obj = getattr(response, "usage", None)
    usage = Usage(
        prompt_tokens=int(getattr(usage_obj, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage_obj, "completion_tokens", 0) or 0),
    )
    return (content if isinstance(content, str) else None), usage


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
