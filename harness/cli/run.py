"""`harness run SUITE.yaml`: discovery, every condition, judging, statistics; results/<run_id>/."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="run a suite: fTRI, conditions, judges, effect sizes")
    p.add_argument("suite", type=Path, help="suite YAML (e.g. tasks/suites/quickstart.yaml)")
    p.add_argument("--out", type=Path, default=Path("results"), help="parent folder of run folders")
    p.add_argument("--run-id", help="run folder name (default: <suite name>-<timestamp>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR")
    p.add_argument("--model", help="override the suite's model (folder or 'organism')")
    p.add_argument(
        "--skip-judge-check",
        action="store_true",
        help="do not make the one-token call to each LLM judge before the run (an endpoint that bills per call)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.report.run_table import print_summary
    from harness.run.runner import Runner, default_run_id
    from harness.suite.schema import load_suite

    suite = load_suite(args.suite, {"model": args.model})
    run_dir = args.resume if args.resume is not None else args.out / (args.run_id or default_run_id(suite))
    runner = Runner(suite, args.suite, run_dir, resume=args.resume is not None, check_judges=not args.skip_judge_check)
    rows = runner.run()
    print_summary(rows, suite)
    print(f"results: {run_dir}/ (summary.json, leaderboard.md, experts.yaml, samples.jsonl, labels.jsonl)")
    return 0
