"""Figures a sweep reads off the samples themselves, per task and condition (no judge involved):

- trace_rate: share of samples with a reasoning trace that is present and non-empty (Wilson 95%);
- output_tokens_mean, output_tokens_median: generated tokens (percentile bootstrap 95% over samples);
- output_tokens_ratio:<reference>: mean tokens over the reference's mean on the same prompts (paired
  bootstrap 95%); the references are the sweep's parents (or its endpoints when no parent was run);
- degenerate_rate: broken or degenerate output, see `degenerate` (Wilson 95%); truncated_rate: the
  generation hit max_new_tokens;
- parent_match: an endpoint child against the parent it must reproduce, the share of samples whose
  generated text is identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from harness.analysis import stats
from harness.analysis.stats import Estimate
from harness.analysis.summary import MetricRow

Sample = Mapping[str, Any]
Samples = Mapping[str, Sample]  # prompt id -> the stored sample (samples.jsonl) of one task and condition

MIN_WORDS_FOR_REPETITION = 12
MIN_DISTINCT_TRIGRAMS = 0.5


def has_trace(sample: Sample) -> bool:
    return bool((sample.get("think") or "").strip())


def degenerate(sample: Sample) -> bool:
    """Broken or degenerate: no answer after the trace, or text that loops (of its word trigrams, fewer
    than half distinct, in a text of at least 12 words)."""
    if not (sample.get("answer") or "").strip():
        return True
    words = str(sample.get("text") or "").split()
    if len(words) < MIN_WORDS_FOR_REPETITION:
        return False
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    return len(set(trigrams)) < MIN_DISTINCT_TRIGRAMS * len(trigrams)


def _share(samples: Samples, predicate: Callable[[Sample], bool]) -> Estimate:
    return stats.rate({pid: predicate(s) for pid, s in samples.items()})


def _tokens(samples: Samples, ids: Sequence[str]) -> np.ndarray:
    return np.array([float(samples[i]["n_generated_tokens"]) for i in ids])


def bootstrap_estimate(
    data: Sequence[np.ndarray], statistic: Callable[..., Any], resamples: int, seed: int, paired: bool = False
) -> Estimate:
    """The statistic (vectorised: takes `axis`) with a percentile bootstrap 95% interval (the value itself
    where nothing varies)."""
    value = float(statistic(*data))
    n = len(data[0])
    if n < 2 or all(np.ptp(d) == 0 for d in data):
        return Estimate(value, value, value, n, 0)
    result = sps.bootstrap(
        tuple(data),
        statistic,
        n_resamples=resamples,
        method="percentile",
        paired=paired,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    low, high = (float(b) for b in result.confidence_interval)
    return Estimate(value, low if np.isfinite(low) else None, high if np.isfinite(high) else None, n, 0)


def sample_rows(task: str, condition: str, samples: Samples, resamples: int, seed: int) -> list[MetricRow]:
    """trace_rate, output tokens (mean, median), degenerate_rate and truncated_rate of one condition."""
    if not samples:
        return []
    tokens = _tokens(samples, sorted(samples))
    return [
        MetricRow.of(task, condition, "trace_rate", _share(samples, has_trace)),
        MetricRow.of(task, condition, "output_tokens_mean", bootstrap_estimate([tokens], np.mean, resamples, seed)),
        MetricRow.of(task, condition, "output_tokens_median", bootstrap_estimate([tokens], np.median, resamples, seed)),
        MetricRow.of(task, condition, "degenerate_rate", _share(samples, degenerate)),
        MetricRow.of(task, condition, "truncated_rate", _share(samples, lambda s: s.get("finish_reason") == "length")),
    ]


def _mean_ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(x, axis=axis) / np.mean(y, axis=axis)


def ratio_row(
    task: str, condition: str, samples: Samples, reference: str, ref_samples: Samples, resamples: int, seed: int
) -> MetricRow | None:
    """output_tokens_ratio:<reference> over the prompts both answered."""
    ids = sorted(set(samples) & set(ref_samples))
    if not ids:
        return None
    x, y = _tokens(samples, ids), _tokens(ref_samples, ids)
    if not y.any():
        return None
    est = bootstrap_estimate([x, y], _mean_ratio, resamples, seed, paired=True)
    note = f"mean output tokens / those of {reference} on the same prompts"
    return MetricRow.of(task, condition, f"output_tokens_ratio:{reference}", est, note=note)


def match_row(task: str, condition: str, samples: Samples, parent: str, parent_samples: Samples) -> MetricRow:
    """parent_match: the share of prompts whose generated text equals the parent's (an endpoint must be 1)."""
    ids = sorted(set(samples) & set(parent_samples))
    same = {i: samples[i]["text"] == parent_samples[i]["text"] for i in ids}
    note = f"identical generated text vs {parent}"
    return MetricRow.of(task, condition, "parent_match", stats.rate(same), note=note)
