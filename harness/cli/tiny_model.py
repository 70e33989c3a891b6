"""`harness tiny-model`: write a tiny random MoE of one family (real config, random weights)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

FAMILIES_HELP = (
    "mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3, glm4_moe, gpt_oss, granitemoe, ..."
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("tiny-model", help="build a tiny random MoE model folder (tests, smoke runs)")
    p.add_argument("--family", required=True, help=FAMILIES_HELP)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.common.errors import InputError
    from harness.models.tiny import FAMILY_CONFIGS, save_tiny_model

    if args.family not in FAMILY_CONFIGS:
        raise InputError("--family", "family", f"one of {sorted(FAMILY_CONFIGS)}", args.family)
    path = save_tiny_model(args.family, args.out, seed=args.seed)
    print(f"wrote a tiny {args.family} model to {path}")
    return 0
