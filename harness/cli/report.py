"""`harness report RESULTS_DIR... [--format md,csv,html] [--out DIR]`.

Each RESULTS_DIR is a run folder (results/<run_id>/) or a folder of run folders. Writes the
leaderboard (one row per run x condition) and the plots; reads stored results only. Exit 0, or 2
for a folder that holds no run or an unknown format.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="leaderboard (md/csv/html/parquet) and plots from run folders")
    p.add_argument("results", type=Path, nargs="+", metavar="RESULTS_DIR", help="run folders or folders of runs")
    p.add_argument(
        "--format", default="md,csv,html", help="comma-separated: md, csv, html, parquet (default md,csv,html)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: RESULTS_DIR/report for the first RESULTS_DIR)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from harness.common.errors import InputError

    missing = [m for m in ("matplotlib", "seaborn", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:  # before the report package (it imports the plotting libraries) and before any file is read
        raise InputError(
            "environment", "harness report", "the report extra: pip install 'mote-harness[report]'", missing
        )
    from harness.report import load_runs, parse_formats, write_report

    formats = parse_formats(args.format)
    runs = load_runs(args.results)
    out = args.out or args.results[0] / "report"
    written = write_report(runs, formats, out)
    print(f"{len(runs)} run(s) -> {out}: " + ", ".join(p.name for p in written if p.suffix != ".png"))
    return 0
