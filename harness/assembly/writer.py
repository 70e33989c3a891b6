"""A safetensors shard written in place: the header is known before any data (every output tensor's
dtype and shape follow from the parents' headers), so each tensor's bytes go straight to their offset
and no shard is ever held in memory. The writes run on a thread of their own (the next chunk is
computed meanwhile), through a short queue that bounds the memory held; a tensor taken unchanged from
a parent is copied file to file by the kernel (copy_file_range), never through our memory. Files are
checked with safetensors' own reader in the tests."""

from __future__ import annotations

import ctypes
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

from harness.assembly import libc
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
WRITEBACK_BYTES = 64 << 20  # written bytes after which the disk is asked to start writing them out


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
        self._queue: queue.Queue[Callable[[], int] | None] = queue.Queue(maxsize=QUEUED_WRITES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name=f"write {path.name}", daemon=True)
        self._thread.start()

    def write(self, name: str, offset: int, data: bytes | memoryview) -> None:
        """Queue `data` (kept alive until written) for byte `offset` of tensor `name`'s data."""
        self._put(partial(self._pwrite, memoryview(data), self.data_start + self.starts[name] + offset))

    def copy_range(self, name: str, offset: int, fd: int, position: int, length: int) -> None:
        """Queue a copy of `length` bytes of `fd` from `position` (the file stays open until close())."""
        self._put(partial(self._copy, fd, position, self.data_start + self.starts[name] + offset, length))

    def _put(self, task: Callable[[], int]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(task)

    def _pwrite(self, view: memoryview, position: int) -> int:
        """Write all of `view` at `position`; returns its length."""
        length = len(view)
        while view:
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written
        return length

    def _copy(self, fd: int, source: int, target: int, length: int) -> int:
        if not hasattr(os, "copy_file_range"):  # Linux only
            self._copy_through_memory(fd, source, target, length)
            return length
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
        return length

    def _copy_through_memory(self, fd: int, source: int, target: int, length: int) -> None:
        """Where the kernel cannot copy between these files (another file system on an old kernel)."""
        while length:
            data = os.pread(fd, min(COPY_PIECE, length), source)
            if not data:
                raise OSError(f"read nothing at byte {source} (the file is truncated)")
            self._pwrite(memoryview(data), target)
            source, target, length = source + len(data), target + len(data), length - len(data)

    def _drain(self) -> None:
        unflushed = 0
        while (task := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep taking tasks so that write() never blocks on a dead writer
            try:
                unflushed += task()
                if unflushed >= WRITEBACK_BYTES:
                    start_writeback(self.fd)
                    unflushed = 0
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


SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writing out the range's dirty pages, do not wait
_SYNC_FILE_RANGE = libc.function("sync_file_range")
if _SYNC_FILE_RANGE is not None:
    _SYNC_FILE_RANGE.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)


def start_writeback(fd: int) -> bool:
    """Ask the kernel to start writing the file's dirty pages to disk now, without waiting (Linux's
    sync_file_range): the disk writes while the build goes on, and the shard's closing fsync finds
    little left to write (measured: the fsyncs were 1.1-1.3 s of a 4 GB mixed build, the build's thread
    waiting and no reads running). False where the system has no such call: the fsync then writes all."""
    if _SYNC_FILE_RANGE is None:
        return False
    return _SYNC_FILE_RANGE(fd, 0, 0, SYNC_FILE_RANGE_WRITE) == 0
