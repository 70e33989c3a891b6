"""Build a child: one tensor at a time, in row chunks, every parent byte read once, written in place into
shards of a temporary folder that is renamed to the child's name when the last file is written.

Per merged tensor: W = sum_i lambda_i W_i in float32 (FP8 dequantised first, requantised after), and
the distance ||A - B||_F / ((||A||_F + ||B||_F) / 2) between the base A and each other parent B with a
lambda (the largest counts), accumulated over the chunks. A one-hot lambda copies that parent's bytes.
Where the distance does not exceed the recipe's threshold the base's bytes are written over the tensor
(only then is the base read twice). Memory: a few chunks of CHUNK_ELEMENTS values per parent.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from harness.assembly.checkpoint import DTYPES, INDEX, Checkpoint, OpenFiles, TensorInfo, fsync_dir
from harness.assembly.fp8 import dequantize, quantize
from harness.assembly.plan import FP8_NAMES, Plan, Unit, make_plan
from harness.assembly.recipe import Recipe
from harness.assembly.writer import Progress, ShardWriter, TensorSink
from harness.common.atomic_files import write_whole
from harness.common.errors import InputError

SCHEMA_VERSION = 1
CHUNK_ELEMENTS = 1 << 20  # values per parent per chunk: 4 MB in float32 (under glibc's mmap threshold: buffers are
# reused instead of page-faulted in; 64 MB chunks made the float work 2-5x slower per byte)
PREFETCH = 4  # chunks read ahead: smooths a disk that delivers in bursts
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
SKIPPED_FILES = {INDEX, "config.json", "assembly.json"}
AT_LOAD = "assembled at load"  # assembly.json's `weights` of a child folder that holds no weights


@dataclass
class AssemblyResult:
    out: Path
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    resumed_shards: int = 0

    @property
    def merged(self) -> int:
        return sum(r["merged"] for r in self.tensors.values())


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1)
    write_whole(path, lambda sink: sink.write(text.encode("utf-8")))


def partial_folder(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def assemble(
    recipe: Recipe, out: Path, *, source: str | Path = "recipe", resume: bool = False, progress: bool = True
) -> AssemblyResult:
    """Build the child of `recipe` at `out` (which must not exist). With `resume`, an unfinished build of
    the same recipe and parents keeps the shards it finished."""
    out = Path(out)
    if out.exists():
        raise InputError("--out", "--out", "a folder that does not exist yet (a child is written whole)", str(out))
    plan = make_plan(recipe, source)
    return build(plan, out, resume=resume, progress=progress)


def build(plan: Plan, out: Path, *, resume: bool = False, progress: bool = True) -> AssemblyResult:
    started = time.perf_counter()
    partial = partial_folder(out)
    identity = identity_of(plan)
    _prepare(partial, identity, resume)
    result = AssemblyResult(out)
    todo = [i for i, name in enumerate(plan.shard_names) if not _finished(partial, name)]
    result.resumed_shards = len(plan.shard_names) - len(todo)
    total = sum(_read_bytes(plan, u) for i in todo for u in plan.shard_units(i))
    with tqdm(total=total, unit="B", unit_scale=True, desc="assemble", disable=not progress) as bar:
        for index in todo:
            result.bytes_read += _build_shard(plan, index, partial, bar)
    for name in plan.shard_names:
        result.tensors.update(json.loads((partial / "records" / f"{name}.json").read_text(encoding="utf-8")))
    result.bytes_written = sum((partial / n).stat().st_size for n in plan.shard_names)
    _finish(plan, partial, identity, result)
    partial.rename(out)
    fsync_dir(out.parent)
    result.seconds = time.perf_counter() - started
    return result


def _prepare(partial: Path, identity: dict[str, Any], resume: bool) -> None:
    plan_file = partial / "plan.json"
    if partial.exists():
        if not resume:
            raise InputError(
                "--out", "--out", f"no unfinished build at {partial}: pass --resume to finish it, or remove it"
            )
        if not plan_file.is_file() or json.loads(plan_file.read_text(encoding="utf-8")) != identity:
            raise InputError(
                plan_file, "recipe", f"the recipe and parents of the unfinished build; remove {partial} to start over"
            )
        return
    (partial / "records").mkdir(parents=True)
    _write_json(plan_file, identity)


def _finished(partial: Path, shard: str) -> bool:
    return (partial / shard).is_file() and (partial / "records" / f"{shard}.json").is_file()


def _read_bytes(plan: Plan, unit: Unit) -> int:
    if not plan.merging(unit):
        return plan.stored_bytes(unit)
    readers = _readers(plan, unit)
    return sum(_stored(plan.parent(p), unit).nbytes for p in readers)


def _readers(plan: Plan, unit: Unit) -> list[str]:
    """The base (for the distance) and every parent with a lambda on this unit's group."""
    lambdas = plan.recipe.lambdas(unit.group)
    return [plan.base.name, *(p for p, value in lambdas.items() if value > 0 and p != plan.base.name)]


@dataclass(frozen=True)
class _Stored:
    weight: TensorInfo
    scale: TensorInfo | None

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + (self.scale.nbytes if self.scale else 0)


def _stored(parent: Checkpoint, unit: Unit) -> _Stored:
    weight = parent.tensors[unit.name]
    scale = parent.tensors.get(unit.name + "_scale_inv") if weight.dtype in FP8_NAMES else None
    return _Stored(weight, scale)


def _build_shard(plan: Plan, index: int, partial: Path, bar: tqdm) -> int:
    name = plan.shard_names[index]
    units = plan.shard_units(index)
    tmp = partial / f"{name}.tmp"
    writer = ShardWriter(tmp, [(o.name, o.dtype, o.shape) for u in units for o in u.outputs])
    records: dict[str, dict[str, Any]] = {}
    read = 0
    with Reader() as reader:  # closed after the writer: its queued copies read the parents' files
        try:
            for unit in units:
                unit_read, record = write_unit(plan, unit, writer, bar, reader)
                read += unit_read
                for output in unit.outputs:
                    records[output.name] = {**record, "dtype": output.dtype}
        finally:
            writer.close()
    _write_json(partial / "records" / f"{name}.json", records)
    tmp.rename(partial / name)
    return read


def _chunks(plan: Plan, unit: Unit, parents: list[str]) -> Iterator[tuple[int, int]]:
    info = plan.base.tensors[unit.name]
    step = max(1, CHUNK_ELEMENTS // max(1, info.row_elements))
    if any(plan.parent(p).tensors[unit.name].dtype in FP8_NAMES for p in parents):
        step = max(plan.block[0], step // plan.block[0] * plan.block[0])  # chunks start on a block row
    for start in range(0, info.rows, step):
        yield start, min(info.rows, start + step)


@dataclass(frozen=True)
class _Chunk:
    """Rows [start, stop) of one parent's tensor as stored (and their FP8 block-scale rows)."""

    start: int
    weight: torch.Tensor
    scale: torch.Tensor | None


class Reader:
    """What a build reads with: the parents' files, opened once, and float32 work buffers kept from
    chunk to chunk (a fresh 4 MB buffer per chunk costs a page fault per 4 KB, more than the float
    work itself)."""

    def __init__(self) -> None:
        self.files = OpenFiles()
        self._buffers: list[torch.Tensor] = []

    def scratch(self, slot: int, shape: torch.Size) -> torch.Tensor:
        """Float32 work buffer `slot` as a tensor of `shape` (valid until that slot is asked for again)."""
        n = math.prod(shape)
        while len(self._buffers) <= slot:
            self._buffers.append(torch.empty(0, dtype=torch.float32))
        if self._buffers[slot].numel() < n:
            self._buffers[slot] = torch.empty(max(n, CHUNK_ELEMENTS), dtype=torch.float32)
        return self._buffers[slot][:n].view(shape)

    def floats(self, slot: int, chunk: _Chunk, block: tuple[int, int]) -> torch.Tensor:
        """The chunk's values in float32, in its shape, in work buffer `slot`."""
        values = self.scratch(slot, chunk.weight.shape)
        values.copy_(chunk.weight if chunk.scale is None else dequantize(chunk.weight, chunk.scale, block))
        return values

    def close(self) -> None:
        self.files.close()
        self._buffers.clear()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(stored: _Stored, start: int, stop: int, block: tuple[int, int], files: OpenFiles) -> _Chunk:
    scale = None
    if stored.scale is not None:
        scale = stored.scale.read_rows(start // block[0], math.ceil(stop / block[0]), files)
    return _Chunk(start, stored.weight.read_rows(start, stop, files), scale)


def _raw(chunk: _Chunk, block: tuple[int, int]) -> list[tuple[int, memoryview]]:
    """(byte offset in the tensor, bytes) of a chunk as stored: the weight rows and their scale rows."""
    parts = [(chunk.start * _row_bytes(chunk.weight), _bytes(chunk.weight))]
    if chunk.scale is not None:
        parts.append((chunk.start // block[0] * _row_bytes(chunk.scale), _bytes(chunk.scale)))
    return parts


def _row_bytes(tensor: torch.Tensor) -> int:
    return math.prod(tensor.shape[1:]) * tensor.element_size()


def _bytes(tensor: torch.Tensor) -> memoryview:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data


def _encode(plan: Plan, unit: Unit, values: torch.Tensor, start: int) -> list[tuple[int, memoryview]]:
    """Float32 rows starting at `start` in the child's layout: (byte offset, bytes) per output tensor, in
    memory of their own (the values may sit in a work buffer that the next chunk reuses)."""
    if len(unit.outputs) == 2:  # FP8 with its block scale
        quantised, scale = quantize(values, plan.block, DTYPES[unit.outputs[1].dtype])
        return _raw(_Chunk(start, quantised, scale), plan.block)
    converted = values.to(DTYPES[unit.outputs[0].dtype], copy=True)
    return [(start * _row_bytes(converted), _bytes(converted))]


def _write(writer: TensorSink, unit: Unit, parts: list[tuple[int, memoryview]]) -> None:
    for output, (offset, data) in zip(unit.outputs, parts, strict=True):
        writer.write(output.name, offset, data)


def _same_layout(stored: _Stored, unit: Unit) -> bool:
    layout = [(stored.weight.dtype, stored.weight.shape)]
    if stored.scale is not None:
        layout.append((stored.scale.dtype, stored.scale.shape))
    return layout == [(o.dtype, o.shape) for o in unit.outputs]


def _chunk_reads(plan: Plan, unit: Unit, parents: list[str], files: OpenFiles) -> Iterator[dict[str, _Chunk]]:
    """Every parent's chunks of one tensor, read up to PREFETCH chunks ahead of the caller's work (and
    the whole tensor asked of the disk at once: the kernel reads it in the background meanwhile)."""
    stored = {p: _stored(plan.parent(p), unit) for p in parents}
    for s in stored.values():
        for tensor in (s.weight, s.scale):
            if tensor is not None:
                files.will_need(tensor)

    def read(rows: tuple[int, int]) -> dict[str, _Chunk]:
        return {p: _read(s, rows[0], rows[1], plan.block, files) for p, s in stored.items()}

    spans = iter(_chunks(plan, unit, parents))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = deque(pool.submit(read, rows) for rows in itertools.islice(spans, PREFETCH))
        while pending:
            chunks = pending.popleft().result()
            following = next(spans, None)
            if following is not None:
                pending.append(pool.submit(read, following))
            yield chunks


def _copy(plan: Plan, parent: str, unit: Unit, writer: TensorSink, bar: Progress, reader: Reader) -> int:
    """One parent's tensor into the child: its bytes where the layouts agree (copied file to file), else
    converted chunk by chunk."""
    stored = _stored(plan.parent(parent), unit)
    if _same_layout(stored, unit):
        for output, tensor in zip(unit.outputs, (stored.weight, stored.scale), strict=False):
            assert tensor is not None  # the same layout has a scale where the output has one
            writer.copy_range(output.name, 0, reader.files.fd(tensor.file), tensor.start, tensor.nbytes)
    else:
        for chunks in _chunk_reads(plan, unit, [parent], reader.files):
            chunk = chunks[parent]
            _write(writer, unit, _encode(plan, unit, reader.floats(0, chunk, plan.block), chunk.start))
    bar.update(stored.nbytes)
    return stored.nbytes


def write_unit(plan: Plan, unit: Unit, writer: TensorSink, bar: Progress, reader: Reader) -> tuple[int, dict[str, Any]]:
    lambdas = plan.recipe.lambdas(unit.group)
    record: dict[str, Any] = {"group": unit.group, "lambdas": lambdas, "distance": None, "merged": False}
    if not plan.merging(unit):
        return _copy(plan, plan.base.name, unit, writer, bar, reader), record
    readers = _readers(plan, unit)
    one_hot = next((p for p, value in lambdas.items() if value == 1.0), None)
    raw_from = one_hot if one_hot is not None and _same_layout(_stored(plan.parent(one_hot), unit), unit) else None
    sums = {p: [0.0, 0.0, 0.0] for p in readers[1:]}  # ||A - B||^2, ||A||^2, ||B||^2
    for chunks in _chunk_reads(plan, unit, readers, reader.files):
        values = {p: reader.floats(slot, chunks[p], plan.block) for slot, p in enumerate(readers)}
        if raw_from is not None:
            _write(writer, unit, _raw(chunks[raw_from], plan.block))
        else:
            start = chunks[plan.base.name].start
            _write(writer, unit, _encode(plan, unit, _mix(values, lambdas, reader), start))
        _accumulate(sums, values, plan.base.name)  # last: it overwrites the other parents' values
    read = sum(_stored(plan.parent(p), unit).nbytes for p in readers)
    bar.update(read)
    record["distance"] = max(_distance(*sums[p]) for p in sums)
    if record["distance"] > plan.recipe.threshold:
        record["merged"] = True
    else:  # the parents are this close: the base's tensor stands
        read += _copy(plan, plan.base.name, unit, writer, NoBar(), reader)
    return read, record


def _accumulate(sums: dict[str, list[float]], values: dict[str, torch.Tensor], base: str) -> None:
    """Squared norms for the distance, in float32 dot products (BLAS: blocked sums) added up in float64:
    the difference is taken first, so near-identical tensors keep their small distance. Each other
    parent's values are replaced by their difference to the base (no new memory)."""
    a = values[base].reshape(-1)
    a2 = float(torch.dot(a, a))
    for p, total in sums.items():
        b = values[p].reshape(-1)  # views: the work buffers are contiguous
        total[1] += a2
        total[2] += float(torch.dot(b, b))
        d = b.sub_(a)
        total[0] += float(torch.dot(d, d))


def _mix(values: dict[str, torch.Tensor], lambdas: dict[str, float], reader: Reader) -> torch.Tensor:
    """sum_i lambda_i W_i in float32 (lambda 0.5 between two: their mean, exactly), in the chunk's shape,
    in a work buffer after the parents' (each product rounded, then added, as written)."""
    terms = [(lambdas[p], v) for p, v in values.items() if lambdas[p] > 0]
    shape = terms[0][1].shape
    mixed, term = (reader.scratch(len(values) + i, shape) for i in range(2))
    torch.mul(terms[0][1], terms[0][0], out=mixed)
    for weight, value in terms[1:]:
        mixed.add_(torch.mul(value, weight, out=term))
    return mixed


def _distance(diff2: float, a2: float, b2: float) -> float:
    mean_norm = (math.sqrt(a2) + math.sqrt(b2)) / 2
    return 0.0 if mean_norm == 0 else math.sqrt(diff2) / mean_norm


class NoBar:
    def update(self, n: int) -> None:
        pass


def child_config(plan: Plan) -> dict[str, Any]:
    """The base's config, without its quantization config where the child is written in bf16 or fp32."""
    config = dict(plan.base.config)
    if plan.recipe.dtype != "auto":
        config.pop("quantization_config", None)
        for key in [k for k in ("torch_dtype", "dtype") if k in config] or ["dtype"]:
            config[key] = plan.recipe.dtype
    return config


def write_side_files(plan: Plan, folder: Path, assembly: dict[str, Any]) -> None:
    """config.json, assembly.json and the base's other files (tokenizer, generation config, code)."""
    _write_json(folder / "config.json", child_config(plan))
    for path in sorted(plan.base.folder.iterdir()):
        if path.is_file() and path.name not in SKIPPED_FILES and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(path, folder / path.name)
    _write_json(folder / "assembly.json", assembly)


def assembly_record(plan: Plan, identity: dict[str, Any], tensors: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "recipe": identity["recipe"],
        "recipe_fingerprint": plan.recipe.fingerprint(),
        "parents": identity["parents"],
        "groups": plan.placement(),
        "weights": "stored" if tensors is not None else AT_LOAD,
        "tensors": tensors or {},
    }


def identity_of(plan: Plan) -> dict[str, Any]:
    return {"recipe": plan.recipe.model_dump(mode="json"), "parents": [p.identity() for p in plan.parents]}


def _finish(plan: Plan, partial: Path, identity: dict[str, Any], result: AssemblyResult) -> None:
    """Index, config, the base's other files, assembly.json; the build's own bookkeeping removed."""
    weight_map = {name: plan.shard_names[u.shard] for u in plan.units for name in (o.name for o in u.outputs)}
    index = {"metadata": {"total_size": result.bytes_written}, "weight_map": weight_map}
    _write_json(partial / INDEX, index)
    write_side_files(plan, partial, assembly_record(plan, identity, result.tensors))
    shutil.rmtree(partial / "records")
    (partial / "plan.json").unlink()
