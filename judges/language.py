"""Reasoning-language judge: which language a `<think>` trace is written in, as shares.

Counting is token-weighted and deterministic: each Han character is one Chinese unit, each Latin
word one English unit, after code blocks, inline code and math are removed (they are written in
Latin script whatever language the model reasons in). Only when a trace has neither script does
the library detector (lingua, restricted to the candidate languages, offline) decide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from judges.labels import UNSCORED, Judgement

if TYPE_CHECKING:
    from lingua import LanguageDetector

JUDGE_NAME = "reasoning-language"
JUDGE_VERSION = "han-latin-share-v1"

Language = Literal["en", "zh"]
LanguageLabel = Literal["en", "zh", "unscored"]

_STRIP = (
    re.compile(r"```.*?(?:```|$)", re.DOTALL),  # fenced code (an unclosed fence runs to the end)
    re.compile(r"`[^`\n]*`"),  # inline code
    re.compile(r"\$\$.*?\$\$", re.DOTALL),  # display math
    re.compile(r"\\\[.*?\\\]", re.DOTALL),
    re.compile(r"\\\(.*?\\\)", re.DOTALL),
    re.compile(r"\$[^$\n]+\$"),  # inline math
)
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]{2,}")


class LanguageJudgement(Judgement):
    label: LanguageLabel
    zh_share: float | None = None
    en_share: float | None = None
    han_chars: int = 0
    latin_words: int = 0
    method: Literal["script-share", "detector", "none"] = "none"


def strip_code_and_math(text: str) -> str:
    for pattern in _STRIP:
        text = pattern.sub(" ", text)
    return text


@lru_cache(maxsize=1)
def _detector() -> LanguageDetector:
    """Built once, on first need: loading language models is the slow part."""
    from lingua import Language as LinguaLanguage
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_languages(LinguaLanguage.ENGLISH, LinguaLanguage.CHINESE).build()


def _detect(text: str) -> Language | None:
    from lingua import Language as LinguaLanguage

    found = _detector().detect_language_of(text)
    if found == LinguaLanguage.CHINESE:
        return "zh"
    if found == LinguaLanguage.ENGLISH:
        return "en"
    return None


def judge(item_id: str, think: str | None) -> LanguageJudgement:
    """Dominant language of the trace and the Han / Latin shares; unscored with no text to judge."""
    if think is None:
        return _unscored(item_id, "no <think> trace")
    text = strip_code_and_math(think)
    han = len(_HAN.findall(text))
    latin = len(_LATIN_WORD.findall(text))
    if han + latin > 0:
        zh_share = han / (han + latin)
        return LanguageJudgement(
            id=item_id,
            judge=JUDGE_NAME,
            judge_version=JUDGE_VERSION,
            label="zh" if zh_share > 0.5 else "en",
            zh_share=zh_share,
            en_share=1.0 - zh_share,
            han_chars=han,
            latin_words=latin,
            method="script-share",
        )
    if not text.strip():
        return _unscored(item_id, "empty trace (after removing code and math)")
    detected = _detect(text)
    if detected is None:
        return _unscored(item_id, "no Han or Latin text and the detector was undecided")
    share = 1.0 if detected == "zh" else 0.0
    return LanguageJudgement(
        id=item_id,
        judge=JUDGE_NAME,
        judge_version=JUDGE_VERSION,
        label=detected,
        zh_share=share,
        en_share=1.0 - share,
        method="detector",
    )


def _unscored(item_id: str, reason: str) -> LanguageJudgement:
    return LanguageJudgement(
        id=item_id, judge=JUDGE_NAME, judge_version=JUDGE_VERSION, label=UNSCORED, unscored_reason=reason
    )


def switch_rate(baseline: Mapping[str, str], treated: Mapping[str, str]) -> tuple[float | None, int]:
    """Share of prompt ids whose trace language differs from the baseline's, and how many were compared.

    Only ids scored in both runs count (an unscored trace has no language to compare); the rate is
    None when nothing could be compared.
    """
    shared = [pid for pid in baseline if pid in treated and UNSCORED not in (baseline[pid], treated[pid])]
    if not shared:
        return None, 0
    switched = sum(baseline[pid] != treated[pid] for pid in shared)
    return switched / len(shared), len(shared)
