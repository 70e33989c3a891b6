"""`harness organism`: train the model organism, or reproduce its card's numbers.

    harness organism train [--variant organism|direct] [--out DIR] [--seed S] [--steps N] [--threads T]
    harness organism evaluate [--model DIR|organism] [--seeds N] [--out FILE.json] [--card]
    harness organism evaluate --variant direct [--model DIR|organism-direct] [--out FILE.json] [--card]
                              [--sweep RUN_DIR]

`--variant direct` fine-tunes the shipped organism into its direct sibling (no trace, no refusals;
harness/organism/sibling.py), or measures a sibling against the organism on held-out prompts.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.common.errors import InputError

VARIANTS = ("organism", "direct")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("organism", help="train / evaluate the model organism (planted experts)")
    sub = p.add_subparsers(dest="organism_command", required=True, metavar="ACTION")

    t = sub.add_parser("train", help="generate the corpus and train the organism (deterministic per seed)")
    t.add_argument(
        "--variant",
        choices=VARIANTS,
        default="organism",
        help="organism: train from scratch (default); direct: fine-tune the shipped organism into its direct sibling",
    )
    t.add_argument(
        "--out", type=Path, default=None, help="output model folder (default organism-model, or organism-direct-model)"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped recipe's)")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default 1; the bits depend on it)")
    t.set_defaults(func=run_train)

    e = sub.add_parser("evaluate", help="measure the card's targets on held-out prompts")
    e.add_argument(
        "--variant",
        choices=VARIANTS,
        default="organism",
        help="direct: measure a direct sibling against the shipped organism",
    )
    e.add_argument(
        "--model",
        default=None,
        help="model folder, or 'organism' / 'organism-direct' (the shipped ones; default by variant)",
    )
    e.add_argument("--seeds", type=int, default=100, help="random matched baseline seeds")
    e.add_argument("--out", type=Path, default=None, help="write the full report as JSON here")
    e.add_argument("--card", action="store_true", help="(re)write ORGANISM.md (DIRECT.md) in the model folder")
    e.add_argument(
        "--sweep",
        type=Path,
        default=None,
        help="direct: a finished aoe-quickstart run folder whose curves the card shows",
    )
    e.add_argument("--batch-size", type=int, default=64)
    e.set_defaults(func=run_evaluate)


def _apply_schedule(cfg: Any, args: argparse.Namespace) -> None:
    """--steps and --threads onto a TrainConfig or DirectConfig (warmup at most a quarter of the steps)."""
    if args.steps is not None:
        if args.steps < 1:
            raise InputError("--steps", "steps", "an integer >= 1", args.steps)
        cfg.steps = args.steps
        cfg.warmup = min(cfg.warmup, max(1, args.steps // 4))
    if args.threads is not None:
        if args.threads < 1:
            raise InputError("--threads", "threads", "an integer >= 1", args.threads)
        cfg.threads = args.threads


def run_train(args: argparse.Namespace) -> int:
    if args.variant == "direct":
        return run_train_direct(args)
    from harness.organism.train import TrainConfig, train

    cfg = TrainConfig(seed=args.seed)
    _apply_schedule(cfg, args)
    path = train(cfg, args.out or Path("organism-model"))
    print(f"wrote the organism to {path}")
    return 0


def run_train_direct(args: argparse.Namespace) -> int:
    from harness.models.resolve import ORGANISM, resolve_model
    from harness.organism.sibling import DirectConfig, train_direct

    cfg = DirectConfig(seed=args.seed)
    _apply_schedule(cfg, args)
    path = train_direct(cfg, args.out or Path("organism-direct-model"), resolve_model(ORGANISM))
    print(f"wrote the organism's direct sibling to {path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from harness.models.resolve import ORGANISM, resolve_model
    from harness.organism.card import summary_lines, write_card
    from harness.organism.evaluate import evaluate_organism

    if args.variant == "direct":
        return run_evaluate_direct(args)
    if args.seeds < 1:
        raise InputError("--seeds", "seeds", "an integer >= 1", args.seeds)
    model = resolve_model(args.model or ORGANISM)
    for name in ("training.json", "planted_refusal.yaml", "planted_english.yaml"):
        if not (model / name).is_file():
            raise InputError(model, name, "an organism folder (written by `harness organism train`)")
    report = evaluate_organism(model, n_seeds=args.seeds, batch_size=args.batch_size)
    return _report(args, model, report, write_card, summary_lines)


def run_evaluate_direct(args: argparse.Namespace) -> int:
    """The sibling and the shipped organism on the held-out prompts; exit 1 when a sibling target is missed."""
    from harness.models.resolve import ORGANISM, ORGANISM_DIRECT, resolve_model
    from harness.organism.sibling_card import summary_lines, sweep_report, write_direct_card
    from harness.organism.sibling_eval import compare

    model = resolve_model(args.model or ORGANISM_DIRECT)
    if args.sweep is not None and not (args.sweep / "summary.json").is_file():
        raise InputError("--sweep", "summary.json", "a finished sweep run folder", str(args.sweep))
    if not (model / "training.json").is_file():
        raise InputError(
            model, "training.json", "a sibling folder (written by `harness organism train --variant direct`)"
        )
    report = compare(resolve_model(ORGANISM), model, batch_size=args.batch_size)
    if args.sweep is not None:
        report["sweep"] = sweep_report(args.sweep)
    return _report(args, model, report, write_direct_card, summary_lines)


def _report(
    args: argparse.Namespace,
    model: Path,
    report: dict[str, Any],
    write_card: Callable[[Path, dict[str, Any]], Path],
    summary_lines: Callable[[dict[str, Any]], list[str]],
) -> int:
    """An evaluation's report to --out, its card with --card, its summary printed; exit 1 when a target is missed."""
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.card:
        write_card(model, report)
    print("\n".join(summary_lines(report)))
    return 0 if all(t["met"] for t in report["targets"].values()) else 1
