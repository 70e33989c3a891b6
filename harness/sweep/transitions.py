"""Transitions: where a metric moves between a sweep's endpoints, and whether it moves gradually or sharply.

For one task, metric and condition, v(lambda) is the metric of the child at each lambda (the mean of a
per-prompt value over the task's prompts). With a = v(first lambda) and b = v(last lambda), a child's
progress is p = (v - a) / (b - a), and the curve crosses q at the first lambda where p >= q, linearly
interpolated between the two neighbouring lambdas.

- midpoint: the lambda where the curve crosses halfway (q = 0.5);
- width_10_90: crossing(0.9) - crossing(0.1);
- kind: `none` when the bootstrap 95% interval of b - a includes 0 (the endpoints do not differ: no
  transition to place); else `sharp` when width_10_90 <= 0.25 of the lambda range, `gradual` otherwise.
  A width below one step of the lambda grid cannot be resolved: a step between two neighbouring lambdas
  reads as about 0.8 of that step. An endpoint with no scored prompt (say, a language judge on a model
  that writes no trace) has no value: `none`, with a note;
- monotone: the progress never steps back by more than 0.1 from one lambda to the next.

Intervals: percentile bootstrap 95% over prompts, resampled together across children (the children
answer the same prompts), `resamples` times.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

SHARP_WIDTH = 0.25  # of the lambda range
MONOTONE_SLACK = 0.1

CURVE_METRICS: dict[str, tuple[str, ...]] = {  # task type -> the metrics a sweep draws against lambda
    "refusal": ("refusal_rate", "trace_rate", "output_tokens_mean", "degenerate_rate"),
    "language": ("zh_share", "trace_rate", "output_tokens_mean", "degenerate_rate"),
    "qa": ("accuracy", "trace_rate", "output_tokens_mean", "degenerate_rate"),
    "mt_bench": ("mt_bench_score", "trace_rate", "output_tokens_mean", "degenerate_rate"),
}

PromptValues = Mapping[str, float | None]  # prompt id -> its value (None: unscored)


class Transition(BaseModel):
    """One row of summary.json's `transitions` (a contract: outside checks read it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    metric: str
    condition: str  # the suite's condition carried to every child: baseline, targeted, ...
    lambda_start: float
    lambda_end: float
    start: float | None
    end: float | None
    change: float | None
    change_ci_low: float | None
    change_ci_high: float | None
    midpoint: float | None
    midpoint_ci_low: float | None
    midpoint_ci_high: float | None
    width_10_90: float | None
    width_ci_low: float | None
    width_ci_high: float | None
    kind: Literal["gradual", "sharp", "none"]
    monotone: bool
    n: int  # prompts
    resamples: int
    note: str | None = None


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a child with no scored prompt: NaN
        return np.asarray(np.nanmean(values, axis=axis))


def crossing(curves: np.ndarray, lambdas: np.ndarray, q: float) -> np.ndarray:
    """Per curve (rows of `curves`, one value per lambda): the lambda where the progress first reaches q,
    NaN where the endpoints are equal or it never does."""
    start, span = curves[:, :1], curves[:, -1:] - curves[:, :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        progress = np.where(span != 0, (curves - start) / span, np.nan)
    reached = progress >= q
    first = np.argmax(reached, axis=1)
    found = reached.any(axis=1)
    rows = np.arange(len(curves))
    before = np.maximum(first - 1, 0)
    p0, p1 = progress[rows, before], progress[rows, first]
    x0, x1 = lambdas[before], lambdas[first]
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(p1 > p0, (q - p0) / (p1 - p0), 0.0)
    out = np.where(first == 0, lambdas[0], x0 + np.clip(step, 0.0, 1.0) * (x1 - x0))
    return np.where(found, out, np.nan)


def _interval(values: np.ndarray) -> tuple[float | None, float | None]:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return None, None
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def _value(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def transition(
    task: str,
    metric: str,
    condition: str,
    lambdas: Sequence[float],
    values: Sequence[PromptValues],
    resamples: int,
    seed: int,
) -> Transition:
    """The transition of one metric over the children at `lambdas` (ascending), from per-prompt values."""
    x = np.asarray(lambdas, dtype=float)
    ids = sorted({pid for v in values for pid in v})
    matrix = np.array([[_value(v.get(i)) for i in ids] for v in values], dtype=np.float64)
    curve = _nanmean(matrix, axis=1)[None, :]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ids), size=(resamples, len(ids))) if ids else np.zeros((resamples, 0), dtype=int)
    boot = _nanmean(matrix[:, picks], axis=2).T  # resamples x lambdas
    change, change_boot = curve[0, -1] - curve[0, 0], boot[:, -1] - boot[:, 0]
    change_ci = _interval(change_boot)
    mid, mid_boot = crossing(curve, x, 0.5)[0], crossing(boot, x, 0.5)
    width = crossing(curve, x, 0.9)[0] - crossing(curve, x, 0.1)[0]
    width_boot = crossing(boot, x, 0.9) - crossing(boot, x, 0.1)
    moves = change_ci[0] is not None and change_ci[1] is not None and not (change_ci[0] <= 0 <= change_ci[1])
    kind: Literal["gradual", "sharp", "none"] = "none"
    if moves and np.isfinite(width):
        kind = "sharp" if width <= SHARP_WIDTH * (x[-1] - x[0]) else "gradual"
    with np.errstate(divide="ignore", invalid="ignore"):
        progress = (curve[0] - curve[0, 0]) / change if change else np.zeros_like(curve[0])
    steps = np.diff(progress[np.isfinite(progress)])
    return Transition(
        task=task,
        metric=metric,
        condition=condition,
        lambda_start=float(x[0]),
        lambda_end=float(x[-1]),
        start=_num(curve[0, 0]),
        end=_num(curve[0, -1]),
        change=_num(change),
        change_ci_low=change_ci[0],
        change_ci_high=change_ci[1],
        midpoint=_num(mid) if moves else None,
        midpoint_ci_low=_interval(mid_boot)[0] if moves else None,
        midpoint_ci_high=_interval(mid_boot)[1] if moves else None,
        width_10_90=_num(width) if moves else None,
        width_ci_low=_interval(width_boot)[0] if moves else None,
        width_ci_high=_interval(width_boot)[1] if moves else None,
        kind=kind,
        monotone=bool(np.all(steps >= -MONOTONE_SLACK)),
        n=len(ids),
        resamples=resamples,
        note=None if np.isfinite(change) else "no value at an endpoint (none of its prompts was scored)",
    )
