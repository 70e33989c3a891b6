"""`harness report`: leaderboard files (md, csv, html, parquet) and plots for one or more runs.

Output folder layout:
    leaderboard.md / leaderboard.csv / leaderboard.parquet   one row per run x condition
    summary.csv / summary.parquet                             every stored row (long form)
    index.html                                                sortable table + plots
    plots/<run>/<figure>.png
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.common.errors import InputError
from harness.report import html as html_page
from harness.report.plots import Plot, render
from harness.report.runs import RunResults
from harness.report.tables import display_rows, leaderboard_frame, present_columns, summary_frame, trim

FORMATS = ("md", "csv", "html", "parquet")
NOTES = (
    "Intervals: Wilson 95% (rates), paired bootstrap 95% (relative reduction), t 95% (MT-Bench); "
    "random rows: mean over matched random seeds, interval = 2.5-97.5 percentile of seeds, n = seeds.",
    "z / pct / p vs random: the targeted relative reduction against its matched random seeds; "
    "p = (1 + #{random >= targeted}) / (1 + n).",
)


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InputError("command line", "--format", f"a comma-separated list of {', '.join(FORMATS)}", text)
    return list(dict.fromkeys(formats))


def write_report(runs: Sequence[RunResults], formats: Sequence[str], out: Path) -> list[Path]:
    """Write the requested formats to `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard_frame(runs)
    board = trim(board) if not board.empty else board
    written: list[Path] = []
    plots: dict[str, list[Plot]] = {}
    if "html" in formats or "md" in formats:
        for run in runs:
            plots[run.run_id] = render(run, out / "plots" / _slug(run.run_id))
            written += [p.path for p in plots[run.run_id]]
    if "csv" in formats:
        written += [_csv(board, out / "leaderboard.csv"), _csv(summary_frame(runs), out / "summary.csv")]
    if "parquet" in formats:
        written += [
            _parquet(board, out / "leaderboard.parquet"),
            _parquet(summary_frame(runs), out / "summary.parquet"),
        ]
    if "md" in formats:
        path = out / "leaderboard.md"
        path.write_text(markdown(runs, board, plots, out), encoding="utf-8")
        written.append(path)
    if "html" in formats:
        path = out / "index.html"
        path.write_text(html_document(runs, board, plots, out), encoding="utf-8")
        written.append(path)
    return written


def _slug(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _parquet(frame: pd.DataFrame, path: Path) -> Path:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InputError("command line", "--format", "parquet only with pyarrow installed (extra: report)") from None
    frame.to_parquet(path, index=False)
    return path


def _header(board: pd.DataFrame, runs: Sequence[RunResults]) -> list[str]:
    ids = ["model", "condition"] if len(runs) == 1 else ["run", "model", "condition"]
    return [*ids, *(c.title for c in present_columns(board)), "n", "unscored"]


def _title(runs: Sequence[RunResults]) -> str:
    if len(runs) == 1:
        return f"MoTE leaderboard: {runs[0].run_id}"
    return f"MoTE leaderboard: {len(runs)} runs"


def markdown(runs: Sequence[RunResults], board: pd.DataFrame, plots: dict[str, list[Plot]], out: Path) -> str:
    header = _header(board, runs)
    rows = display_rows(board, present_columns(board)) if not board.empty else []
    lines = [f"# {_title(runs)}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r[h][0].replace("|", "\\|") for h in header) + " |" for r in rows]
    lines += ["", *(f"{n}" for n in NOTES), ""]
    for run in runs:
        lines += [f"## {run.run_id}", "", f"suite {run.suite_name}, model {run.model} ({run.model_sha})", ""]
        lines += [line for caveat in run.caveats for line in (f"**{caveat}**", "")]
        for plot in plots.get(run.run_id, []):
            lines += [f"![{plot.title}]({plot.path.relative_to(out).as_posix()})", "", f"*{plot.caption}*", ""]
    return "\n".join(lines)


def html_document(runs: Sequence[RunResults], board: pd.DataFrame, plots: dict[str, list[Plot]], out: Path) -> str:
    header = _header(board, runs)
    rows = display_rows(board, present_columns(board)) if not board.empty else []
    table = html_page.table_html(header, rows)
    sections = [html_page.run_section(run, plots.get(run.run_id, []), out) for run in runs]
    return html_page.page(_title(runs), table, sections, NOTES)
