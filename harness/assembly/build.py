"""Build a child: one tensor at a time, in row chunks, every parent byte read once, written in place into
shards of a temporary folder that is renamed to the child's name when the last file is written.

Per merged tensor: W = sum_i lambda_i W_i in float32 (FP8 dequantised first, requantised after), and
the distance ||A - B||_F / ((||A||_F + ||B||_F) / 2) between the base A and each other parent B with a
lambda (the largest counts), accumulated over the chunks. A one-hot lambda copies that parent's bytes.
Where the distance does not exceed the recipe's threshold the base's bytes are written over the tensor
(only then is the base read twice). Tensors taken whole from a parent are copied file to file. Memory:
the chunks read ahead (reads.AHEAD_BYTES) and a few float32 chunk buffers, whatever the parents' size.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from harness.assembly.checkpoint import INDEX, Cached, OpenFiles, fsync_dir
from harness.assembly.fp8 import quantize
from harness.assembly.plan import Plan, Unit, make_plan, partial_folder
from harness.assembly.reads import CHUNK_ELEMENTS, DTYPES, Chunk, ReadAhead, Stored, stored_of
from harness.assembly.recipe import Recipe
from harness.assembly.writer import Progress, ShardWriter, TensorSink
from harness.common.atomic_files import write_whole
from harness.common.errors import InputError

SCHEMA_VERSION = 1
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


def build(
    plan: Plan, out: Path, *, resume: bool = False, progress: bool = True, cached: Cached | None = None
) -> AssemblyResult:
    """Build `plan`'s child at `out`; `cached`: the parents' byte ranges already asked of the page cache."""
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
            result.bytes_read += _build_shard(plan, index, partial, bar, cached)
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
    readers = plan.readers(unit)
    return sum(stored_of(plan.parent(p), unit).nbytes for p in readers)


def chunk_reads_of(plan: Plan, unit: Unit) -> list[str]:
    """The parents a unit is read from chunk by chunk ([] where its bytes are copied file to file)."""
    if plan.merging(unit):
        return plan.readers(unit)
    return [] if _same_layout(stored_of(plan.base, unit), unit) else [plan.base.name]


def _build_shard(plan: Plan, index: int, partial: Path, bar: tqdm, cached: Cached | None = None) -> int:
    name = plan.shard_names[index]
    units = plan.shard_units(index)
    tmp = partial / f"{name}.tmp"
    writer = ShardWriter(tmp, [(o.name, o.dtype, o.shape) for u in units for o in u.outputs])
    records: dict[str, dict[str, Any]] = {}
    read = 0
    # the reader closes after the writer: its queued copies read the parents' files
    with Reader(plan, direct=True, cached=cached) as reader:
        reader.expect(plan, units)
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


class Reader:
    """What a build reads with: the parents' files, opened once (with O_DIRECT where `direct`), their
    chunks read ahead across units on reader threads (reads.py), and the float32 work buffers the build's
    thread converts them into, kept from chunk to chunk (a fresh 4 MB buffer per chunk costs a page fault
    per 4 KB, more than the float work itself: measured per pair of 2 MB bf16 chunks, converting and
    mixing took 995 us with the reader threads converting into fresh memory, 824 us converted here)."""

    def __init__(self, plan: Plan, direct: bool = False, cached: Cached | None = None) -> None:
        self.files = OpenFiles(direct, cached)
        self.ahead = ReadAhead(plan, self.files)
        self._buffers: list[torch.Tensor] = []

    def expect(self, plan: Plan, units: Sequence[Unit]) -> None:
        """The units the build writes next, in order: their chunk reads start now, ahead of the work."""
        self.ahead.expect([(u, parents) for u in units if (parents := chunk_reads_of(plan, u))])

    def scratch(self, slot: int, shape: torch.Size) -> torch.Tensor:
        """Float32 work buffer `slot` as a tensor of `shape` (valid until that slot is asked for again)."""
        n = math.prod(shape)
        while len(self._buffers) <= slot:
            self._buffers.append(torch.empty(0, dtype=torch.float32))
        if self._buffers[slot].numel() < n:
            self._buffers[slot] = torch.empty(max(n, CHUNK_ELEMENTS), dtype=torch.float32)
        return self._buffers[slot][:n].view(shape)

    def values(self, plan: Plan, slot: int, chunk: Chunk) -> torch.Tensor:
        """A chunk's values in float32, in work buffer `slot` (FP8: in new memory)."""
        return chunk.values(plan.block, self.scratch(slot, chunk.weight.shape))

    def close(self) -> None:
        self.ahead.close()  # no read in flight before the files close
        self.files.close()
        self._buffers.clear()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raw(
    start: int, weight: torch.Tensor, scale: torch.Tensor | None, block: tuple[int, int]
) -> list[tuple[int, memoryview]]:
    """(byte offset in the tensor, bytes) of rows from `start` as stored: the weight rows and their
    scale rows."""
    parts = [(start * _row_bytes(weight), _bytes(weight))]
    if scale is not None:
        parts.append((start // block[0] * _row_bytes(scale), _bytes(scale)))
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
        return _raw(start, quantised, scale, plan.block)
    converted = values.to(DTYPES[unit.outputs[0].dtype], copy=True)
    return [(start * _row_bytes(converted), _bytes(converted))]


def _write(writer: TensorSink, unit: Unit, parts: list[tuple[int, memoryview]]) -> None:
    for output, (offset, data) in zip(unit.outputs, parts, strict=True):
        writer.write(output.name, offset, data)


def _same_layout(stored: Stored, unit: Unit) -> bool:
    layout = [(stored.weight.dtype, stored.weight.shape)]
    if stored.scale is not None:
        layout.append((stored.scale.dtype, stored.scale.shape))
    return layout == [(o.dtype, o.shape) for o in unit.outputs]


def _copy(plan: Plan, parent: str, unit: Unit, writer: TensorSink, bar: Progress, reader: Reader) -> int:
    """One parent's tensor into the child: its bytes where the layouts agree (copied file to file), else
    converted chunk by chunk."""
    stored = stored_of(plan.parent(parent), unit)
    if _same_layout(stored, unit):
        for output, tensor in zip(unit.outputs, (stored.weight, stored.scale), strict=False):
            assert tensor is not None  # the same layout has a scale where the output has one
            writer.copy_range(output.name, 0, reader.files.fd(tensor.file), tensor.start, tensor.nbytes)
    else:
        for chunks in reader.ahead.chunks(unit, [parent]):
            chunk = chunks[parent]
            _write(writer, unit, _encode(plan, unit, reader.values(plan, 0, chunk), chunk.start))
    bar.update(stored.nbytes)
    return stored.nbytes


def write_unit(plan: Plan, unit: Unit, writer: TensorSink, bar: Progress, reader: Reader) -> tuple[int, dict[str, Any]]:
    lambdas = plan.recipe.lambdas(unit.group)
    record: dict[str, Any] = {"group": unit.group, "lambdas": lambdas, "distance": None, "merged": False}
    if not plan.merging(unit):
        return _copy(plan, plan.base.name, unit, writer, bar, reader), record
    readers = plan.readers(unit)
    one_hot = next((p for p, value in lambdas.items() if value == 1.0), None)
    raw_from = one_hot if one_hot is not None and _same_layout(stored_of(plan.parent(one_hot), unit), unit) else None
    sums = {p: [0.0, 0.0, 0.0] for p in readers[1:]}  # ||A - B||^2, ||A||^2, ||B||^2
    for chunks in reader.ahead.chunks(unit, readers):
        values = {p: reader.values(plan, i, chunks[p]) for i, p in enumerate(readers)}  # changed in place below
        if raw_from is not None:
            raw = chunks[raw_from]
            _write(writer, unit, _raw(raw.start, raw.weight, raw.scale, plan.block))
        else:
            start = chunks[plan.base.name].start
            _write(writer, unit, _encode(plan, unit, _mix(values, lambdas, reader), start))
        _accumulate(sums, values, plan.base.name)  # last: it overwrites the other parents' values
    read = sum(stored_of(plan.parent(p), unit).nbytes for p in readers)
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
