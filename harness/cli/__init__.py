"""`harness` command line: one module per subcommand, each with `register(subparsers)`.

Exit codes: 0 success, 1 a check failed (e.g. a gate), 2 bad input (named file and field), 3 stopped
because a service it needs kept failing (an LLM judge, every served replica): resume once it is back.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from harness.common.errors import InputError, ReplicasUnavailableError, UnsupportedModelError
from judges.health import JudgeUnavailableError

# Subcommand modules under harness.cli, in help order. Each defines register(subparsers), which
# adds its parser and sets `func` (args -> exit code).
SUBCOMMANDS: tuple[str, ...] = (
    "run",
    "ftri",
    "generate",
    "tiny_model",
    "judge",
    "gate",
    "report",
    "organism",
    "serve",
    "assemble",
    "check",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Mixture-of-Tunable-Experts evaluation harness: switch routed experts off or on, "
        "record routing, and measure what changed.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"harness.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (InputError, UnsupportedModelError) as err:
        print(f"harness {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (JudgeUnavailableError, ReplicasUnavailableError) as err:
        print(f"harness {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    return code


if __name__ == "__main__":
    raise SystemExit(main())
