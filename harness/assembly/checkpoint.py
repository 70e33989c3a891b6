"""A parent checkpoint as stored: its safetensors shards, each tensor's dtype, shape and byte range.

Tensors are read by row ranges, each range mapped on its own (`OpenFiles.map_range`) and unmapped
when its last view is gone: the values are read where the kernel put them, with no copy into our
memory (a positioned read copies every byte once more: 18% of a mixed build's CPU time, measured),
and only the ranges in use count in the process's resident memory. safetensors' own `safe_open` maps
each whole file instead, and every page a read touches then stays resident until the file is closed:
a whole R1 embedding (1.8 GB) would sit there. The safetensors format is an 8-byte header length, a
JSON header ({name: {dtype, shape, data_offsets}}) and the raw data, so reading it directly is short;
the tests check every file we write with `safe_open`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import math
import mmap
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


class OpenFiles:
    """The parents' files a build reads, each opened once and read by position (threads share them)."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()  # reader threads open files too

    def fd(self, path: Path) -> int:
        with self._lock:
            if path not in self._fds:
                self._fds[path] = fd = os.open(path, os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):  # Linux; elsewhere the default read-ahead
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a larger read-ahead window
            return self._fds[path]

    def will_need(self, tensor: TensorInfo, start: int, stop: int) -> None:
        """Ask the kernel to start reading rows [start, stop) of a tensor now, in the background (into its
        page cache, not our memory)."""
        if hasattr(os, "posix_fadvise") and stop > start:  # (a length of 0 would mean: to the file's end)
            row, fd = tensor.row_bytes(), self.fd(tensor.file)
            os.posix_fadvise(fd, tensor.start + start * row, (stop - start) * row, os.POSIX_FADV_WILLNEED)

    def map_range(self, tensor: TensorInfo, position: int, nbytes: int) -> tuple[mmap.mmap, int]:
        """Bytes [position, position + nbytes) of a tensor's file (nbytes > 0), mapped and read in (this
        call waits for the disk; the pages are then in memory and mapped, so no access faults): the map,
        and where the range starts in it. The map is private and copy-on-write: writing to it never
        reaches the file. It is unmapped when the map and every view of it are gone."""
        start = position - position % mmap.ALLOCATIONGRANULARITY
        try:
            mapped = mmap.mmap(self.fd(tensor.file), position + nbytes - start, access=mmap.ACCESS_COPY, offset=start)
        except ValueError as err:  # the range runs past the file's end
            raise InputError(tensor.file, tensor.name, f"{nbytes} bytes of data (the file is truncated)") from err
        populate(mapped)
        return mapped, position - start

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> OpenFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MADV_POPULATE_READ = 22  # Linux 5.14+: read a mapped range in and map its pages, in one call
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if os.name == "posix" else None


def populate(mapped: mmap.mmap) -> bool:
    """Read a map's pages in and map them now (the calling thread waits for the disk, without the GIL),
    so that the work reading them later takes no page fault. False where the system cannot (an older
    kernel, not Linux): the pages are then read in as they are first touched."""
    if _LIBC is None or not hasattr(_LIBC, "madvise"):
        return False
    address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))  # the buffer export ends with the line
    return _LIBC.madvise(ctypes.c_void_p(address), ctypes.c_size_t(len(mapped)), MADV_POPULATE_READ) == 0


def read_exactly(fd: int, view: memoryview, position: int) -> bool:
    """Fill `view` from byte `position` of `fd`; False where the file ends first."""
    got = 0
    while got < len(view):
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
