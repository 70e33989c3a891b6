"""Known-answer tests: each figure against a hand computation or the formula it implements."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.analysis import stats


def _outcomes(values):
    return {f"p{i}": v for i, v in enumerate(values)}


def test_rate_uses_wilson_interval_and_counts_unscored():
    est = stats.rate(_outcomes([True] * 8 + [False] * 2 + [None] * 3))
    assert (est.value, est.n, est.unscored) == (0.8, 10, 3)
    z, p, n = sps.norm.ppf(0.975), 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert est.ci_low == pytest.approx(centre - half) and est.ci_high == pytest.approx(centre + half)


def test_mcnemar_exact_matches_binomial_on_discordant_pairs():
    # 8 prompts flip True->False, 1 flips False->True, 5 stay True, 6 stay False
    base = _outcomes([True] * 8 + [False] + [True] * 5 + [False] * 6)
    cond = _outcomes([False] * 8 + [True] + [True] * 5 + [False] * 6)
    est = stats.mcnemar_exact(base, cond)
    assert est.value == pytest.approx(2 * sps.binom.cdf(1, 9, 0.5))  # 0.0390625
    assert est.n == 20


def test_cohens_h_is_difference_of_arcsine_transforms():
    base = _outcomes([True] * 8 + [False] * 2)
    cond = _outcomes([True] * 3 + [False] * 7)
    expected = 2 * math.asin(math.sqrt(0.8)) - 2 * math.asin(math.sqrt(0.3))
    assert stats.cohens_h(base, cond).value == pytest.approx(expected)


def test_relative_reduction_and_its_seeded_bootstrap_interval():
    base = _outcomes([True] * 10 + [False] * 10)
    cond = _outcomes([True] * 5 + [False] * 15)
    first = stats.relative_reduction(base, cond, seed=3)
    again = stats.relative_reduction(base, cond, seed=3)
    assert first.value == pytest.approx(0.5)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert first.ci_low is not None and first.ci_high is not None
    assert first.ci_low < 0.5 < first.ci_high <= 1.0


def test_paired_figures_leave_out_and_count_prompts_unscored_in_either_run():
    base = {"a": True, "b": None, "c": True, "d": False}
    cond = {"a": False, "b": False, "c": None, "d": False}
    est = stats.mcnemar_exact(base, cond)
    assert (est.n, est.unscored) == (2, 2)


def test_versus_random_z_percentile_and_empirical_p():
    res = stats.versus_random(0.5, [0.1, 0.2, 0.3, 0.4, 0.5])
    assert res.empirical_p == pytest.approx(2 / 6)
    assert res.percentile == pytest.approx(80.0)
    assert res.z == pytest.approx((0.5 - 0.3) / np.std([0.1, 0.2, 0.3, 0.4, 0.5], ddof=1))
    assert stats.versus_random(0.9, [0.1] * 20).empirical_p == pytest.approx(1 / 21)


def test_z_vs_random_is_undefined_when_the_seeds_have_no_spread():
    res = stats.versus_random(1.0, [0.0] * 20)
    assert res.z is None  # not inf: percentile and empirical p still place the targeted effect
    assert res.percentile == 100.0 and res.empirical_p == pytest.approx(1 / 21)


def test_holm_adjustment_matches_hand_computation():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = stats.holm([0.01, float("nan")])
    assert adjusted[0] == pytest.approx(0.01) and math.isnan(adjusted[1])


def test_score_change_mean_and_wilcoxon():
    base = {"a": 7.0, "b": 6.0, "c": 8.0, "d": 5.0, "e": None}
    cond = {"a": 6.0, "b": 6.5, "c": 6.0, "d": 4.0, "e": 3.0}
    mean, p = stats.score_change(base, cond)
    diffs = [-1.0, 0.5, -2.0, -1.0]
    assert mean.value == pytest.approx(np.mean(diffs)) and mean.n == 4 and mean.unscored == 1
    assert p.value == pytest.approx(sps.wilcoxon(diffs).pvalue)


def test_switch_rate_counts_changed_labels_and_unscored():
    base = {"a": "en", "b": "en", "c": "zh", "d": "en"}
    cond = {"a": "zh", "b": "en", "c": "zh", "d": None}
    est = stats.switch_rate(base, cond)
    assert (est.value, est.n, est.unscored) == (pytest.approx(1 / 3), 3, 1)
