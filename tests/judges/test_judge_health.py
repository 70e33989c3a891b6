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
