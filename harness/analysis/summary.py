"""summary.json: typed rows that tools read without knowing the code.

Each row: task, condition, metric, value, ci_low, ci_high, n, unscored (+ schema_version, an optional
note, and in a model sweep the child's `lambda`). Metric names are documented in README.md ("Metrics in
summary.json"). A run's summary.json is the list of rows; a model sweep's is an object
`{"schema_version", "rows": [...], "transitions": [...]}` (harness/sweep/transitions.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.analysis.stats import Estimate
from harness.common.atomic_files import write_whole
from harness.common.errors import InputError

SCHEMA_VERSION = 1


class MetricRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

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
    lambda_: float | None = Field(default=None, alias="lambda")  # a model sweep's child: its lambda

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

    def as_dict(self) -> dict[str, Any]:
        """The row as stored: `lambda` only on a sweep's rows."""
        return self.model_dump(by_alias=True, exclude={"lambda_"} if self.lambda_ is None else None)


def write_summary(rows: list[MetricRow], path: Path, transitions: list[dict[str, Any]] | None = None) -> None:
    """The rows (a list), or with a sweep's transition rows an object holding both."""
    listed = [r.as_dict() for r in rows]
    data_out: Any = listed
    if transitions is not None:
        data_out = {"schema_version": SCHEMA_VERSION, "rows": listed, "transitions": transitions}
    text = json.dumps(data_out, indent=2, allow_nan=False)  # strict JSON for any reader
    data = (text + "\n").encode("utf-8")
    write_whole(path, lambda sink: sink.write(data))  # a gate never reads a half-written summary


def read_summary(path: Path) -> list[MetricRow]:
    """The rows of a stored summary.json; a file that is not one raises InputError naming the row."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, "<file>", "a summary.json written by harness run", str(err)) from None
    if isinstance(data, dict) and isinstance(data.get("rows"), list) and "transitions" in data:  # a model sweep
        data = data["rows"]
    if not isinstance(data, list):
        raise InputError(
            path, "<top level>", "a list of metric rows (or a sweep's {rows, transitions})", type(data).__name__
        )
    rows = []
    for i, row in enumerate(data):
        try:
            rows.append(MetricRow.model_validate(row))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in (i, *first["loc"]))
            raise InputError(path, field, first["msg"].removeprefix("Value error, ")) from None
    return rows


def read_transitions(path: Path) -> list[dict[str, Any]]:
    """A model sweep's transition rows (an empty list for a run that is not a sweep)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    found = data.get("transitions") if isinstance(data, dict) else None
    return [t for t in found if isinstance(t, dict)] if isinstance(found, list) else []
