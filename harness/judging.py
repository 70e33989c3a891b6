"""Which judges label a suite's samples, and the label records they produce.

A label record: task, condition, id, judge (the suite's judge name), label, and the judge's full
judgement (version, reason when unscored, raw reply for LLM judges). LLM judge replies are cached in
the run folder, so a resumed run never repeats a finished call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.suite import Suite, TaskSpec
from harness.taskdata import TaskPrompt

Item = tuple[str, str, TaskPrompt, dict[str, Any], str]  # task, condition, prompt, sample, judge


class JudgeSet:
    def __init__(self, suite: Suite, cache_path: Path) -> None:
        self.suite = suite
        self.cache_path = cache_path

    def judges_for(self, task: TaskSpec, prompt: TaskPrompt) -> list[str]:
        names: list[str] = [task.judge_name]
        if task.type == "refusal" and prompt.reference:
            names.append("reference")
        return names

    def judge(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(items)
        llm = [i for i, item in enumerate(items) if item[4] == "refusal-llm"]
        for i, (_, _, prompt, sample, judge) in enumerate(items):
            if judge != "refusal-llm":
                out[i] = _record(items[i], _offline(judge, prompt, sample))
        if llm:
            for i, judgement in zip(llm, self._llm([items[i] for i in llm]), strict=True):
                out[i] = _record(items[i], judgement)
        return [r for r in out if r is not None]

    def _llm(self, items: Sequence[Item]) -> list[Any]:
        from judges.cache import ReplyCache
        from judges.client import EndpointConfig, JudgeClient
        from judges.refusal_llm import RefusalItem, judge_many

        endpoint = self.suite.judges["refusal-llm"]
        config = EndpointConfig(
            base_url=endpoint.base_url,
            model=endpoint.model,
            api_key_env=endpoint.api_key_env,
            max_concurrency=endpoint.max_concurrency,
        )
        with ReplyCache(self.cache_path) as cache:
            client = JudgeClient(config, cache=cache)
            requests = [
                RefusalItem(id=p.id, prompt=p.prompt or _last_user(p), answer=s["answer"], think=s["think"])
                for _, _, p, s, _ in items
            ]
            return list(judge_many(requests, client))


def _offline(judge: str, prompt: TaskPrompt, sample: dict[str, Any]) -> Any:
    if judge == "refusal-string":
        from judges import string_match

        return string_match.judge(prompt.id, sample["answer"])
    if judge == "reasoning-language":
        from judges import language

        return language.judge(prompt.id, sample["think"])
    if judge == "reference":
        from judges import reference

        return reference.judge(prompt.id, sample["answer"], prompt.reference)
    raise ValueError(f"unknown judge {judge!r}")


def _record(item: Item, judgement: Any) -> dict[str, Any]:
    task, condition, prompt, _, judge = item
    return {
        "task": task,
        "condition": condition,
        "id": prompt.id,
        "judge": judge,
        "label": judgement.label,
        "judgement": judgement.model_dump(mode="json"),
    }


def _last_user(prompt: TaskPrompt) -> str:
    return next((m["content"] for m in reversed(prompt.messages or []) if m.get("role") == "user"), "")
