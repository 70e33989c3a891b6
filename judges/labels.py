"""Typed judge outputs shared by every judge.

A judge either assigns one of its labels or says `unscored` with the reason; nothing is coerced
into a class and nothing is dropped. Each record names the judge and the version of the prompt or
rule set that produced it, so labels from different judge versions are never pooled by accident.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

SCHEMA_VERSION = 1
UNSCORED: Literal["unscored"] = "unscored"
FAILED_CALL = "judge call failed: "  # the unscored reason of a call that failed after its retries


def unscored_category(reason: str | None) -> str:
    """What an unscored label's reason comes to, for counting: `connection`, `timeout`, `http 401`,
    `empty reply`, `call failed` (a judge call that failed after its retries) or `unparseable` (a reply
    the judge could not read)."""
    import re

    text = reason or ""
    if not text.startswith(FAILED_CALL):
        return "unparseable"
    if "Timeout" in text:
        return "timeout"
    if "APIConnectionError" in text:
        return "connection"
    code = re.search(r"Error code: (\d{3})", text)
    if code:
        return f"http {code.group(1)}"
    if "no message content" in text:
        return "empty reply"
    return "call failed"


class Usage(BaseModel):
    """Token usage of one judge call (zeros for a cache hit's new usage: see `cached`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0


class Judgement(BaseModel):
    """Fields every judge's record carries; subclasses narrow `label` to their own classes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    id: str
    judge: str
    judge_version: str
    label: str
    unscored_reason: str | None = None

    @model_validator(mode="after")
    def _unscored_has_reason(self) -> Judgement:
        if (self.label == UNSCORED) != (self.unscored_reason is not None):
            raise ValueError("label 'unscored' and unscored_reason must be given together")
        return self

    @property
    def scored(self) -> bool:
        return self.label != UNSCORED
