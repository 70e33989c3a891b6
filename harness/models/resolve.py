"""Turn a --model argument into a local model folder (`organism` names the shipped checkpoint)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from harness.common.errors import InputError

ORGANISM = "organism"


def organism_path() -> Path:
    return Path(str(resources.files("harness") / "organism" / "checkpoint"))


def resolve_model(name: str, field: str = "--model") -> Path:
    path = organism_path() if name == ORGANISM else Path(name)
    if not (path / "config.json").is_file():
        what = (
            "the shipped organism checkpoint" if name == ORGANISM else "a local model folder with config.json"
        )
        raise InputError(field, "model", f"{what} (nothing is downloaded)", str(path))
    return path
