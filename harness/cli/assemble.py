"""`harness assemble RECIPE.yaml --out DIR [--resume] [--set GROUP.PARENT=LAMBDA ...] [--dry-run] [--at-load]`.

Builds an Assembly-of-Experts child (harness/assembly). Prints where every stored tensor goes (group,
tensors, bytes, lambdas, merged or kept) before building; a bad recipe or parent exits 2 before anything
is written. An interrupted build leaves `DIR.partial`; `--resume` keeps its finished shards. `--at-load`
writes only the child's config, tokenizer and assembly.json: HF and vLLM assemble its weights as they load.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("assemble", help="build an Assembly-of-Experts child from parent checkpoints")
    p.add_argument("recipe", type=Path, help="recipe YAML: parents, groups (lambdas), threshold, dtype")
    p.add_argument("--out", required=True, type=Path, help="the child's folder (must not exist)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted build of the same recipe")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="GROUP.PARENT=LAMBDA",
        help="override one lambda of the recipe (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="check the recipe and parents, print the placement")
    p.add_argument(
        "--at-load",
        action="store_true",
        help="write the child's folder without weights (config, tokenizer, assembly.json): the backends "
        "assemble it as they load it",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# asked of the disk before the build's imports (torch: about 1 s). The mixed 4 GB bench child, on 2 cores:
# 6.07-6.23 s with 512 MB, 5.74-6.02 s with 1 GB, 5.85-6.06 s with 2 GB, 6.3-8.1 s with none
WARM_START_BYTES = 1024 << 20


def run(args: argparse.Namespace) -> int:
    from harness.assembly.plan import make_plan, partial_folder
    from harness.assembly.recipe import load_recipe
    from harness.common.errors import InputError

    recipe = load_recipe(args.recipe, args.overrides)
    if args.out.exists():
        raise InputError("--out", "--out", "a folder that does not exist yet (a child is written whole)", str(args.out))
    if partial_folder(args.out).exists() and not args.resume and not args.dry_run:
        raise InputError(
            "--out", "--out", f"no unfinished build at {partial_folder(args.out)}: pass --resume, or remove it"
        )
    plan = make_plan(recipe, args.recipe)
    print_placement(plan.placement(), recipe.base)
    if args.dry_run:
        return 0
    if args.at_load:
        from harness.assembly.in_memory import write_child_folder

        write_child_folder(plan, args.out)
        print(f"wrote {args.out}: a child assembled at load (no weights on disk); use it as any model folder")
        return 0
    from harness.assembly.process import build_process_settings, no_collection

    cached = plan.start_reading(list(range(len(plan.shard_names))), WARM_START_BYTES)  # while torch loads
    with no_collection():
        from harness.assembly.build import build
    build_process_settings()  # this process only builds from here on
    result = build(plan, args.out, resume=args.resume, progress=not args.no_progress, cached=cached)
    kept = sum(1 for r in result.tensors.values() if r["distance"] is not None and not r["merged"])
    resumed = f", {result.resumed_shards} shard(s) kept from the interrupted build" if result.resumed_shards else ""
    print(
        f"wrote {args.out}: {len(result.tensors)} tensors, {result.merged} merged, {kept} kept under the "
        f"threshold {recipe.threshold}; read {result.bytes_read / 1e9:.3f} GB, wrote "
        f"{result.bytes_written / 1e9:.3f} GB in {result.seconds:.1f} s{resumed}"
    )
    return 0


def print_placement(rows: list[dict[str, Any]], base: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"placement (base: {base})")
    for column in ("group", "tensors", "bytes", "lambdas", "action"):
        table.add_column(column, justify="right" if column in ("tensors", "bytes") else "left")
    for row in rows:
        lambdas = ", ".join(f"{p} {v:g}" for p, v in row["lambdas"].items())
        table.add_row(row["group"], str(row["tensors"]), f"{row['bytes']:,}", lambdas, row["action"])
    Console(width=120).print(table)
