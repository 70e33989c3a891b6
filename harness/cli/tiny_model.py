"""`harness tiny-model`: write a tiny random MoE of one family (real config, random weights)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("tiny-model", help="build a tiny random MoE model folder (tests, smoke runs)")
    p.add_argument(
        "--family", required=True, help="a transformers model_type with routed experts (mixtral, dbrx, dots1, ...)"
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.common.errors import InputError
    from harness.models.coverage import routed_moe_types
    from harness.models.tiny import save_tiny_model

    families = routed_moe_types()
    if args.family not in families:
        expected = f"a transformers model_type with routed experts, one of {families}"
        raise InputError("--family", "family", expected, args.family)
    path = save_tiny_model(args.family, args.out, seed=args.seed)
    print(f"wrote a tiny {args.family} model to {path}")
    return 0
