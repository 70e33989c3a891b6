"""`harness gate RUN_DIR --rules gates.yaml [--baseline RUN_DIR] [--junit FILE]`.

Exit 0 when every rule holds, 1 when one fails (each failure printed with its value and bound),
2 for a bad rules file or run folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("gate", help="check a run's summary.json against rules (CI)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--rules", required=True, type=Path)
    p.add_argument("--baseline", type=Path, help="an earlier run to compare with (max_rise_vs_baseline_run, ...)")
    p.add_argument("--junit", type=Path, help="write JUnit XML here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.report.gate import check, junit_xml, load_rules, read_run

    rules = load_rules(args.rules)
    rows = read_run(args.run_dir, "RUN_DIR")
    baseline = read_run(args.baseline, "--baseline") if args.baseline else None
    outcomes = check(rules, rows, baseline)
    for o in outcomes:
        print(f"{'PASS' if o.passed else 'FAIL'}  {o.rule.describe()}: {o.detail}")
    failed = sum(not o.passed for o in outcomes)
    print(f"{len(outcomes) - failed} passed, {failed} failed")
    if args.junit:
        args.junit.write_text(junit_xml(outcomes), encoding="utf-8")
    return 1 if failed else 0
