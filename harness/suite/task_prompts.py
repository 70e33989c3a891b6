"""Prompts of a suite task, from a packaged data set or a user's JSONL file, in one typed form.

A JSONL task file has one object a line: `id`, `prompt` (or `messages`), and optionally `split`
(discovery | evaluation; absent = both), `kind` (e.g. sensitive | control | generic), `reference`
(a fragment the correct answer contains), `language`; other keys are kept as metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from harness.common.errors import InputError
from harness.suite.schema import TaskSpec

Split = Literal["discovery", "evaluation"]


class TaskPrompt(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    split: Split | None = None
    kind: str | None = None
    reference: str | None = None
    language: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TaskPrompt:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self

    def in_split(self, split: str) -> bool:
        return split == "all" or self.split is None or self.split == split


def read_task_file(path: Path, text: str | None = None) -> list[TaskPrompt]:
    lines = (text if text is not None else _read(path)).splitlines()
    prompts: list[TaskPrompt] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj: Any = json.loads(line)
            if isinstance(obj, dict) and isinstance(obj.get("id"), int):
                obj["id"] = str(obj["id"])
            prompt = TaskPrompt.model_validate(obj)
        except json.JSONDecodeError as err:
            raise InputError(path, f"line {number}", "a JSON object", err.msg) from None
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise InputError(
                path, f"line {number}: {field or 'object'}", first["msg"].removeprefix("Value error, ")
            ) from None
        if prompt.id in seen:
            raise InputError(path, f"line {number}: id", "ids unique within the file", prompt.id)
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        raise InputError(path, "<file>", "at least one prompt line")
    return prompts


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(path, "<file>", "a readable JSONL task file", str(err)) from None


def load_task_prompts(task: TaskSpec, suite_file: str | Path = "<suite>") -> list[TaskPrompt]:
    """All prompts of the task, validated (errors name the file and line)."""
    if task.type == "mt_bench":
        assert task.path is not None
        prompts = mt_bench_prompts(task.path)
    elif task.path is not None:
        prompts = read_task_file(task.path)
    elif task.source == "sensitive":
        from harness.suite.task_definitions import load_sensitive

        prompts = [TaskPrompt.model_validate(p.model_dump()) for p in load_sensitive()]
    elif task.source == "reasoning_language":
        from harness.suite.task_definitions import load_reasoning_language

        prompts = [TaskPrompt.model_validate(p.model_dump()) for p in load_reasoning_language()]
    else:
        prompts = _packaged(task, suite_file)
    if task.limit is not None:
        prompts = _limit(prompts, task.limit)
    return prompts


def _packaged(task: TaskSpec, suite_file: str | Path) -> list[TaskPrompt]:
    from importlib import resources

    parts = str(task.source).split("/")
    resource = resources.files("harness._tasks").joinpath(*parts[:-1], parts[-1] + ".jsonl")
    if not resource.is_file():
        raise InputError(
            suite_file,
            f"tasks.{task.name}.source",
            "a packaged data set (sensitive, reasoning_language, organism/refusal, organism/language, organism/qa)",
            task.source,
        )
    return read_task_file(Path(str(resource)), resource.read_text(encoding="utf-8"))


def _limit(prompts: list[TaskPrompt], limit: int) -> list[TaskPrompt]:
    """First `limit` prompts of each (split, kind) group, so a smoke run keeps every group."""
    kept: list[TaskPrompt] = []
    counts: dict[tuple[str | None, str | None], int] = {}
    for p in prompts:
        key = (p.split, p.kind)
        if counts.get(key, 0) < limit:
            kept.append(p)
            counts[key] = counts.get(key, 0) + 1
    return kept


def mt_bench_prompts(folder: Path) -> list[TaskPrompt]:
    """Turn-1 prompts of MT-Bench (turn 2 is built from each condition's own turn-1 answer)."""
    from harness.suite.task_definitions import load_mt_bench, mt_bench_messages, mt_bench_temperature

    bench = load_mt_bench(folder)
    return [
        TaskPrompt.model_validate(
            {
                "id": f"{q.question_id}/turn1",
                "messages": mt_bench_messages(q, 1),
                "kind": q.category,
                "question_id": q.question_id,
                "turn": 1,
                "temperature": mt_bench_temperature(q),
                "second_turn": q.turns[1],
            }
        )
        for q in bench.questions
    ]


def mt_bench_turn2(turn1: TaskPrompt, first_answer: str) -> TaskPrompt:
    """Turn 2 asked with this condition's own turn-1 answer in context (FastChat's protocol)."""
    extra = dict(turn1.model_extra or {})
    messages = [
        *(turn1.messages or []),
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": extra["second_turn"]},
    ]
    return TaskPrompt(
        id=f"{extra['question_id']}/turn2",
        messages=messages,
        kind=turn1.kind,
        **{**extra, "turn": 2, "first_answer": first_answer},
    )
