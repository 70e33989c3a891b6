"""A safetensors shard written in place: the header is known before any data (every output tensor's
dtype and shape follow from the parents' headers), so each tensor's bytes go straight to their offset
and no shard is ever held in memory. The writes run on a thread of their own (the next chunk is
computed meanwhile), through a short queue that bounds the memory held; a tensor taken unchanged from
a parent is copied file to file by the kernel (copy_file_range), never through our memory. Files are
checked with safetensors' own reader in the tests."""

from __future__ import annotations

import errno
import json
import math
import os
import queue
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

from harness.assembly.checkpoint import ITEMSIZES


class TensorSink(Protocol):
    """Where a child's bytes go: a shard on disk, or memory (in_memory.py)."""

    def write(self, name: str, offset: int, data: bytes | memoryview) -> None: ...

    def copy_range(self, name: str, offset: int, fd: int, position: int, length: int) -> None:
        """`length` bytes of the open file `fd` from `position`, for byte `offset` of tensor `name`'s data."""
        ...


class Progress(Protocol):
    def update(self, n: int) -> object: ...


QUEUED_WRITES = 8  # chunks waiting to be written: bounds the memory they hold
COPY_PIECE = 64 << 20  # bytes per copy_file_range call (a copy is queued whole; its pieces are kernel work)


_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}


class ShardWriter:
    def __init__(self, path: Path, tensors: Sequence[tuple[str, str, tuple[int, ...]]]) -> None:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        self.starts: dict[str, int] = {}
        cursor = 0
        for name, dtype, shape in tensors:
            size = math.prod(shape) * ITEMSIZES[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [cursor, cursor + size]}
            self.starts[name] = cursor
            cursor += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((-len(raw)) % 8)  # the format aligns the data to 8 bytes
        self.data_start = 8 + len(raw)
        self.path = path
        self.nbytes = cursor
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.fd, len(raw).to_bytes(8, "little") + raw, 0)
        os.ftruncate(self.fd, self.data_start + cursor)
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=QUEUED_WRITES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name=f"write {path.name}", daemon=True)
        self._thread.start()

    def write(self, name: str, offset: int, data: bytes | memoryview) -> None:
        """Queue `data` (kept alive until written) for byte `offset` of tensor `name`'s data."""
        self._put(partial(self._pwrite, memoryview(data), self.data_start + self.starts[name] + offset))

    def copy_range(self, name: str, offset: int, fd: int, position: int, length: int) -> None:
        """Queue a copy of `length` bytes of `fd` from `position` (the file stays open until close())."""
        self._put(partial(self._copy, fd, position, self.data_start + self.starts[name] + offset, length))

    def _put(self, task: Callable[[], None]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(task)

    def _pwrite(self, view: memoryview, position: int) -> None:
        while view:
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written

    def _copy(self, fd: int, source: int, target: int, length: int) -> None:
        if not hasattr(os, "copy_file_range"):  # Linux only
            self._copy_through_memory(fd, source, target, length)
            return
        end = source + length
        try:
            while source < end:
                copied = os.copy_file_range(fd, self.fd, min(COPY_PIECE, end - source), source, target)
                if not copied:
                    raise OSError(f"copy_file_range copied nothing at byte {source} (the file is truncated)")
                source, target = source + copied, target + copied
        except OSError as err:
            if err.errno not in _NO_COPY_FILE_RANGE:
                raise
            self._copy_through_memory(fd, source, target, end - source)

    def _copy_through_memory(self, fd: int, source: int, target: int, length: int) -> None:
        """Where the kernel cannot copy between these files (another file system on an old kernel)."""
        while length:
            data = os.pread(fd, min(COPY_PIECE, length), source)
            if not data:
                raise OSError(f"read nothing at byte {source} (the file is truncated)")
            self._pwrite(memoryview(data), target)
            source, target, length = source + len(data), target + len(data), length - len(data)

    def _drain(self) -> None:
        while (task := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep taking tasks so that write() never blocks on a dead writer
            try:
                task()
            except BaseException as err:  # raised by the next write() or by close(), never lost
                self._error = err

    def close(self) -> None:
        """Wait for every queued write, make the file durable, and raise what a write raised."""
        self._queue.put(None)
        self._thread.join()
        try:
            if self._error is None:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
        if self._error is not None:
            raise self._error
