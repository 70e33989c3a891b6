"""The figures a sweep reads off samples: a reasoning trace, degenerate output, output tokens and
their ratio to a reference, and an endpoint's match with its parent."""

from __future__ import annotations

import pytest

from harness.sweep.sample_metrics import degenerate, has_trace, match_row, ratio_row, sample_rows


def _sample(text: str, think: str | None, answer: str, tokens: int, finish: str = "stop") -> dict[str, object]:
    return {"text": text, "think": think, "answer": answer, "n_generated_tokens": tokens, "finish_reason": finish}


def test_an_empty_or_blank_trace_is_no_trace() -> None:
    assert has_trace(_sample("x", "The user asks.", "A.", 5))
    assert not has_trace(_sample("x", "\n \n", "A.", 5))
    assert not has_trace(_sample("x", None, "A.", 5))


def test_no_answer_or_a_looping_text_is_degenerate_and_a_normal_answer_is_not() -> None:
    assert degenerate(_sample("<think>x</think>", "x", "", 5))
    loop = " ".join(["the same words again"] * 8)
    assert degenerate(_sample(loop, None, loop, 40))
    normal = "The user asks what happened in 1990 in Paris. The records show a flood. In 1990 there was a flood."
    assert not degenerate(_sample(normal, "x", "In 1990 there was a flood.", 30))


def test_sample_rows_give_trace_tokens_degenerate_and_truncated_per_condition() -> None:
    samples = {
        str(i): _sample("a b", "t" if i < 3 else "", "a", 10 + i, "length" if i == 0 else "stop") for i in range(4)
    }
    rows = {r.metric: r for r in sample_rows("task", "lambda=0.5", samples, 200, 0)}
    assert rows["trace_rate"].value == 0.75
    assert rows["output_tokens_mean"].value == pytest.approx(11.5)
    assert rows["output_tokens_mean"].ci_low <= 11.5 <= rows["output_tokens_mean"].ci_high  # type: ignore[operator]
    assert rows["output_tokens_median"].value == pytest.approx(11.5)
    assert rows["truncated_rate"].value == 0.25
    assert rows["degenerate_rate"].value == 0.0


def test_the_token_ratio_is_paired_over_the_prompts_both_answered() -> None:
    child = {str(i): _sample("a", None, "a", 10) for i in range(5)}
    parent = {str(i): _sample("a", None, "a", 20) for i in range(4)}
    row = ratio_row("task", "lambda=1", child, "parent=organism", parent, 200, 0)
    assert row is not None
    assert row.metric == "output_tokens_ratio:parent=organism"
    assert (row.value, row.n) == (0.5, 4)


def test_parent_match_counts_identical_texts() -> None:
    parent = {str(i): _sample(f"text {i}", None, "a", 3) for i in range(4)}
    child = {**parent, "3": _sample("something else", None, "a", 3)}
    assert match_row("task", "lambda=0", child, "parent=organism", parent).value == 0.75
