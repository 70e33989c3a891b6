"""A child assembled at load, with no copy of its weights on disk.

Its folder (`harness assemble --at-load`, or a suite's `model: {assemble: RECIPE}`) holds the child's
config, the base's tokenizer and an assembly.json whose `weights` is "assembled at load": every model
consumer reads it as any model folder, and the backends take the weights from `child_tensors`, tensor
by tensor as (name, tensor) pairs in the child's stored layout (vLLM's loader, harness/assembly/
vllm_loader.py, keeps only its parameters; transformers takes the whole state dict)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from harness.assembly.build import (
    AT_LOAD,
    NoBar,
    Reader,
    assembly_record,
    identity_of,
    write_side_files,
    write_unit,
)
from harness.assembly.checkpoint import ITEMSIZES, read_exactly
from harness.assembly.plan import Output, Plan, Unit, make_plan
from harness.assembly.reads import DTYPES
from harness.assembly.recipe import Recipe, load_recipe


class MemoryWriter:
    """ShardWriter's `write` and `copy_range` into one buffer per output tensor."""

    def __init__(self, outputs: Sequence[Output]) -> None:
        self.outputs = outputs
        self.buffers = {o.name: bytearray(math.prod(o.shape) * ITEMSIZES[o.dtype]) for o in outputs}

    def write(self, name: str, offset: int, data: bytes | memoryview) -> None:
        self.buffers[name][offset : offset + len(data)] = data

    def copy_range(self, name: str, offset: int, fd: int, position: int, length: int) -> None:
        if not read_exactly(fd, memoryview(self.buffers[name])[offset : offset + length], position):
            raise OSError(f"{length} bytes from byte {position}: the file is truncated")

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for o in self.outputs:
            buffer = self.buffers[o.name]
            flat = torch.frombuffer(buffer, dtype=DTYPES[o.dtype]) if buffer else torch.empty(0, dtype=DTYPES[o.dtype])
            out[o.name] = flat.reshape(o.shape)
        return out


def unit_tensors(plan: Plan, unit: Unit, reader: Reader) -> dict[str, torch.Tensor]:
    writer = MemoryWriter(unit.outputs)
    write_unit(plan, unit, writer, NoBar(), reader)
    return writer.tensors()


def child_tensors(plan: Plan) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the child, one unit at a time, in the base's storage order."""
    with Reader(plan) as reader:
        reader.expect(plan, plan.units)
        for unit in plan.units:
            yield from unit_tensors(plan, unit, reader).items()


def plan_from(recipe: str | Path, overrides: Sequence[str] = ()) -> Plan:
    return make_plan(load_recipe(recipe, overrides), recipe)


def write_child_folder(plan: Plan, folder: Path) -> Path:
    """The child's folder without weights (a few files): what a backend needs to assemble it at load."""
    folder.mkdir(parents=True, exist_ok=True)
    write_side_files(plan, folder, assembly_record(plan, identity_of(plan), None))
    return folder


def cached_child_folder(plan: Plan) -> Path:
    """The weightless folder of a child assembled at load, under the temp folder, keyed by its recipe and
    its parents' identity (the same child reuses its folder)."""
    import hashlib
    import tempfile

    key = hashlib.sha256(json.dumps(identity_of(plan), sort_keys=True).encode()).hexdigest()[:16]
    return write_child_folder(plan, Path(tempfile.gettempdir()) / "mote-children" / key)


def assembled_at_load(folder: Path) -> bool:
    record = folder / "assembly.json"
    return record.is_file() and json.loads(record.read_text(encoding="utf-8")).get("weights") == AT_LOAD


def plan_of_child(folder: Path) -> Plan:
    """The plan of a child folder's recipe (parents as absolute paths), checked against the parents again."""
    record = json.loads((folder / "assembly.json").read_text(encoding="utf-8"))
    return make_plan(Recipe.model_validate(record["recipe"]), folder / "assembly.json")
