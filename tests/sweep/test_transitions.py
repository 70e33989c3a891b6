"""Transitions from per-prompt values across lambda: where a metric crosses halfway, how wide its
10-90% move is, and the stated rule for gradual, sharp and none."""

from __future__ import annotations

import numpy as np
import pytest

from harness.sweep.transitions import crossing, transition

LAMBDAS = [i / 10 for i in range(11)]


def _step(at: float, n: int = 40) -> list[dict[str, float | None]]:
    return [{str(i): 1.0 if lam >= at else 0.0 for i in range(n)} for lam in LAMBDAS]


def _ramp(n: int = 200) -> list[dict[str, float | None]]:
    """Prompt i switches on at lambda u_i, u uniform on [0, 1]: the mean grows linearly with lambda."""
    u = np.random.default_rng(0).random(n)
    return [{str(i): float(u[i] < lam) for i in range(n)} for lam in LAMBDAS]


def test_a_step_between_two_lambdas_is_sharp_with_its_midpoint_between_them() -> None:
    t = transition("t", "trace_rate", "baseline", LAMBDAS, _step(0.5), 500, 0)
    assert t.kind == "sharp"
    assert 0.4 < t.midpoint < 0.5  # type: ignore[operator]
    assert t.width_10_90 == pytest.approx(0.08)
    assert (t.start, t.end) == (0.0, 1.0)
    assert t.monotone


def test_a_linear_rise_is_gradual_with_its_midpoint_near_half_and_an_interval_around_it() -> None:
    t = transition("t", "refusal_rate", "baseline", LAMBDAS, _ramp(), 500, 0)
    assert t.kind == "gradual"
    assert t.midpoint == pytest.approx(0.5, abs=0.1)
    assert t.midpoint_ci_low < t.midpoint < t.midpoint_ci_high  # type: ignore[operator]
    assert t.width_10_90 == pytest.approx(0.8, abs=0.1)


def test_a_falling_curve_crosses_where_it_has_come_halfway_down() -> None:
    falling = [{k: 1.0 - v for k, v in d.items() if v is not None} for d in _step(0.3)]
    t = transition("t", "refusal_rate", "baseline", LAMBDAS, falling, 200, 0)  # type: ignore[arg-type]
    assert t.kind == "sharp" and 0.2 < t.midpoint < 0.3  # type: ignore[operator]
    assert t.change == -1.0


def test_endpoints_that_do_not_differ_have_no_transition() -> None:
    flat = [{str(i): float(i % 2) for i in range(30)} for _ in LAMBDAS]
    t = transition("t", "accuracy", "baseline", LAMBDAS, flat, 200, 0)
    assert t.kind == "none" and t.midpoint is None and t.width_10_90 is None


def test_endpoints_with_the_same_mean_on_different_prompts_have_no_transition() -> None:
    first = {str(i): float(i < 10) for i in range(20)}
    last = {str(i): float(i >= 10) for i in range(20)}
    middle = {str(i): float(i % 3 == 0) for i in range(20)}
    t = transition("t", "accuracy", "baseline", LAMBDAS, [first, *([middle] * 9), last], 500, 0)
    assert t.kind == "none"
    assert t.change_ci_low < 0 < t.change_ci_high  # type: ignore[operator]


def test_a_curve_that_overshoots_and_comes_back_is_not_monotone() -> None:
    values = [0.0, 0.2, 1.0, 0.3, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    curves = [{str(i): v for i in range(30)} for v in values]
    t = transition("t", "accuracy", "baseline", LAMBDAS, curves, 100, 0)  # type: ignore[arg-type]
    assert not t.monotone


def test_unscored_prompts_are_left_out_of_the_mean() -> None:
    values = _step(0.5, 10)
    for v in values:
        v["unscored"] = None
    t = transition("t", "refusal_rate", "baseline", LAMBDAS, values, 100, 0)
    assert (t.start, t.end, t.n) == (0.0, 1.0, 11)


def test_crossing_interpolates_between_the_neighbouring_lambdas() -> None:
    x = np.array([0.0, 0.5, 1.0])
    assert crossing(np.array([[0.0, 0.5, 1.0]]), x, 0.25)[0] == pytest.approx(0.25)
    assert crossing(np.array([[0.0, 0.0, 1.0]]), x, 0.5)[0] == pytest.approx(0.75)
    assert np.isnan(crossing(np.array([[0.3, 0.3, 0.3]]), x, 0.5)[0])
