"""The plan of a child: every stored tensor placed in a group, what the child stores for it, and which
shard it goes to. Made from the parents' headers alone and checked before anything is written: parents
of another architecture or config, a tensor missing from a parent or of another shape, a shard the index
names that is not there, a tensor no group rule places."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from harness.assembly.checkpoint import Cached, Checkpoint, OpenFiles, TensorInfo
from harness.assembly.groups import GROUPS, group_of, weight_of
from harness.assembly.recipe import Recipe
from harness.common.errors import InputError

# config keys that say nothing about the architecture (a child may join parents that differ in them)
IGNORED_CONFIG_KEYS = frozenset(
    {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "quantization_config", "use_cache"}
)
FP8_NAMES = ("F8_E4M3", "F8_E5M2")
TARGET = {"bfloat16": "BF16", "float32": "F32"}


@dataclass(frozen=True)
class Output:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Unit:
    """One tensor (with its FP8 block scale, when it has one) and what the child stores for it."""

    name: str
    group: str
    scale: str | None  # the base's `weight_scale_inv` stored with this weight
    outputs: tuple[Output, ...]
    shard: int


def partial_folder(out: Path) -> Path:
    """Where a child is built before it is renamed to `out`."""
    return out.with_name(out.name + ".partial")


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    parents: tuple[Checkpoint, ...]  # the base first
    units: tuple[Unit, ...]
    shard_names: tuple[str, ...]
    block: tuple[int, int]

    @property
    def base(self) -> Checkpoint:
        return self.parents[0]

    def parent(self, name: str) -> Checkpoint:
        return next(p for p in self.parents if p.name == name)

    def merging(self, unit: Unit) -> bool:
        info = self.base.tensors[unit.name]
        return info.is_float and unit.group in self._merged

    def shard_units(self, index: int) -> list[Unit]:
        return self._by_shard.get(index, [])

    def readers(self, unit: Unit) -> list[str]:
        """The parents a unit is read from: the base (for the distance, or as the tensor kept) and, where
        it is merged, every parent with a lambda on its group."""
        if not self.merging(unit):
            return [self.base.name]
        lambdas = self.recipe.lambdas(unit.group)
        return [self.base.name, *(p for p, value in lambdas.items() if value > 0 and p != self.base.name)]

    def start_reading(self, shards: list[int], budget: int) -> Cached:
        """Ask the kernel for the first `budget` bytes the build of `shards` reads, in its order (into its
        page cache, not our memory): the disk works while the build's own modules (torch) load. Returns
        the byte ranges asked for, which the build then reads through the cache (`OpenFiles`)."""
        asked: Cached = {}
        left = budget
        with OpenFiles() as files:
            for unit in (u for i in shards for u in self.shard_units(i)):
                for name in self.readers(unit):
                    if left <= 0:
                        return asked
                    tensor = self.parent(name).tensors[unit.name]
                    rows = min(tensor.rows, max(1, left // max(1, tensor.row_bytes())))
                    nbytes = rows * tensor.row_bytes()
                    files.will_need(tensor, 0, rows)
                    asked.setdefault(tensor.file, []).append((tensor.start, tensor.start + nbytes))
                    left -= nbytes
        return asked

    @cached_property
    def _by_shard(self) -> dict[int, list[Unit]]:
        by_shard: dict[int, list[Unit]] = {}
        for unit in self.units:
            by_shard.setdefault(unit.shard, []).append(unit)
        return by_shard

    @cached_property
    def _merged(self) -> frozenset[str]:
        return frozenset(self.recipe.merged_groups())

    def stored_bytes(self, unit: Unit) -> int:
        scale = self.base.tensors[unit.scale].nbytes if unit.scale else 0
        return self.base.tensors[unit.name].nbytes + scale

    def placement(self) -> list[dict[str, Any]]:
        """Per group: tensors, stored bytes, every parent's lambda, merged or kept (the printed table)."""
        merged = self.recipe.merged_groups()
        rows = []
        for group in GROUPS:
            units = [u for u in self.units if u.group == group]
            if not units:
                continue
            rows.append(
                {
                    "group": group,
                    "tensors": sum(1 + (u.scale is not None) for u in units),
                    "bytes": sum(self.stored_bytes(u) for u in units),
                    "lambdas": self.recipe.lambdas(group),
                    "action": "merge" if group in merged else "keep",
                }
            )
        return rows


def make_plan(recipe: Recipe, source: str | Path) -> Plan:
    parents = tuple(Checkpoint.open(name, Path(folder), str(source)) for name, folder in recipe.parents.items())
    base = parents[0]
    for other in parents[1:]:
        _same_config(base, other, source)
        _same_tensors(base, other)
    block = tuple(base.config.get("quantization_config", {}).get("weight_block_size", (128, 128)))
    scales = _fp8_scales(base)
    units = []
    shard_of = {shard: i for i, shard in enumerate(base.shards)}
    for name, info in base.tensors.items():
        if name in scales.values():
            continue
        group = group_of(name)
        if group is None:
            raise InputError(
                info.file,
                name,
                f"a tensor that a group rule places (groups: {list(GROUPS)}; rules in harness/assembly/groups.py)",
            )
        scale = scales.get(name)
        unit = Unit(name, group, scale, _outputs(base, name, scale, recipe), shard_of[info.file])
        units.append(unit)
    n = len(base.shards)
    plan = Plan(
        recipe,
        parents,
        tuple(units),
        tuple(f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)),
        (int(block[0]), int(block[1])),
    )
    for unit in plan.units:
        if plan.merging(unit):
            for parent in plan.parents:
                _mergeable(parent, unit, plan.block)
    return plan


def _same_config(base: Checkpoint, other: Checkpoint, source: str | Path) -> None:
    def arch(parent: Checkpoint) -> tuple[Any, Any]:
        return parent.config.get("model_type"), parent.config.get("architectures")

    if arch(base) != arch(other):
        raise InputError(
            source,
            f"parents.{other.name}",
            f"a parent of the base's architecture (model_type, architectures): {base.name} is {arch(base)}, "
            f"{other.name} is {arch(other)}",
        )
    keys = sorted((set(base.config) | set(other.config)) - IGNORED_CONFIG_KEYS)
    for key in keys:
        if base.config.get(key) != other.config.get(key):
            raise InputError(
                source,
                f"parents.{other.name}",
                f"a parent of the base's architecture and config; config.json '{key}' differs: "
                f"{base.name} {base.config.get(key)!r}, {other.name} {other.config.get(key)!r}",
            )


def _same_tensors(base: Checkpoint, other: Checkpoint) -> None:
    for name, info in base.tensors.items():
        theirs = other.tensors.get(name)
        if theirs is None:
            raise InputError(other.folder, name, f"every tensor of the base {base.name} ({base.folder})", "missing")
        if theirs.shape != info.shape:
            raise InputError(theirs.file, name, f"shape {list(info.shape)} as in {base.name}", list(theirs.shape))
    extra = sorted(set(other.tensors) - set(base.tensors))
    if extra:
        raise InputError(other.tensors[extra[0]].file, extra[0], f"only tensors the base {base.name} has", "extra")


def _fp8_scales(parent: Checkpoint) -> dict[str, str]:
    """FP8 weight -> its block scale tensor, for every FP8 weight of `parent` that has one."""
    found = {}
    for name in parent.tensors:
        if name.endswith("weight_scale_inv") and weight_of(name) in parent.tensors:
            weight = str(weight_of(name))
            if parent.tensors[weight].dtype in FP8_NAMES:
                found[weight] = name
    return found


def _outputs(base: Checkpoint, name: str, scale: str | None, recipe: Recipe) -> tuple[Output, ...]:
    info = base.tensors[name]
    if recipe.dtype == "auto" or not info.is_float:
        outputs = [Output(name, info.dtype, info.shape)]
        if scale is not None:
            outputs.append(Output(scale, base.tensors[scale].dtype, base.tensors[scale].shape))
        return tuple(outputs)
    return (Output(name, TARGET[recipe.dtype], info.shape),)  # dequantised: the scale is not stored


def _mergeable(parent: Checkpoint, unit: Unit, block: tuple[int, int]) -> None:
    info: TensorInfo = parent.tensors[unit.name]
    if info.dtype in FP8_NAMES:
        scale = parent.tensors.get(unit.name + "_scale_inv")
        expected = tuple(math.ceil(d / b) for d, b in zip(info.shape, block, strict=False))
        if len(info.shape) != 2 or scale is None or scale.shape != expected:
            raise InputError(
                info.file,
                unit.name,
                f"an FP8 weight with a {block[0]}x{block[1]} block scale '{unit.name}_scale_inv' of shape "
                f"{list(expected)} (the DeepSeek layout); other FP8 layouts can be kept but not merged",
            )
    elif not info.is_float:
        raise InputError(info.file, unit.name, "a floating-point tensor in a merged group", info.dtype)
