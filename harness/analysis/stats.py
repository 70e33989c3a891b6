"""Effect sizes a reviewer would accept, on scipy/statsmodels; no backend, no judge imported.

Outcomes are per-prompt booleans (e.g. "refused") keyed by prompt id; None marks an unscored
sample. Unscored samples are left out of rates and paired tests and are always counted and
reported, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint, proportion_effectsize

Outcomes = Mapping[str, bool | None]


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int  # samples that entered the figure
    unscored: int  # samples left out because they had no label


def rate(outcomes: Outcomes, alpha: float = 0.05) -> Estimate:
    """Share of True among scored samples, with a Wilson interval."""
    scored = [v for v in outcomes.values() if v is not None]
    unscored = len(outcomes) - len(scored)
    n = len(scored)
    if n == 0:
        return Estimate(float("nan"), None, None, 0, unscored)
    k = int(sum(scored))
    low, high = proportion_confint(k, n, alpha=alpha, method="wilson")
    return Estimate(k / n, float(low), float(high), n, unscored)


def paired(base: Outcomes, cond: Outcomes) -> tuple[np.ndarray, np.ndarray, int]:
    """Aligned (base, cond) arrays over prompt ids scored in both, and the count of ids left out."""
    ids = sorted(set(base) & set(cond))
    keep = [i for i in ids if base[i] is not None and cond[i] is not None]
    left_out = len(set(base) | set(cond)) - len(keep)
    b = np.array([bool(base[i]) for i in keep], dtype=bool)
    c = np.array([bool(cond[i]) for i in keep], dtype=bool)
    return b, c, left_out


def mcnemar_exact(base: Outcomes, cond: Outcomes) -> Estimate:
    """Exact McNemar p-value for the paired change from base to cond."""
    b, c, left_out = paired(base, cond)
    table = [[int(np.sum(b & c)), int(np.sum(b & ~c))], [int(np.sum(~b & c)), int(np.sum(~b & ~c))]]
    if len(b) == 0:
        return Estimate(float("nan"), None, None, 0, left_out)
    result = mcnemar(table, exact=True)
    return Estimate(float(result.pvalue), None, None, len(b), left_out)


def cohens_h(base: Outcomes, cond: Outcomes) -> Estimate:
    """Cohen's h = 2 asin(sqrt(p_base)) - 2 asin(sqrt(p_cond)): positive when cond is lower."""
    b, c, left_out = paired(base, cond)
    if len(b) == 0:
        return Estimate(float("nan"), None, None, 0, left_out)
    h = float(proportion_effectsize(b.mean(), c.mean()))
    return Estimate(h, None, None, len(b), left_out)


def relative_reduction(
    base: Outcomes, cond: Outcomes, n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05
) -> Estimate:
    """(rate_base - rate_cond) / rate_base ("52% fewer refusals"), with a seeded paired bootstrap
    percentile interval over prompts."""
    b, c, left_out = paired(base, cond)
    if len(b) == 0 or b.sum() == 0:
        return Estimate(float("nan"), None, None, len(b), left_out)

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        base_rate = np.mean(x, axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray((base_rate - np.mean(y, axis=axis)) / base_rate)

    value = float(statistic(b.astype(float), c.astype(float)))
    if len(b) < 2:
        return Estimate(value, None, None, len(b), left_out)
    result = sps.bootstrap(
        (b.astype(float), c.astype(float)),
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=1 - alpha,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return Estimate(value, _finite(low), _finite(high), len(b), left_out)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


@dataclass(frozen=True)
class VersusRandom:
    z: float | None  # (targeted - mean(random)) / sd(random); None when the random values have no spread
    percentile: float  # share of random values strictly below targeted, in percent
    empirical_p: float  # (1 + #{random >= targeted}) / (1 + n)
    n_random: int
    random_mean: float
    random_sd: float


def versus_random(targeted: float, random_values: Sequence[float]) -> VersusRandom:
    """Place the targeted effect in the distribution of matched random effects (larger = stronger).

    With n random seeds the smallest possible p is 1/(n+1): 20 seeds cannot go below 0.048, which is
    why the z-score and the percentile are reported too. The z-score is undefined (None) when the random
    values have no spread (fewer than 2, or all equal): an infinite z would say nothing the percentile
    does not, and is not valid JSON.
    """
    values = np.asarray([v for v in random_values if np.isfinite(v)], dtype=float)
    n = len(values)
    if n == 0:
        raise ValueError("no finite random effect to compare with")
    sd = float(values.std(ddof=1)) if n > 1 else 0.0
    mean = float(values.mean())
    z = (targeted - mean) / sd if sd > 0 else None
    percentile = float(sps.percentileofscore(values, targeted, kind="strict"))
    p = (1 + int(np.sum(values >= targeted))) / (1 + n)
    return VersusRandom(None if z is None else float(z), percentile, float(p), n, mean, sd)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (NaN entries stay NaN and do not count)."""
    arr = np.asarray(p_values, dtype=float)
    finite = np.isfinite(arr)
    out = np.full(arr.shape, np.nan)
    if finite.any():
        out[finite] = multipletests(arr[finite], method="holm")[1]
    return [float(x) for x in out]


def score_change(base: Mapping[str, float | None], cond: Mapping[str, float | None]) -> tuple[Estimate, Estimate]:
    """Paired score change (cond - base; e.g. MT-Bench) as (mean difference with a t interval,
    Wilcoxon signed-rank p)."""
    ids = sorted(i for i in set(base) & set(cond) if base[i] is not None and cond[i] is not None)
    left_out = len(set(base) | set(cond)) - len(ids)
    diff = np.array([float(cond[i]) - float(base[i]) for i in ids])  # type: ignore[arg-type]
    if len(diff) == 0:
        nan = Estimate(float("nan"), None, None, 0, left_out)
        return nan, nan
    mean = float(diff.mean())
    if len(diff) > 1 and diff.std(ddof=1) > 0:
        low, high = sps.t.interval(0.95, len(diff) - 1, loc=mean, scale=sps.sem(diff))
        ci: tuple[float | None, float | None] = (float(low), float(high))
    else:
        ci = (mean, mean)
    p = float(sps.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return Estimate(mean, ci[0], ci[1], len(diff), left_out), Estimate(p, None, None, len(diff), left_out)


def switch_rate(base: Mapping[str, str | None], cond: Mapping[str, str | None]) -> Estimate:
    """Share of prompts whose label (e.g. the trace language) differs from the baseline's."""
    outcomes: dict[str, bool | None] = {}
    for key in set(base) | set(cond):
        b, c = base.get(key), cond.get(key)
        outcomes[key] = None if b is None or c is None else b != c
    return rate(outcomes)
