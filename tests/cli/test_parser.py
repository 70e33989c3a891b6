"""The command line registers every subcommand for `harness --help` and a mistyped command, and only the
named one's module when a command is given (a build does not import the judges' or the reports')."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.cli import SUBCOMMANDS, build_parser, command_of, main


def _commands(parser) -> set[str]:
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)


def test_every_subcommand_module_registers_the_command_named_after_it():
    assert _commands(build_parser()) == {command_of(m) for m in SUBCOMMANDS}
    assert "tiny-model" in _commands(build_parser())


def test_a_named_command_registers_that_command_alone():
    for module in SUBCOMMANDS:
        assert _commands(build_parser(command_of(module))) == {command_of(module)}


def test_an_unknown_command_registers_all_and_lists_them(capsys):
    assert _commands(build_parser("asemble")) == {command_of(m) for m in SUBCOMMANDS}
    with pytest.raises(SystemExit) as exit_info:
        main(["asemble", "recipe.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'asemble'" in err and "assemble" in err.replace("'asemble'", "")


def test_a_command_imports_only_its_own_subcommand_module():
    code = (
        "import sys; from harness.cli import build_parser; build_parser('assemble'); "
        "print(sorted(m for m in sys.modules if m.startswith('harness.cli.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['harness.cli.assemble']"
