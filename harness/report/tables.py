"""Leaderboard tables from stored summary rows: pivoting and formatting only, never a new statistic.

Two frames:
- `summary_frame`: every summary row of every run (long form, with run id and model), for CSV/parquet;
- `leaderboard_frame`: one row per run (model) x condition, the headline metrics side by side, each
  with its stored interval (`<column>_lo`, `<column>_hi`). Per-seed random rows are left out (their
  aggregate `random`, `k_sweep:k=K:random` rows carry the mean and the 2.5-97.5 percentile band).

As in harness/report/run_table.py, the first task of each type in the suite supplies a column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from harness.report.runs import RunResults


@dataclass(frozen=True)
class Column:
    key: str  # frame column (and its _lo/_hi interval columns when `interval`)
    title: str  # header in md/html
    task_type: str
    metric: str
    interval: bool = True
    digits: int = 3


COLUMNS: tuple[Column, ...] = (
    Column("refusal", "refusal", "refusal", "refusal_rate"),
    Column("aligned", "aligned", "refusal", "aligned_rate"),
    Column("reasoned", "reasoned", "refusal", "reasoned_rate"),
    Column("rel_reduction", "rel. reduction", "refusal", "relative_reduction"),
    Column("z_vs_random", "z vs random", "refusal", "z_vs_random", interval=False, digits=2),
    Column("pct_vs_random", "pct vs random", "refusal", "percentile_vs_random", interval=False, digits=1),
    Column("p_vs_random", "p vs random", "refusal", "empirical_p", interval=False),
    Column("control_refusal", "control refusal", "refusal", "control_refusal_rate"),
    Column("lang_switch", "lang. switch", "language", "switch_rate"),
    Column("qa_accuracy", "QA acc.", "qa", "accuracy"),
    Column("mt_bench", "MT-Bench", "mt_bench", "mt_bench_score", digits=2),
    Column("mt_bench_delta", "MT-Bench Δ", "mt_bench", "mt_bench_score_delta", digits=2),
)
# The rows whose n and unscored describe a condition's samples (not derived figures): n is the first
# one's (refusal prompts when the suite has a refusal task), unscored the sum over all of them.
PRIMARY = ("refusal_rate", "switch_rate", "accuracy", "mt_bench_score")
ID_COLUMNS = ("run", "model", "model_sha", "suite", "condition")

_FAMILY_ORDER = ("baseline", "targeted", "random", "stimulate", "k_sweep")


def is_seed_row(condition: str) -> bool:
    return ":seed=" in condition


def condition_order(condition: str) -> tuple[int, int, int, str]:
    """baseline, targeted (drop, mask), random aggregates, stimulate, then the k-sweep by k."""
    family = condition.split(":")[0]
    rank = _FAMILY_ORDER.index(family) if family in _FAMILY_ORDER else len(_FAMILY_ORDER)
    k = re.search(r"k=(\d+)", condition)
    return (rank, int(k.group(1)) if k else 0, condition.count(":"), condition)


def summary_frame(runs: Sequence[RunResults]) -> pd.DataFrame:
    """Every stored row, with the run it came from."""
    records = [
        {"run": run.run_id, "model": run.model, "model_sha": run.model_sha, "suite": run.suite_name, **r.as_dict()}
        for run in runs
        for r in run.rows
    ]
    return pd.DataFrame.from_records(records)


def leaderboard_frame(runs: Sequence[RunResults]) -> pd.DataFrame:
    """One row per run x condition; numeric columns, NaN where a run lacks the metric."""
    records = []
    for run in runs:
        source = {kind: next(iter(run.tasks_of_type(kind)), "") for kind in {c.task_type for c in COLUMNS}}
        index = {(r.task, r.condition, r.metric): r for r in run.rows}
        conditions = sorted({r.condition for r in run.rows if not is_seed_row(r.condition)}, key=condition_order)
        for cond in conditions:
            rec: dict[str, object] = {
                "run": run.run_id,
                "model": run.model,
                "model_sha": run.model_sha,
                "suite": run.suite_name,
                "condition": cond,
            }
            n: int | None = None
            unscored = 0
            for col in COLUMNS:
                row = index.get((source[col.task_type], cond, col.metric))
                rec[col.key] = _num(row.value if row else None)
                if col.interval:
                    rec[f"{col.key}_lo"] = _num(row.ci_low if row else None)
                    rec[f"{col.key}_hi"] = _num(row.ci_high if row else None)
                if row is not None and col.metric in PRIMARY:
                    n = row.n if n is None else n  # the first task's count (prompts, or seeds for random)
                    unscored += row.unscored
            rec["n"] = n
            rec["unscored"] = unscored
            records.append(rec)
    frame = pd.DataFrame.from_records(records)
    if not frame.empty:
        frame["n"] = frame["n"].astype("Int64")
        frame["unscored"] = frame["unscored"].astype("Int64")
    return frame


def present_columns(frame: pd.DataFrame) -> list[Column]:
    """Headline columns that at least one row fills."""
    return [c for c in COLUMNS if c.key in frame and frame[c.key].notna().any()]


def trim(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame without metric columns that no run has."""
    keep = list(ID_COLUMNS)
    for col in present_columns(frame):
        keep += [col.key] + ([f"{col.key}_lo", f"{col.key}_hi"] if col.interval else [])
    return frame[[*keep, "n", "unscored"]]


def format_cell(value: object, low: object = None, high: object = None, digits: int = 3) -> str:
    """`0.833 [0.55, 0.95]`; empty for a missing value."""
    if not _finite(value):
        return ""
    text = f"{float(value):.{digits}g}" if digits != 1 else f"{float(value):.1f}"  # type: ignore[arg-type]
    if _finite(low) and _finite(high):
        text += f" [{float(low):.2f}, {float(high):.2f}]"  # type: ignore[arg-type]
    return text


def display_rows(frame: pd.DataFrame, columns: Sequence[Column]) -> list[dict[str, tuple[str, float | None]]]:
    """Per leaderboard row: column title -> (display text, sort value)."""
    out = []
    for _, rec in frame.iterrows():
        cells: dict[str, tuple[str, float | None]] = {
            "run": (str(rec["run"]), None),
            "model": (str(rec["model"]), None),
            "condition": (str(rec["condition"]), None),
        }
        for col in columns:
            lo = rec.get(f"{col.key}_lo") if col.interval else None
            hi = rec.get(f"{col.key}_hi") if col.interval else None
            value = rec[col.key]
            cells[col.title] = (format_cell(value, lo, hi, col.digits), float(value) if _finite(value) else None)
        for key in ("n", "unscored"):
            value = rec[key]
            cells[key] = ("" if pd.isna(value) else str(int(value)), None if pd.isna(value) else float(value))
        out.append(cells)
    return out


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
