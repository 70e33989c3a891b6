"""`harness` command line: one module per subcommand, each with `register(subparsers)`. `harness COMMAND`
imports that command's module alone (`harness assemble --help`: 0.10 s, against 0.24 s with every module
imported); `harness --help` and a mistyped command import them all.

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


def command_of(module: str) -> str:
    """The subcommand a module under harness.cli registers (`tiny_model`: `harness tiny-model`)."""
    return module.replace("_", "-")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `command`, only that subcommand's module is imported and registered (each
    module imports what its command needs: a build need not wait for the judges' or the reports')."""
    modules = [m for m in SUBCOMMANDS if command_of(m) == command] or SUBCOMMANDS
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Mixture-of-Tunable-Experts evaluation harness: switch routed experts off or on, "
        "record routing, and measure what changed.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        importlib.import_module(f"harness.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
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
