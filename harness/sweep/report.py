"""A sweep's tables and figures, from its stored rows and transitions only: per task one row per model
(key metric, reasoning trace, output tokens and their ratio to each reference, degenerate output, the
endpoints' match with their parents), the transition table, and each curve metric against lambda with
its interval as a band (the parents as dashed lines)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.analysis.summary import MetricRow
from harness.suite.schema import Suite
from harness.sweep.children import SweepModel
from harness.sweep.transitions import CURVE_METRICS, SHARP_WIDTH, Transition

if TYPE_CHECKING:  # matplotlib comes with the report extra; the tables need none of it
    from matplotlib.figure import Figure

KEY_METRIC = {"refusal": "refusal_rate", "language": "zh_share", "qa": "accuracy", "mt_bench": "mt_bench_score"}
TITLES = {
    "refusal_rate": "refusal",
    "zh_share": "zh trace",
    "accuracy": "accuracy",
    "mt_bench_score": "MT-Bench",
    "trace_rate": "trace",
    "output_tokens_mean": "tokens (mean)",
    "output_tokens_median": "tokens (median)",
    "degenerate_rate": "degenerate",
    "parent_match": "= parent",
    "relative_reduction": "rel. reduction",
}
RULE = (
    f"Transition: the lambda where the metric crosses halfway between the endpoints (bootstrap 95% over "
    f"prompts), the 10-90% width; sharp when the width is <= {SHARP_WIDTH} of the lambda range, gradual "
    "otherwise, none when the endpoints' difference has a 95% interval containing 0 (harness/sweep/transitions.py)."
)


def _fmt(row: MetricRow | None, intervals: bool) -> str:
    if row is None or row.value is None:
        return ""
    text = f"{row.value:.3g}"
    if intervals and row.ci_low is not None and row.ci_high is not None and row.ci_low != row.ci_high:
        text += f" [{row.ci_low:.3g}, {row.ci_high:.3g}]"
    return text


def table_metrics(rows: Sequence[MetricRow], task: str, task_type: str) -> list[str]:
    present = {r.metric for r in rows if r.task == task}
    ratios = sorted(m for m in present if m.startswith("output_tokens_ratio:"))
    effect = ["relative_reduction"] if task_type == "refusal" else []  # a carried intervention's cut, per model
    wanted = [KEY_METRIC[task_type], *effect, "trace_rate", "output_tokens_mean", "output_tokens_median", *ratios]
    return [m for m in [*wanted, "degenerate_rate", "parent_match"] if m in present]


def model_table(
    rows: Sequence[MetricRow], task: str, task_type: str, conditions: Sequence[str], intervals: bool = True
) -> tuple[list[str], list[list[str]]]:
    """One line per model (and per carried condition), in sweep order."""
    index = {(r.condition, r.metric): r for r in rows if r.task == task}
    lam = {r.condition: r.lambda_ for r in rows if r.task == task}
    metrics = table_metrics(rows, task, task_type)
    header = ["model", "lambda", *(TITLES.get(m, m.replace("output_tokens_ratio:", "tokens / ")) for m in metrics)]
    body = []
    for cond in conditions:
        value = lam.get(cond)
        body.append(
            [cond, "" if value is None else f"{value:g}", *(_fmt(index.get((cond, m)), intervals) for m in metrics)]
        )
    return header, body


def _num(x: Any) -> str:
    return "" if x is None else f"{x:.3g}"


def transition_table(found: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "metric", "condition", "endpoints", "midpoint lambda [95%]", "10-90% width [95%]", "kind"]
    body = []
    for t in found:
        mid = (
            ""
            if t["midpoint"] is None
            else f"{_num(t['midpoint'])} [{_num(t['midpoint_ci_low'])}, {_num(t['midpoint_ci_high'])}]"
        )
        width = (
            ""
            if t["width_10_90"] is None
            else f"{_num(t['width_10_90'])} [{_num(t['width_ci_low'])}, {_num(t['width_ci_high'])}]"
        )
        kind = t["kind"] + ("" if t["monotone"] else " (not monotone)")
        body.append(
            [t["task"], t["metric"], t["condition"], f"{_num(t['start'])} -> {_num(t['end'])}", mid, width, kind]
        )
    return header, body


def curve_table(
    rows: Sequence[MetricRow], columns: Sequence[tuple[str, str]], condition: str = ""
) -> tuple[list[str], list[list[str]]]:
    """Values only, one line per lambda (the children of one carried condition, "" for the baseline), one
    column per (task, metric): the curves of a sweep at a glance."""
    carried = [condition] if condition else []
    picked = [r for r in rows if r.lambda_ is not None and r.condition.split("|", 1)[1:] == carried]
    index = {(r.task, r.metric, r.lambda_): r for r in picked}
    header = ["lambda", *(f"{task} {TITLES.get(metric, metric)}" for task, metric in columns)]
    body = [
        [f"{lam:g}", *(_fmt(index.get((task, metric, lam)), False) for task, metric in columns)]
        for lam in sorted({r.lambda_ for r in picked if r.lambda_ is not None})
    ]
    return header, body


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body),
        "",
    ]


def sweep_conditions(rows: Sequence[MetricRow], models: Sequence[SweepModel]) -> list[str]:
    """The conditions to list, models in sweep order, each model's carried conditions after it (no seeds)."""
    names = [r.condition for r in rows if ":seed=" not in r.condition]
    order = {m.name: i for i, m in enumerate(models)}
    unique = list(dict.fromkeys(names))
    return sorted(unique, key=lambda c: (order.get(c.split("|")[0], len(order)), c != c.split("|")[0]))


def sweep_markdown(
    rows: Sequence[MetricRow], found: Sequence[Transition], suite: Suite, models: Sequence[SweepModel]
) -> str:
    lines = [f"# {suite.name}: {suite.model_name} ({suite.backend})", ""]
    conditions = sweep_conditions(rows, models)
    for task in suite.tasks:
        lines += [f"## {task.name} ({task.type})", ""]
        lines += markdown_table(*model_table(rows, task.name, task.type, conditions))
    lines += ["## Transitions", ""]
    lines += markdown_table(*transition_table([t.model_dump() for t in found]))
    lines += [RULE, "", "Intervals: Wilson 95% (rates), percentile bootstrap 95% (tokens, ratios).", ""]
    return "\n".join(lines)


def _curve(rows: Sequence[MetricRow], task: str, metric: str, suffix: str) -> tuple[np.ndarray, ...]:
    picked = sorted(
        (
            r
            for r in rows
            if r.task == task
            and r.metric == metric
            and r.lambda_ is not None
            and (r.condition.partition("|")[2] == suffix)
        ),
        key=lambda r: float(r.lambda_ or 0.0),
    )

    def col(field: str) -> np.ndarray:
        return np.array([np.nan if getattr(r, field) is None else float(getattr(r, field)) for r in picked])

    return np.array([float(r.lambda_ or 0.0) for r in picked]), col("value"), col("ci_low"), col("ci_high")


def sweep_figure(rows: Sequence[MetricRow], task: str, task_type: str, parents: Sequence[str]) -> Figure | None:
    """The curve metrics of one task against lambda, one panel each; carried conditions as extra lines."""
    from matplotlib.figure import Figure

    from harness.report.plots import _palette

    metrics = [
        m
        for m in CURVE_METRICS[task_type]
        if any(r.task == task and r.metric == m and r.lambda_ is not None for r in rows)
    ]
    if not metrics:
        return None
    suffixes = sorted(
        {
            r.condition.partition("|")[2]
            for r in rows
            if r.task == task and r.lambda_ is not None and ":seed=" not in r.condition
        }
    )
    fig = Figure(figsize=(3.3 * len(metrics), 3.0), layout="constrained")
    colours = _palette(max(len(suffixes), 1) + len(parents))
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
        for colour, suffix in zip(colours, suffixes, strict=False):
            x, y, low, high = _curve(rows, task, metric, suffix)
            ax.plot(x, y, marker="o", markersize=3, color=colour, label=suffix or "baseline")
            ax.fill_between(
                x, np.where(np.isnan(low), y, low), np.where(np.isnan(high), y, high), color=colour, alpha=0.2
            )
        for colour, parent in zip(colours[len(suffixes) :], parents, strict=False):
            row = next((r for r in rows if r.task == task and r.metric == metric and r.condition == parent), None)
            if row is not None and row.value is not None:
                ax.axhline(row.value, linestyle="--", linewidth=1, color=colour, label=parent)
        ax.set_title(TITLES.get(metric, metric), fontsize=10)
        ax.set_xlabel("lambda")
    fig.axes[0].legend(fontsize=7, loc="best")
    return fig
