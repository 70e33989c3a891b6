"""summary.json: a list of typed rows that tools read without knowing the code.

Each row: task, condition, metric, value, ci_low, ci_high, n, unscored (+ schema_version and an
optional note). Metric names are documented in README.md ("Metrics in summary.json").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from harness.analysis.stats import Estimate
from harness.common.atomic_files import write_whole
from harness.common.errors import InputError

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

    @field_validator("value", "ci_low", "ci_high")
    @classmethod
    def _finite_or_null(cls, x: float | None) -> float | None:
        """NaN is stored as null (no value); an infinity is a bug upstream, not a number to publish."""
        if x is None or math.isnan(x):
            return None
        if math.isinf(x):
            raise ValueError("must be a finite number or null")
        return x

    @classmethod
    def of(cls, task: str, condition: str, metric: str, est: Estimate, note: str | None = None) -> MetricRow:
        return cls(
            task=task,
            condition=condition,
            metric=metric,
            value=est.value,
            ci_low=est.ci_low,
            ci_high=est.ci_high,
            n=est.n,
            unscored=est.unscored,
            note=note,
        )


def write_summary(rows: list[MetricRow], path: Path) -> None:
    text = json.dumps([r.model_dump() for r in rows], indent=2, allow_nan=False)  # strict JSON for any reader
    data = (text + "\n").encode("utf-8")
    write_whole(path, lambda sink: sink.write(data))  # a gate never reads a half-written summary


def read_summary(path: Path) -> list[MetricRow]:
    """The rows of a stored summary.json; a file that is not one raises InputError naming the row."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, "<file>", "a summary.json written by harness run", str(err)) from None
    if not isinstance(data, list):
        raise InputError(path, "<top level>", "a list of metric rows", type(data).__name__)
    rows = []
    for i, row in enumerate(data):
        try:
            rows.append(MetricRow.model_validate(row))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in (i, *first["loc"]))
            raise InputError(path, field, first["msg"].removeprefix("Value error, ")) from None
    return rows
