"""When a judge's failures stop a run: over 20% of a batch's calls (from 3 failures on) or 10 in a row."""

from __future__ import annotations

import pytest

from judges.health import JudgeUnavailableError, stop_if_failing
from judges.labels import Judgement


def batch(pattern: str) -> list[Judgement]:
    """'.' a scored label, 'x' a call that failed after retries, 'u' an unparseable reply."""
    reasons = {".": None, "x": "judge call failed: APIConnectionError: Connection error.", "u": "no verdict"}
    return [
        Judgement(
            id=str(i),
            judge="j",
            judge_version="1",
            label="refused" if c == "." else "unscored",
            unscored_reason=reasons[c],
        )
        for i, c in enumerate(pattern)
    ]


@pytest.mark.parametrize("pattern", ["." * 20, "x" + "." * 20, "xx" + "." * 3, "u" * 20, "x" * 9 + "." * 100])
def test_occasional_failures_and_unparseable_replies_do_not_stop_the_run(pattern):
    stop_if_failing("j", "http://judge", batch(pattern))


@pytest.mark.parametrize("pattern", ["xxx" + "." * 5, "x" * 10 + "." * 200, ".x.x.x.x"])
def test_many_failed_calls_stop_the_run_naming_judge_counts_and_last_error(pattern):
    with pytest.raises(JudgeUnavailableError, match=r"judge j at http://judge: \d+ of \d+ calls failed") as info:
        stop_if_failing("j", "http://judge", batch(pattern))
    assert "APIConnectionError" in str(info.value) and "--resume" in str(info.value)


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("judge call failed: APIConnectionError: Connection error.", "connection"),
        ("judge call failed: APITimeoutError: Request timed out.", "timeout"),
        ("judge call failed: AuthenticationError: Error code: 401 - {'error': 'bad key'}", "http 401"),
        ("judge call failed: InternalServerError: Error code: 500 - try later", "http 500"),
        ("judge call failed: response has no message content", "empty reply"),
        ("no ANSWER_VERDICT line in the reply", "unparseable"),
    ],
)
def test_an_unscored_label_keeps_its_reason_as_a_countable_category(reason, category):
    from judges.labels import unscored_category

    assert unscored_category(reason) == category


def test_the_summary_counts_unscored_labels_by_reason():
    from harness.analysis.metrics import Condition, unscored_rows
    from harness.mote import Intervention
    from harness.suite.task_prompts import TaskPrompt

    prompts = [TaskPrompt(id=str(i), prompt="q") for i in range(5)]
    cond = Condition("baseline", "baseline", Intervention.none())
    labels = {("t", "baseline", "0", "j"): "refused", ("t", "baseline", "1", "j"): "unscored"}
    labels |= {("t", "baseline", "2", "j"): "unscored", ("t", "baseline", "3", "j"): "unscored"}
    reasons = {("t", "baseline", "1", "j"): "connection", ("t", "baseline", "2", "j"): "connection"}
    reasons |= {("t", "baseline", "3", "j"): "unparseable"}
    (row,) = unscored_rows("t", "j", prompts, [cond], labels, reasons)
    assert row.unscored == 4 and row.value == 4 / 5  # 3 unscored and one never judged
    assert row.note == "by reason: connection 2, not judged 1, unparseable 1"
