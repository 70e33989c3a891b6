"""A judge that keeps failing stops the run instead of labelling everything unscored.

After retries, a call that still fails comes back unscored ("judge call failed: ..."). One such call
is noise; many mean the endpoint is down or refusing us, and an hour of labels that say nothing is
worse than a stop. The caller raises before any label of the batch is stored, so `--resume` judges
the same items again once the endpoint is fixed (successful replies are cached and not sent again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from judges.labels import FAILED_CALL

MAX_FAILED_SHARE = 0.2  # of a batch's calls, once at least MIN_FAILED have failed
MIN_FAILED = 3
MAX_FAILED_IN_A_ROW = 10


class JudgeUnavailableError(RuntimeError):
    """The judge failed too often; the message names it, the counts and the last error."""


def stop_if_failing(judge: str, endpoint: str, judgements: Sequence[Any]) -> None:
    failed = [str(j.unscored_reason or "").startswith(FAILED_CALL) for j in judgements]
    count = sum(failed)
    if not count:
        return
    longest = run = 0
    for bad in failed:
        run = run + 1 if bad else 0
        longest = max(longest, run)
    share = count / len(failed)
    if longest >= MAX_FAILED_IN_A_ROW or (count >= MIN_FAILED and share > MAX_FAILED_SHARE):
        last = next(str(j.unscored_reason) for j, bad in zip(judgements[::-1], failed[::-1], strict=True) if bad)
        raise JudgeUnavailableError(
            f"judge {judge} at {endpoint}: {count} of {len(failed)} calls failed after retries ({share:.0%}, "
            f"{longest} in a row); last error: {last.removeprefix(FAILED_CALL)}. Nothing of this batch was "
            "labelled: fix the endpoint, then continue with `harness run SUITE --resume RUN_DIR`"
        )
