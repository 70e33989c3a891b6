"""Turn a --model argument into a local model folder (`organism` names the shipped checkpoint,
`organism-direct` its shipped direct sibling)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from harness.common.errors import InputError

ORGANISM = "organism"
ORGANISM_DIRECT = "organism-direct"


def organism_path() -> Path:
    return Path(str(resources.files("harness") / "organism" / "checkpoint"))


def direct_organism_path() -> Path:
    """The organism's direct sibling (no trace, no refusals), the second parent of assembly sweeps."""
    return Path(str(resources.files("harness") / "organism" / "direct"))


def named_model(name: str) -> Path | None:
    """The shipped folder a name stands for (`organism`, `organism-direct`), or None for any other name."""
    if name == ORGANISM:
        return organism_path()
    if name == ORGANISM_DIRECT:
        return direct_organism_path()
    return None


def resolve_model(name: str, field: str = "--model") -> Path:
    shipped = named_model(name)
    path = shipped if shipped is not None else Path(name)
    if not (path / "config.json").is_file():
        what = f"the shipped {name} checkpoint" if shipped is not None else "a local model folder with config.json"
        raise InputError(field, "model", f"{what} (nothing is downloaded)", str(path))
    return path
