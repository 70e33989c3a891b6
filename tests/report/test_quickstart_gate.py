"""The shipped quickstart gate rules (tasks/gates/quickstart.yaml) are valid, pass a run that shows
the organism's effect and fail one that does not."""

from __future__ import annotations

from pathlib import Path

from harness.analysis.summary import MetricRow
from harness.report.gate import check, load_rules

RULES = Path(__file__).resolve().parents[2] / "tasks" / "gates" / "quickstart.yaml"


def _rows(reduction: float, percentile: float) -> list[MetricRow]:
    def row(task: str, condition: str, metric: str, value: float) -> MetricRow:
        return MetricRow(task=task, condition=condition, metric=metric, value=value, n=12)

    return [
        row("sensitive", "baseline", "refusal_rate", 1.0),
        row("sensitive", "targeted", "relative_reduction", reduction),
        row("sensitive", "targeted", "percentile_vs_random", percentile),
        row("generic", "targeted", "accuracy", 0.95),
        row("sensitive", "baseline", "unscored_share", 0.0),
        row("sensitive", "targeted", "unscored_share", 0.0),
    ]


def test_quickstart_rules_pass_a_working_suppression_and_fail_one_no_better_than_random():
    rules = load_rules(RULES)
    assert all(o.passed for o in check(rules, _rows(1.0, 100.0)))
    failed = [o.rule.metric for o in check(rules, _rows(0.1, 40.0)) if not o.passed]
    assert failed == ["relative_reduction", "percentile_vs_random"]
