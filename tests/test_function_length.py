"""No function in harness/ or judges/ is longer than 60 lines (DESIGN.md section 4: small functions,
one concern each): a long function is split by concern, not exempted."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "judges")
MAX_LINES = 60  # def line to last line, inclusive (decorators not counted)


def long_functions(folder: Path, base: Path = ROOT, limit: int = MAX_LINES) -> list[str]:
    """`path:line name (n lines)`, path relative to base, for every function or method in folder
    (nested ones included) longer than limit."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(base)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_harness_or_judges_is_longer_than_60_lines():
    offenders = [entry for package in PACKAGES for entry in long_functions(ROOT / package)]
    assert not offenders, "functions over 60 lines (split them by concern):\n" + "\n".join(offenders)


def test_the_length_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n", encoding="utf-8")
    assert long_functions(tmp_path, base=tmp_path) == [f"long.py:1 long ({MAX_LINES + 1} lines)"]
