"""JSONL input files whose lines are objects with a unique `id` (prompt files, judge labels)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.common.errors import InputError


def objects_with_ids(path: Path, lines: list[str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, id, object) for each non-blank line; a line that is not a JSON object, or whose `id`
    is missing, empty, not a string or integer, or repeated, is an InputError naming file and line."""
    seen: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"line {number}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputError(path, where, "a JSON object", f"invalid JSON: {err.msg}") from None
        if not isinstance(obj, dict):
            raise InputError(path, where, "a JSON object", type(obj).__name__)
        raw_id = obj.get("id")
        if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or str(raw_id) == "":
            raise InputError(path, f"{where}: id", "a non-empty string or integer id", raw_id)
        rid = str(raw_id)
        if rid in seen:
            raise InputError(path, f"{where}: id", "ids unique within the file", rid)
        seen.add(rid)
        yield where, rid, obj
