"""MT-Bench single-answer grader: FastChat's published judge prompts, on our judge client.

The protocol is data: the prompt is picked by name from `judge_prompts.jsonl` (`single-v1`, or
`single-math-v1` with the reference answer for math/reasoning/coding; their `-multi-turn` forms for
turn 2), the judge runs at temperature 0 with at most 2048 tokens, and the rating is read with
`[[x]]`, falling back to `[x]`. One deliberate difference from FastChat: we take the *last* match,
not the first, so a rating quoted from the judged answer cannot stand in for the judge's own. A
reply with no rating (or one outside 1-10) is `unscored` and counted, never -1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.suite.task_definitions import MT_BENCH_NEEDS_REFERENCE, MTBench
from judges.client import ChatRequest, ChatResult, JudgeClient, Message
from judges.labels import FAILED_CALL, UNSCORED, Judgement, Usage

JUDGE_NAME = "mt-bench"
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 2048

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")


class MTBenchItem(BaseModel):
    """One model answer to grade: the question id, which turn, and the model's answers so far."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    question_id: int
    turn: Literal[1, 2] = 1
    answers: tuple[str, ...] = Field(min_length=1, max_length=2)

    @model_validator(mode="after")
    def _answers_up_to_turn(self) -> MTBenchItem:
        if len(self.answers) < self.turn:
            raise ValueError(f"turn {self.turn} needs {self.turn} answers, got {len(self.answers)}")
        return self


class MTBenchJudgement(Judgement):
    label: Literal["scored", "unscored"]
    score: float | None = None
    question_id: int
    turn: Literal[1, 2]
    category: str
    prompt_id: str
    judge_model: str
    raw_reply: str | None
    usage: Usage = Usage()
    cached: bool = False


def judge_prompt_name(category: str, turn: int) -> str:
    base = "single-math-v1" if category in MT_BENCH_NEEDS_REFERENCE else "single-v1"
    return base if turn == 1 else f"{base}-multi-turn"


def build_prompt(bench: MTBench, item: MTBenchItem) -> tuple[str, tuple[Message, ...]]:
    """(judge prompt name, messages) for one item, filled exactly as FastChat fills them."""
    question = bench.question(item.question_id)
    name = judge_prompt_name(question.category, item.turn)
    prompt = bench.judge_prompts[name]
    fields: dict[str, str] = {}
    if item.turn == 1:
        fields = {"question": question.turns[0], "answer": item.answers[0]}
    else:
        fields = {
            "question_1": question.turns[0],
            "question_2": question.turns[1],
            "answer_1": item.answers[0],
            "answer_2": item.answers[1],
        }
    if question.category in MT_BENCH_NEEDS_REFERENCE:
        reference = bench.references.get(item.question_id)
        if reference is None:
            raise ValueError(f"question {item.question_id} ({question.category}) has no reference answer")
        fields["ref_answer_1"] = reference.turns[0]
        if item.turn == 2:
            fields["ref_answer_2"] = reference.turns[1]
    user = prompt.prompt_template.format(**fields)
    return name, (Message(role="system", content=prompt.system_prompt), Message(role="user", content=user))


def parse_rating(reply: str) -> float | None:
    """The last `[[x]]` rating, else the last `[x]`; None when there is none."""
    for pattern in (_RATING, _RATING_FALLBACK):
        found = pattern.findall(reply)
        if found:
            return float(found[-1])
    return None


def to_request(bench: MTBench, item: MTBenchItem) -> ChatRequest:
    name, messages = build_prompt(bench, item)
    return ChatRequest(
        item_id=item.id,
        prompt_id=name,
        prompt_version="fastchat",
        messages=messages,
        temperature=JUDGE_TEMPERATURE,
        max_tokens=JUDGE_MAX_TOKENS,
    )


def label_from_result(
    bench: MTBench, item: MTBenchItem, result: ChatResult, judge_model: str
) -> MTBenchJudgement:
    category = bench.question(item.question_id).category
    score: float | None = None
    reason: str | None = None
    if result.reply is None:
        reason = f"{FAILED_CALL}{result.error}"
    else:
        score = parse_rating(result.reply)
        if score is None:
            reason = "no [[rating]] in judge reply"
        elif not 1.0 <= score <= 10.0:
            reason, score = f"rating {score} outside 1-10", None
    return MTBenchJudgement(
        id=item.id,
        judge=JUDGE_NAME,
        judge_version=f"{judge_prompt_name(category, item.turn)}@fastchat",
        label="scored" if score is not None else UNSCORED,
        unscored_reason=reason,
        score=score,
        question_id=item.question_id,
        turn=item.turn,
        category=category,
        prompt_id=judge_prompt_name(category, item.turn),
        judge_model=judge_model,
        raw_reply=result.reply,
        usage=result.usage,
        cached=result.cached,
    )


def judge_many(
    bench: MTBench, items: Sequence[MTBenchItem], client: JudgeClient, progress: bool = False
) -> list[MTBenchJudgement]:
    results = client.run([to_request(bench, item) for item in items], progress=progress)
    model = client.config.model
    return [label_from_result(bench, i, r, model) for i, r in zip(items, results, strict=True)]
