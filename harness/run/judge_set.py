"""Which judges label a suite's samples, and the label records they produce.

A label record: task, condition, id, judge (the suite's judge name), label, and the judge's full
judgement (version, reason when unscored, raw reply for LLM judges). LLM judge replies are cached in
the run folder, so a resumed run never repeats a finished call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from harness.run.run_store import SCHEMA_VERSION
from harness.suite.schema import EndpointSpec, Suite, TaskSpec
from harness.suite.task_prompts import TaskPrompt
from judges.health import stop_if_failing

Item = tuple[str, str, TaskPrompt, dict[str, Any], str]  # task, condition, prompt, sample, judge


def cross_check_judge(task: TaskSpec) -> str | None:
    """The offline judge run beside a task's LLM refusal judge, so that every run reports their
    agreement (free: the string match needs no endpoint)."""
    return "refusal-string" if task.type == "refusal" and task.judge_name == "refusal-llm" else None


class JudgeSet:
    def __init__(self, suite: Suite, cache_path: Path) -> None:
        self.suite = suite
        self.cache_path = cache_path

    def judges_for(self, task: TaskSpec, prompt: TaskPrompt) -> list[str]:
        if task.type == "mt_bench":
            return ["mt-bench"]
        names: list[str] = [task.judge_name]
        cross = cross_check_judge(task)
        if cross is not None:
            names.append(cross)
        if task.type == "refusal" and prompt.reference:
            names.append("reference")
        return names

    def judge(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(items)
        llm = [i for i, item in enumerate(items) if item[4] == "refusal-llm"]
        mt = [i for i, item in enumerate(items) if item[4] == "mt-bench"]
        for i, (_, _, prompt, sample, judge) in enumerate(items):
            if judge not in ("refusal-llm", "mt-bench"):
                out[i] = _record(items[i], _offline(judge, prompt, sample))
        if llm:
            for i, judgement in zip(llm, self._llm([items[i] for i in llm]), strict=True):
                out[i] = _record(items[i], judgement)
        if mt:
            for i, judgement in zip(mt, self._mt_bench([items[i] for i in mt]), strict=True):
                out[i] = _record(items[i], judgement)
        return [r for r in out if r is not None]

    def _client(self, judge: str) -> Any:
        from judges.client import JudgeClient

        return endpoint_config(self.suite.judges[judge]), JudgeClient

    def _mt_bench(self, items: Sequence[Item]) -> list[Any]:
        from harness.suite.task_definitions import load_mt_bench
        from judges.cache import ReplyCache
        from judges.mt_bench import MTBenchItem, judge_many

        out: list[Any] = []
        config, client_cls = self._client("mt-bench")
        with ReplyCache(self.cache_path) as cache:
            client = client_cls(config, cache=cache)
            for task in dict.fromkeys(item[0] for item in items):
                folder = self.suite.task(task).path
                assert folder is not None
                bench = load_mt_bench(folder)
                batch = [item for item in items if item[0] == task]
                requests = []
                for _, _, prompt, sample, _ in batch:
                    extra = prompt.model_extra or {}
                    turn: Literal[1, 2] = 2 if int(extra.get("turn", 1)) == 2 else 1
                    answers = (sample["answer"],) if turn == 1 else (str(extra["first_answer"]), sample["answer"])
                    requests.append(
                        MTBenchItem(id=prompt.id, question_id=int(extra["question_id"]), turn=turn, answers=answers)
                    )
                out += judge_many(bench, requests, client)
        stop_if_failing("mt-bench", config.base_url, out)
        return out

    def _llm(self, items: Sequence[Item]) -> list[Any]:
        from judges.cache import ReplyCache
        from judges.refusal_llm import RefusalItem, judge_many

        config, client_cls = self._client("refusal-llm")
        with ReplyCache(self.cache_path) as cache:
            client = client_cls(config, cache=cache)
            requests = [
                RefusalItem(id=p.id, prompt=p.prompt or _last_user(p), answer=s["answer"], think=s["think"])
                for _, _, p, s, _ in items
            ]
            judgements = list(judge_many(requests, client))
        stop_if_failing("refusal-llm", config.base_url, judgements)
        return judgements


def endpoint_config(endpoint: EndpointSpec) -> Any:
    """The judge client's config of a suite's judge endpoint."""
    from judges.client import EndpointConfig

    return EndpointConfig(
        base_url=endpoint.base_url,
        model=endpoint.model,
        api_key_env=endpoint.api_key_env,
        max_concurrency=endpoint.max_concurrency,
    )


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
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "condition": condition,
        "id": prompt.id,
        "judge": judge,
        "label": judgement.label,
        "judgement": judgement.model_dump(mode="json"),
    }


def _last_user(prompt: TaskPrompt) -> str:
    return next((m["content"] for m in reversed(prompt.messages or []) if m.get("role") == "user"), "")
