"""Reasoning-language judge and the switch rate."""

from __future__ import annotations

import pytest

from judges.language import judge, switch_rate


def test_english_trace_is_en_with_full_share() -> None:
    result = judge(
        "a", "Okay, the user asks about trains. Departure is 3:40 pm, so the journey is 155 minutes."
    )
    assert result.label == "en" and result.en_share == 1.0 and result.method == "script-share"


def test_chinese_trace_is_zh() -> None:
    result = judge("a", "好的，用户问的是火车的问题。出发时间是下午3点40分，所以全程155分钟。")
    assert result.label == "zh" and result.zh_share == 1.0


def test_code_and_math_do_not_count_as_english() -> None:
    trace = (
        "我们来算一下。\n```python\ndef total(values):\n    return sum(values) for each item here\n```\n"
        "$x = a + b$ 结果是"
    )
    result = judge("a", trace)
    assert result.label == "zh" and result.latin_words == 0


def test_mixed_trace_reports_shares_and_the_majority() -> None:
    result = judge("a", "首先计算 then we add the remaining numbers together carefully")
    assert result.label == "en"
    assert result.zh_share == pytest.approx(4 / 12)


def test_trace_with_neither_script_goes_to_the_detector() -> None:
    result = judge("a", "ｔｈｉｓ ｉｓ ａ ｌｏｎｇｅｒ ｅｎｇｌｉｓｈ ｓｅｎｔｅｎｃｅ")
    assert result.method == "detector" and result.label == "en"


@pytest.mark.parametrize(("think", "reason"), [(None, "no <think> trace"), ("  ", "empty trace")])
def test_missing_or_empty_trace_is_unscored(think: str | None, reason: str) -> None:
    result = judge("a", think)
    assert result.label == "unscored" and reason in (result.unscored_reason or "")


def test_switch_rate_counts_changed_languages_per_prompt_id_over_scored_pairs() -> None:
    baseline = {"p1": "en", "p2": "en", "p3": "zh", "p4": "en"}
    treated = {"p1": "zh", "p2": "en", "p3": "zh", "p4": "unscored", "p5": "zh"}
    assert switch_rate(baseline, treated) == (pytest.approx(1 / 3), 3)
    assert switch_rate({"p1": "unscored"}, {"p1": "en"}) == (None, 0)
