"""Reports: leaderboards (md, csv, html, parquet) and plots, read from stored run folders only.

`load_runs(paths)` reads run folders; `write_report(runs, formats, out)` writes the files. Reports
never call a model and never recompute a statistic: every number comes from summary.json (and the
plots from ftri.json, ftri_maps.npz, routing/ and labels.jsonl).
"""

from harness.report.build import FORMATS, parse_formats, write_report
from harness.report.runs import RunResults, find_run_dirs, load_run, load_runs
from harness.report.tables import leaderboard_frame, summary_frame

__all__ = [
    "FORMATS",
    "RunResults",
    "find_run_dirs",
    "leaderboard_frame",
    "load_run",
    "load_runs",
    "parse_formats",
    "summary_frame",
    "write_report",
]
