"""`harness organism`: train the model organism, or reproduce its card's numbers.

    harness organism train [--out DIR] [--seed S] [--steps N] [--threads T]
    harness organism evaluate [--model DIR|organism] [--seeds N] [--out FILE.json] [--card]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.common.errors import InputError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("organism", help="train / evaluate the model organism (planted experts)")
    sub = p.add_subparsers(dest="organism_command", required=True, metavar="ACTION")

    t = sub.add_parser("train", help="generate the corpus and train the organism (deterministic per seed)")
    t.add_argument("--out", type=Path, default=Path("organism-model"), help="output model folder")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped recipe's)")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default 1; the bits depend on it)")
    t.set_defaults(func=run_train)

    e = sub.add_parser("evaluate", help="measure the card's targets on held-out prompts")
    e.add_argument("--model", default="organism", help="model folder, or 'organism' (the shipped one)")
    e.add_argument("--seeds", type=int, default=100, help="random matched baseline seeds")
    e.add_argument("--out", type=Path, default=None, help="write the full report as JSON here")
    e.add_argument("--card", action="store_true", help="(re)write ORGANISM.md in the model folder")
    e.add_argument("--batch-size", type=int, default=64)
    e.set_defaults(func=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    from harness.organism.train import TrainConfig, train

    cfg = TrainConfig(seed=args.seed)
    if args.steps is not None:
        if args.steps < 1:
            raise InputError("--steps", "steps", "an integer >= 1", args.steps)
        cfg.steps = args.steps
        cfg.warmup = min(cfg.warmup, max(1, args.steps // 4))
    if args.threads is not None:
        if args.threads < 1:
            raise InputError("--threads", "threads", "an integer >= 1", args.threads)
        cfg.threads = args.threads
    path = train(cfg, args.out)
    print(f"wrote the organism to {path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from harness.models.resolve import resolve_model
    from harness.organism.card import summary_lines, write_card
    from harness.organism.evaluate import evaluate_organism

    if args.seeds < 1:
        raise InputError("--seeds", "seeds", "an integer >= 1", args.seeds)
    model = resolve_model(args.model)
    for name in ("training.json", "planted_refusal.yaml", "planted_english.yaml"):
        if not (model / name).is_file():
            raise InputError(model, name, "an organism folder (written by `harness organism train`)")
    report = evaluate_organism(model, n_seeds=args.seeds, batch_size=args.batch_size)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.card:
        write_card(model, report)
    print("\n".join(summary_lines(report)))
    return 0 if all(t["met"] for t in report["targets"].values()) else 1
