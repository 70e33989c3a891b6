"""CI gates: bounds on summary.json metrics. Reads stored results only; never recomputes.

A rules file:

    rules:
      - {metric: relative_reduction, task: sensitive, condition: targeted, min: 0.4}
      - {metric: percentile_vs_random, condition: targeted, min: 95}
      - {metric: mt_bench_score_delta, max_drop: 0.2}          # value >= -0.2
      - {metric: unscored_share, max: 0.02}
      - {metric: refusal_rate, condition: baseline, max_rise_vs_baseline_run: 0.05}   # needs --baseline

A rule applies to every summary row with that metric (and task / condition, when given). A rule
that matches no row fails: an absent metric never passes silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.analysis.summary import MetricRow, read_summary
from harness.common.errors import InputError

BOUNDS = ("min", "max", "max_drop", "max_rise_vs_baseline_run", "max_drop_vs_baseline_run")


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    task: str | None = None
    condition: str | None = None
    min: float | None = None
    max: float | None = None
    max_drop: float | None = None
    max_rise_vs_baseline_run: float | None = None
    max_drop_vs_baseline_run: float | None = None

    @model_validator(mode="after")
    def _has_bound(self) -> Rule:
        if all(getattr(self, b) is None for b in BOUNDS):
            raise ValueError(f"at least one bound: {', '.join(BOUNDS)}")
        return self

    @property
    def needs_baseline(self) -> bool:
        return self.max_rise_vs_baseline_run is not None or self.max_drop_vs_baseline_run is not None

    def describe(self) -> str:
        scope = "".join(f" {k}={v}" for k, v in (("task", self.task), ("condition", self.condition)) if v)
        bounds = ", ".join(f"{b}={getattr(self, b)}" for b in BOUNDS if getattr(self, b) is not None)
        return f"{self.metric}{scope} ({bounds})"


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(min_length=1)  # an empty gate would pass every run


@dataclass(frozen=True)
class Outcome:
    rule: Rule
    passed: bool
    detail: str


def load_rules(path: str | Path) -> Rules:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(path, "<file>", "a readable rules YAML file", str(err)) from None
    except yaml.YAMLError as err:
        raise InputError(path, "<file>", "valid YAML", str(err).splitlines()[0]) from None
    try:
        return Rules.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "<top level>"
        expected = "no such key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        raise InputError(path, field, expected) from None


def _matches(rule: Rule, row: MetricRow) -> bool:
    return (
        row.metric == rule.metric
        and (rule.task is None or row.task == rule.task)
        and (rule.condition is None or row.condition == rule.condition)
    )


def check(rules: Rules, rows: Sequence[MetricRow], baseline: Sequence[MetricRow] | None = None) -> list[Outcome]:
    base_index = {(r.task, r.condition, r.metric): r for r in baseline or []}
    outcomes = []
    for rule in rules.rules:
        matched = [r for r in rows if _matches(rule, r)]
        if not matched:
            outcomes.append(Outcome(rule, False, "metric absent from the run"))
            continue
        if rule.needs_baseline and baseline is None:
            outcomes.append(Outcome(rule, False, "needs --baseline RUN_DIR"))
            continue
        failures = [f for row in matched for f in _violations(rule, row, base_index)]
        detail = (
            "; ".join(failures)
            if failures
            else ", ".join(f"{_where(r)}={r.value:.4g}" for r in matched[:5] if r.value is not None)
        )
        outcomes.append(Outcome(rule, not failures, detail))
    return outcomes


def _where(row: MetricRow) -> str:
    return f"{row.task}/{row.condition}"


def _violations(rule: Rule, row: MetricRow, base: dict[tuple[str, str, str], MetricRow]) -> list[str]:
    value = row.value
    if value is None or math.isnan(value):
        return [f"{_where(row)}: no value (n={row.n}, unscored={row.unscored})"]
    out = []
    if rule.min is not None and value < rule.min:
        out.append(f"{_where(row)}: {value:.4g} < min {rule.min}")
    if rule.max is not None and value > rule.max:
        out.append(f"{_where(row)}: {value:.4g} > max {rule.max}")
    if rule.max_drop is not None and value < -rule.max_drop:
        out.append(f"{_where(row)}: {value:.4g} dropped more than {rule.max_drop}")
    if rule.needs_baseline:
        ref = base.get((row.task, row.condition, row.metric))
        if ref is None or ref.value is None:
            return [*out, f"{_where(row)}: absent from the baseline run"]
        change = value - ref.value
        if rule.max_rise_vs_baseline_run is not None and change > rule.max_rise_vs_baseline_run:
            out.append(
                f"{_where(row)}: rose {change:+.4g} vs baseline run ({ref.value:.4g} -> {value:.4g}), "
                f"max rise {rule.max_rise_vs_baseline_run}"
            )
        if rule.max_drop_vs_baseline_run is not None and -change > rule.max_drop_vs_baseline_run:
            out.append(
                f"{_where(row)}: dropped {change:+.4g} vs baseline run ({ref.value:.4g} -> {value:.4g}), "
                f"max drop {rule.max_drop_vs_baseline_run}"
            )
    return out


def read_run(run_dir: str | Path, flag: str = "RUN_DIR") -> list[MetricRow]:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise InputError(flag, "summary.json", "a run folder written by harness run", str(path))
    return read_summary(path)


def junit_xml(outcomes: Sequence[Outcome], name: str = "harness-gate") -> str:
    suite = ElementTree.Element(
        "testsuite", name=name, tests=str(len(outcomes)), failures=str(sum(not o.passed for o in outcomes))
    )
    for o in outcomes:
        case = ElementTree.SubElement(suite, "testcase", classname=name, name=o.rule.describe())
        if not o.passed:
            ElementTree.SubElement(case, "failure", message=o.detail).text = o.detail
        else:
            ElementTree.SubElement(case, "system-out").text = o.detail
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True)
