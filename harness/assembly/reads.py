"""Reading the parents: each tensor in chunks of rows, the chunks of a whole shard's tensors read ahead of
the work on reader threads, across tensor boundaries.

Expert tensors are small (DeepSeek-V3: 14 MB each, 2-4 chunks): read ahead within one tensor only, the
disk waited at every tensor's start. A build tells `ReadAhead` which tensors it will read, in order;
their chunks are then read up to AHEAD_BYTES ahead on reader threads. A build written to disk reads
with O_DIRECT (`OpenFiles`): the disk fills our buffers with no copy through the page cache, each read
blocks its thread in the disk, and eight of them in flight keep the disk busy (measured on 2 cores, a
mixed child of two 4 GB parents: the build's thread waited 2.4-3.6 s for chunks with two readers, 0.9-1.8 s
with eight). Read through the page cache instead (a child assembled at load, where repeated loads find
the parents cached), the kernel is asked for each chunk (WILLNEED) as it is queued, so the disk works
on the whole window at once (measured on a virtual disk, reading two parents' shards interleaved in
2 MB chunks: 1.5-1.8 s with the window advised, 1.2-5.9 s without, 3.7-5.4 s with whole files advised
at once), and two readers do best (a mixed child of two 4 GB parents assembled in memory: 5.4-5.8 s
from a dropped cache and 3.2-3.3 s from a warm one with two readers, 6.0-6.1 s and 3.7-4.3 s with
eight). A read the build asks for out of that order (the base re-read where the distance is under the
threshold) is read there and then.
"""

from __future__ import annotations

import errno
import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from harness.assembly.checkpoint import Checkpoint, OpenFiles, TensorInfo, read_exactly
from harness.assembly.fp8 import dequantize
from harness.assembly.plan import FP8_NAMES, Plan, Unit
from harness.common.errors import InputError

# safetensors dtype names -> torch dtypes
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CHUNK_ELEMENTS = 1 << 20  # values per parent per chunk: 4 MB in float32 (a chunk's float buffers are reused)
AHEAD_BYTES = 64 << 20  # bytes of chunks read ahead of the work (their buffers are the memory this holds)
READERS = 2  # reader threads through the page cache: the kernel reads ahead (WILLNEED), two requests keep it busy
DIRECT_READERS = 8  # reader threads with O_DIRECT: each read blocks its thread in the disk, so several keep it busy


@dataclass(frozen=True)
class Stored:
    """One parent's tensor of a unit as stored, with its FP8 block scale where it has one."""

    weight: TensorInfo
    scale: TensorInfo | None

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + (self.scale.nbytes if self.scale else 0)


def stored_of(parent: Checkpoint, unit: Unit) -> Stored:
    weight = parent.tensors[unit.name]
    scale = parent.tensors.get(unit.name + "_scale_inv") if weight.dtype in FP8_NAMES else None
    return Stored(weight, scale)


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of one parent's tensor as stored (and their FP8 block-scale rows), in memory
    of their own."""

    start: int
    weight: torch.Tensor
    scale: torch.Tensor | None

    def values(self, block: tuple[int, int], out: torch.Tensor) -> torch.Tensor:
        """The rows in float32 (FP8 dequantised): in `out` (a work buffer of the chunk's shape) where
        they are converted, else in new memory."""
        if self.scale is not None:
            return dequantize(self.weight, self.scale, block)
        return out.copy_(self.weight)


def row_spans(plan: Plan, unit: Unit, parents: Sequence[str]) -> Iterator[tuple[int, int]]:
    """The [start, stop) row ranges a unit is read in (on FP8 block rows where a parent is FP8)."""
    info = plan.base.tensors[unit.name]
    step = max(1, CHUNK_ELEMENTS // max(1, info.row_elements))
    if any(plan.parent(p).tensors[unit.name].dtype in FP8_NAMES for p in parents):
        step = max(plan.block[0], step // plan.block[0] * plan.block[0])  # chunks start on a block row
    for start in range(0, info.rows, step):
        yield start, min(info.rows, start + step)


def read_rows(tensor: TensorInfo, start: int, stop: int, files: OpenFiles) -> torch.Tensor:
    """Rows [start, stop) (the first dimension) of a stored tensor, in its dtype, read into new memory."""
    nbytes = (stop - start) * tensor.row_bytes()
    shape = (stop - start, *tensor.shape[1:]) if tensor.shape else ()
    raw = read_bytes(files, tensor, tensor.start + start * tensor.row_bytes(), nbytes)
    if raw.storage_offset() % tensor.itemsize:  # the file's data is not aligned to its dtype
        raw = raw.clone()
    return raw.view(DTYPES[tensor.dtype]).reshape(shape)


def read_bytes(files: OpenFiles, tensor: TensorInfo, position: int, nbytes: int) -> torch.Tensor:
    """Bytes [position, position + nbytes) of a tensor's file, in new memory: read with O_DIRECT where
    `files` reads so (the aligned range around them, into an aligned buffer), else through the cache."""
    fd, align = files.reading(tensor.file, position, nbytes)
    lead = position % align
    length = -(-(lead + nbytes) // align) * align
    base = torch.empty(length + align - 1, dtype=torch.uint8)
    skip = -base.data_ptr() % align
    buffer = base[skip : skip + length]
    try:
        complete = read_exactly(fd, buffer.numpy().data, position - lead, need=lead + nbytes)
    except OSError as err:
        if align == 1 or err.errno != errno.EINVAL:
            raise
        files.read_through_cache(tensor.file)  # this file system refuses O_DIRECT reads after all
        return read_bytes(files, tensor, position, nbytes)
    if not complete:
        raise InputError(tensor.file, tensor.name, f"{tensor.nbytes} bytes of data (the file is truncated)")
    return buffer[lead : lead + nbytes]


def read_chunk(stored: Stored, rows: tuple[int, int], block: tuple[int, int], files: OpenFiles) -> Chunk:
    """A chunk as stored (the build's thread converts it into its float32 work buffers: `Reader.values`)."""
    start, stop = rows
    scale = None
    if stored.scale is not None:
        scale = read_rows(stored.scale, start // block[0], math.ceil(stop / block[0]), files)
    return Chunk(start, read_rows(stored.weight, start, stop, files), scale)


@dataclass(frozen=True)
class _Read:
    unit: str
    parents: tuple[str, ...]
    rows: tuple[int, int]


class ReadAhead:
    """The chunks of the units a build will read, in its order, read ahead on reader threads."""

    def __init__(self, plan: Plan, files: OpenFiles) -> None:
        self.plan = plan
        self.files = files
        readers = DIRECT_READERS if files.direct else READERS
        self._pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="assembly read")
        # the read-ahead advice (the kernel allocates and queues the pages in the caller: 1.6 s of a
        # mixed 4 GB build's thread when given there) goes out in order on a thread of its own
        self._advice = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assembly advice")
        self._planned: Iterator[tuple[_Read, dict[str, Stored], int]] = iter(())
        self._pending: deque[tuple[_Read, Future[dict[str, Chunk]], int]] = deque()
        self._queued = 0  # bytes read or being read, not yet taken

    def expect(self, reads: Sequence[tuple[Unit, Sequence[str]]]) -> None:
        """The units (with the parents each is read from) the build reads next, in order."""
        self._planned = self._plan(reads)
        self._fill()

    def chunks(self, unit: Unit, parents: Sequence[str]) -> Iterator[dict[str, Chunk]]:
        """Every parent's chunks of one unit, in row order: read ahead where expected, else here."""
        stored = {p: stored_of(self.plan.parent(p), unit) for p in parents}
        for rows in row_spans(self.plan, unit, parents):
            read = _Read(unit.name, tuple(parents), rows)
            if self._pending and self._pending[0][0] == read:
                _, future, nbytes = self._pending.popleft()
                self._queued -= nbytes
                self._fill()
                yield future.result()
            else:
                yield self._read(stored, rows)

    def close(self) -> None:
        self._planned = iter(())
        self._advice.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def _plan(self, reads: Sequence[tuple[Unit, Sequence[str]]]) -> Iterator[tuple[_Read, dict[str, Stored], int]]:
        for unit, parents in reads:
            stored = {p: stored_of(self.plan.parent(p), unit) for p in parents}
            for rows in row_spans(self.plan, unit, parents):
                nbytes = sum(s.weight.row_bytes() * (rows[1] - rows[0]) for s in stored.values())
                yield _Read(unit.name, tuple(parents), rows), stored, nbytes

    def _fill(self) -> None:
        while self._queued < AHEAD_BYTES:
            planned = next(self._planned, None)
            if planned is None:
                return
            read, stored, nbytes = planned
            if not self.files.direct:  # the kernel reads the queue's far end in the background meanwhile
                for s in stored.values():
                    self._advice.submit(self.files.will_need, s.weight, *read.rows)
            self._pending.append((read, self._pool.submit(self._read, stored, read.rows), nbytes))
            self._queued += nbytes

    def _read(self, stored: dict[str, Stored], rows: tuple[int, int]) -> dict[str, Chunk]:
        return {p: read_chunk(s, rows, self.plan.block, self.files) for p, s in stored.items()}
