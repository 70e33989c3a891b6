"""summary.json: a list of typed rows that tools read without knowing the code.

Each row: task, condition, metric, value, ci_low, ci_high, n, unscored (+ schema_version and an
optional note). Metric names are documented in README.md ("Metrics in summary.json").
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from harness.stats import Estimate

SCHEMA_VERSION = 1


class MetricRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    task: str
    condition: str
    metric: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int
    unscored: int = 0
    note: str | None = None

    @classmethod
    def of(cls, task: str, condition: str, metric: str, est: Estimate, note: str | None = None) -> MetricRow:
        value = None if est.value != est.value else est.value  # NaN -> null in JSON
        return cls(
            task=task,
            condition=condition,
            metric=metric,
            value=value,
            ci_low=est.ci_low,
            ci_high=est.ci_high,
            n=est.n,
            unscored=est.unscored,
            note=note,
        )


def write_summary(rows: list[MetricRow], path: Path) -> None:
    path.write_text(json.dumps([r.model_dump() for r in rows], indent=2) + "\n", encoding="utf-8")


def read_summary(path: Path) -> list[MetricRow]:
    return [MetricRow.model_validate(r) for r in json.loads(path.read_text(encoding="utf-8"))]
