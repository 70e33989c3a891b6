"""A parent checkpoint as stored: its safetensors shards, each tensor's dtype, shape and byte range.

Tensors are read by row ranges, by position, into memory of the build's own (reads.py), so only the
chunks in flight count in the process's resident memory. safetensors' own `safe_open` maps each whole
file instead, and every page a read touches then stays resident until the file is closed: a whole R1
embedding (1.8 GB) would sit there. The safetensors format is an 8-byte header length, a
JSON header ({name: {dtype, shape, data_offsets}}) and the raw data, so reading it directly is short;
the tests check every file we write with `safe_open`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.common.errors import InputError

INDEX = "model.safetensors.index.json"

# safetensors dtype names -> bytes per element (the torch dtypes are in reads.py: planning needs no torch)
ITEMSIZES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors name, e.g. "BF16", "F8_E4M3"
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def itemsize(self) -> int:
        return ITEMSIZES[self.dtype]

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_elements(self) -> int:
        return math.prod(self.shape[1:]) if self.shape else 1

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOATS

    def row_bytes(self) -> int:
        return self.row_elements * self.itemsize


Cached = dict[Path, list[tuple[int, int]]]  # byte ranges [start, stop) per file, asked of the page cache
DIRECT_ALIGN = 4096  # what O_DIRECT reads align their buffer, position and length to (any block size up to it)


class OpenFiles:
    """The parents' files a build reads, each opened once and read by position (threads share them).

    With `direct`, chunks are read with O_DIRECT where the file system allows it: the disk writes into
    our buffer, with no copy through the page cache (measured on 2 cores, 4.3 GB in 2 MB reads on two
    threads: 0.2 s of system CPU against 1.8-2.3 s for buffered reads, at the same 1.7-2.5 GB/s), and a
    build does not fill the page cache with parents it reads once. Ranges in `cached` (asked of the
    kernel beforehand: `Plan.start_reading`) are read through the cache all the same: an O_DIRECT read
    would read them from the disk again."""

    def __init__(self, direct: bool = False, cached: Cached | None = None) -> None:
        self._cached = cached or {}
        self._fds: dict[Path, int] = {}
        self._direct_fds: dict[Path, int | None] = {}  # None: this file is read through the page cache
        self._closing: list[int] = []
        self._lock = threading.Lock()  # reader threads open files too
        self.direct = direct and hasattr(os, "O_DIRECT")

    def fd(self, path: Path) -> int:
        with self._lock:
            if path not in self._fds:
                self._fds[path] = fd = os.open(path, os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):  # Linux; elsewhere the default read-ahead
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a larger read-ahead window
            return self._fds[path]

    def reading(self, path: Path, position: int = 0, nbytes: int = 0) -> tuple[int, int]:
        """(descriptor, alignment) to read bytes [position, position + nbytes) of `path` with: O_DIRECT's
        with DIRECT_ALIGN where opened so, the file system allows it and the bytes are not known to be
        cached, else the buffered one with alignment 1."""
        if self.direct and not self._is_cached(path, position, nbytes):
            with self._lock:
                if path not in self._direct_fds:
                    try:
                        self._direct_fds[path] = os.open(path, os.O_RDONLY | os.O_DIRECT)
                    except OSError:  # a file system without O_DIRECT (tmpfs on older kernels)
                        self._direct_fds[path] = None
                fd = self._direct_fds[path]
            if fd is not None:
                return fd, DIRECT_ALIGN
        return self.fd(path), 1

    def _is_cached(self, path: Path, position: int, nbytes: int) -> bool:
        return any(start <= position and position + nbytes <= stop for start, stop in self._cached.get(path, ()))

    def read_through_cache(self, path: Path) -> None:
        """Read `path` through the page cache from now on (its O_DIRECT reads were refused)."""
        with self._lock:
            fd = self._direct_fds.get(path)
            if fd is not None:
                self._closing.append(fd)  # another thread may still be reading with it
            self._direct_fds[path] = None

    def will_need(self, tensor: TensorInfo, start: int, stop: int) -> None:
        """Ask the kernel to start reading rows [start, stop) of a tensor now, in the background (into its
        page cache, not our memory)."""
        if hasattr(os, "posix_fadvise") and stop > start:  # (a length of 0 would mean: to the file's end)
            row, fd = tensor.row_bytes(), self.fd(tensor.file)
            os.posix_fadvise(fd, tensor.start + start * row, (stop - start) * row, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        for fd in [*self._fds.values(), *(fd for fd in self._direct_fds.values() if fd is not None), *self._closing]:
            os.close(fd)
        self._fds.clear()
        self._direct_fds.clear()
        self._closing.clear()

    def __enter__(self) -> OpenFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_exactly(fd: int, view: memoryview, position: int, need: int | None = None) -> bool:
    """Fill `view` from byte `position` of `fd` (or its first `need` bytes, where the file may end
    after them); False where the file ends first."""
    need = len(view) if need is None else need
    got = 0
    while got < need:
        n = os.preadv(fd, [view[got:]], position + got)
        if not n:
            return False
        got += n
    return True


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(the JSON header, the byte offset where data begins) of one safetensors file."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                raise InputError(path, "header", "a safetensors file (8-byte header length)")
            (length,) = struct.unpack("<Q", raw)
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(path, "header", f"a readable safetensors file ({err})") from err
    return header, 8 + length


@dataclass(frozen=True)
class Checkpoint:
    """One parent: its folder, config and every stored tensor."""

    name: str
    folder: Path
    config: dict[str, Any]
    shards: tuple[Path, ...]  # in the order of the index (sorted file names)
    tensors: dict[str, TensorInfo]  # in storage order, shard by shard

    @classmethod
    def open(cls, name: str, folder: Path, source: str) -> Checkpoint:
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise InputError(source, f"parents.{name}", "a model folder with config.json", str(folder))
        config = json.loads(config_path.read_text(encoding="utf-8"))
        shards = _shard_files(folder, source, name)
        tensors: dict[str, TensorInfo] = {}
        for shard in shards:
            header, data_start = read_header(shard)
            for key, entry in header.items():
                if key == "__metadata__":
                    continue
                begin, end = entry["data_offsets"]
                tensors[key] = TensorInfo(
                    key, entry["dtype"], tuple(entry["shape"]), shard, data_start + begin, end - begin
                )
        return cls(name, folder, config, shards, tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def identity(self) -> dict[str, Any]:
        """What names this parent without hashing its data: the config's digest and every shard's name,
        size and header digest (the header holds each tensor's dtype, shape and byte range)."""
        shards = []
        for shard in self.shards:
            _, data_start = read_header(shard)
            with shard.open("rb") as handle:
                head = handle.read(data_start)
            shards.append({"file": shard.name, "bytes": shard.stat().st_size, "header_sha256": _sha(head)})
        config_bytes = json.dumps(self.config, sort_keys=True).encode()
        return {
            "name": self.name,
            "path": str(self.folder),
            "model_type": self.config.get("model_type"),
            "config_sha256": _sha(config_bytes),
            "tensors": len(self.tensors),
            "bytes": self.nbytes,
            "shards": shards,
        }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shard_files(folder: Path, source: str, name: str) -> tuple[Path, ...]:
    index = folder / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted(set(weight_map.values()))
        for file in files:
            if not (folder / file).is_file():
                raise InputError(index, f"weight_map -> {file}", "every shard the index names to exist", "missing")
        return tuple(folder / f for f in files)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(source, f"parents.{name}", "a folder holding safetensors weights", str(folder))
    return tuple(files)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
