"""The run's effect table (leaderboard.md) and its one-screen terminal summary, from summary rows only."""

from __future__ import annotations

from collections.abc import Sequence

from harness.analysis.ftri import FtriResult
from harness.analysis.summary import MetricRow
from harness.suite.schema import Suite

# (column title, task type, metric); the first task of each type supplies the column.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("refusal", "refusal", "refusal_rate"),
    ("rel. reduction", "refusal", "relative_reduction"),
    ("pct vs random", "refusal", "percentile_vs_random"),
    ("p (emp.)", "refusal", "empirical_p"),
    ("McNemar p (Holm)", "refusal", "mcnemar_p_holm"),
    ("control refusal", "refusal", "control_refusal_rate"),
    ("answered", "refusal", "answered_rate"),
    ("neutral acc.", "refusal", "neutral_accuracy"),
    ("lang. switch", "language", "switch_rate"),
    ("QA acc.", "qa", "accuracy"),
)


def table_rows(rows: Sequence[MetricRow], suite: Suite, intervals: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and cells: one line per condition (random seeds shown as their aggregate)."""
    task_of: dict[str, str] = {}
    for task in suite.tasks:
        task_of.setdefault(task.type, task.name)
    conditions: list[str] = []
    for r in rows:
        if ":seed=" not in r.condition and r.condition not in conditions:
            conditions.append(r.condition)
    index = {(r.task, r.condition, r.metric): r for r in rows}
    columns = [(title, task_of[kind], metric) for title, kind, metric in COLUMNS if kind in task_of]
    columns = [c for c in columns if any((c[1], cond, c[2]) in index for cond in conditions)]
    header = ["condition", *[title for title, _, _ in columns], "n", "unscored"]
    body = []
    for cond in conditions:
        cells = [cond]
        ns, unscored = [], 0
        for _, task_name, metric in columns:
            row = index.get((task_name, cond, metric))
            cells.append(_fmt(row, intervals))
            if row is not None and metric in ("refusal_rate", "switch_rate", "accuracy"):
                ns.append(row.n)
                unscored += row.unscored
        cells += [str(max(ns)) if ns else "", str(unscored)]
        body.append(cells)
    return header, body


def _fmt(row: MetricRow | None, intervals: bool = True) -> str:
    if row is None or row.value is None:
        return ""
    value = f"{row.value:.1f}" if row.metric == "percentile_vs_random" else f"{row.value:.3g}"
    if not intervals:
        return value
    if row.ci_low is not None and row.ci_high is not None and row.metric not in ("mcnemar_p", "mcnemar_p_holm"):
        return f"{value} [{row.ci_low:.2f}, {row.ci_high:.2f}]"
    return value


def leaderboard_markdown(rows: Sequence[MetricRow], suite: Suite, ranking: FtriResult | None) -> str:
    header, body = table_rows(rows, suite)
    lines = [f"# {suite.name}: {suite.model_name} ({suite.backend})", ""]
    if ranking is not None and suite.ftri is not None:
        top = ", ".join(f"L{r.layer}/E{r.expert}" for r in ranking.rows(suite.ftri.k))
        stab = ranking.stability.get("jaccard_mean")
        lines += [
            f"fTRI ({suite.ftri.score}, span {suite.ftri.span}, {suite.ftri.split} split): top {suite.ftri.k}: {top}",
            f"bootstrap top-{suite.ftri.k} Jaccard: {stab:.2f}" if stab is not None else "",
            "",
        ]
    if suite.evaluation.allow_discovery_overlap:
        lines += ["**Evaluated on discovery prompts (allow_discovery_overlap): effects are optimistic.**", ""]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cells) + " |" for cells in body),
        "",
        "Intervals: Wilson (rates), paired bootstrap (relative reduction), 2.5-97.5 percentile of seeds (random rows).",
        "",
    ]
    return "\n".join(lines)


def print_summary(rows: Sequence[MetricRow], suite: Suite) -> None:
    from rich.console import Console
    from rich.table import Table

    header, body = table_rows(rows, suite, intervals=False)
    if suite.is_sweep:
        header, body = _sweep_lines(rows, suite)
    table = Table(title=f"{suite.name}: {suite.model_name} (intervals in leaderboard.md)", show_lines=False)
    for i, title in enumerate(header):
        table.add_column(title, overflow="fold", no_wrap=i == 0)  # condition names stay on one line
    for cells in body:
        table.add_row(*cells)
    Console(width=max(Console().width, 150)).print(table)


def _sweep_lines(rows: Sequence[MetricRow], suite: Suite) -> tuple[list[str], list[list[str]]]:
    """A sweep's terminal table: its first task's figures, one line per model (every task in leaderboard.md)."""
    from harness.sweep.report import model_table

    task = suite.tasks[0]
    conditions = list(dict.fromkeys(r.condition for r in rows if ":seed=" not in r.condition))
    header, body = model_table(rows, task.name, task.type, conditions, intervals=False)
    return [f"{header[0]} ({task.name})", *header[1:]], body
