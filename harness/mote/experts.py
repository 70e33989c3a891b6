"""A set of routed experts, each named by (absolute layer index, expert id).

The layer index is the one in `model.layers[i]` (DeepSeek-V3's first dense layers count), so a set
means the same thing in every backend and in every file a user writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ExpertSet:
    """An immutable, sorted set of (layer, expert) pairs."""

    pairs: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        normalised = tuple(sorted({(int(layer), int(expert)) for layer, expert in self.pairs}))
        for layer, expert in normalised:
            if layer < 0 or expert < 0:
                raise ValueError(f"layer and expert ids must be >= 0, got ({layer}, {expert})")
        object.__setattr__(self, "pairs", normalised)

    @classmethod
    def from_mapping(cls, mapping: Mapping[int, Iterable[int]]) -> ExpertSet:
        return cls(tuple((int(layer), int(e)) for layer, experts in mapping.items() for e in experts))

    def to_mapping(self) -> dict[int, list[int]]:
        """{layer: [expert ids]} with layers and ids ascending: the intervention file's `experts`."""
        out: dict[int, list[int]] = {}
        for layer, expert in self.pairs:
            out.setdefault(layer, []).append(expert)
        return out

    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({layer for layer, _ in self.pairs}))

    def in_layer(self, layer: int) -> tuple[int, ...]:
        return tuple(e for lay, e in self.pairs if lay == layer)

    def histogram(self) -> dict[int, int]:
        """Experts per layer: what a matched random baseline must reproduce."""
        return {layer: len(ids) for layer, ids in self.to_mapping().items()}

    def union(self, other: ExpertSet) -> ExpertSet:
        return ExpertSet(self.pairs + other.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.pairs)

    def __contains__(self, pair: object) -> bool:
        return pair in set(self.pairs)

    def __bool__(self) -> bool:
        return bool(self.pairs)
