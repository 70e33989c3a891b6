"""Routing records: which experts each token used, per MoE layer, with the span it belongs to.

`topk_ids` holds -1 for a slot left empty by drop-mode suppression. Records cover every token the
model *processed*: the prompt and each generated token fed back in (the last sampled token is never
routed). `counts()` aggregates into the [moe_layers, n_experts] map per span that fTRI consumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from harness.common.atomic_files import write_whole

SCHEMA_VERSION = 1


class Span(IntEnum):
    PROMPT = 0
    THINK = 1
    ANSWER = 2


@dataclass(frozen=True)
class SpanCounts:
    """What fTRI needs of one generation, without per-token ids: per span, token counts [moe_layers,
    n_experts] and how many tokens were routed (vLLM's device-side counts, or a record's)."""

    counts: dict[Span, np.ndarray]
    tokens: dict[Span, int]


@dataclass(frozen=True)
class RoutingRecord:
    """Per-token routing of one generation."""

    topk_ids: np.ndarray  # int32 [tokens, moe_layers, k]; -1 = slot emptied by drop
    topk_weights: np.ndarray  # float32 [tokens, moe_layers, k]
    layers: np.ndarray  # int32 [moe_layers], absolute layer indices
    span: np.ndarray  # int8 [tokens], Span values

    def __post_init__(self) -> None:
        tokens, n_layers, _ = self.topk_ids.shape
        if self.topk_weights.shape != self.topk_ids.shape:
            raise ValueError("topk_weights must have the shape of topk_ids")
        if self.layers.shape != (n_layers,):
            raise ValueError(f"layers must have {n_layers} entries")
        if self.span.shape != (tokens,):
            raise ValueError(f"span must have {tokens} entries")

    @property
    def n_tokens(self) -> int:
        return int(self.topk_ids.shape[0])

    def counts(self, n_experts: int, span: Span | None = None) -> np.ndarray:
        """Token counts [moe_layers, n_experts] over one span (or all tokens)."""
        ids = self.topk_ids if span is None else self.topk_ids[self.span == int(span)]
        return count_map(ids, n_experts)

    def span_counts(self, n_experts: int) -> SpanCounts:
        return SpanCounts(
            counts={s: self.counts(n_experts, s) for s in Span},
            tokens={s: int((self.span == int(s)).sum()) for s in Span},
        )

    def counts_by_span(self, n_experts: int) -> dict[str, np.ndarray]:
        return {s.name.lower(): self.counts(n_experts, s) for s in Span}

    def save(self, path: str | Path) -> Path:
        """Written whole via a rename: a kill leaves the previous file or this one, never a torn one."""
        arrays: dict[str, Any] = {
            "topk_ids": self.topk_ids.astype(np.int32),
            "topk_weights": self.topk_weights.astype(np.float32),
            "layers": self.layers.astype(np.int32),
            "span": self.span.astype(np.int8),
            "schema_version": np.int32(SCHEMA_VERSION),
        }
        return write_whole(Path(path), lambda sink: np.savez_compressed(sink, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> RoutingRecord:
        with np.load(path) as data:
            return cls(
                topk_ids=data["topk_ids"],
                topk_weights=data["topk_weights"],
                layers=data["layers"],
                span=data["span"],
            )


def count_map(topk_ids: np.ndarray, n_experts: int) -> np.ndarray:
    """[tokens, L, k] ids (-1 ignored) -> int64 counts [L, n_experts] of tokens routed to each expert."""
    n_layers = topk_ids.shape[1]
    if topk_ids.size == 0:
        return np.zeros((n_layers, n_experts), dtype=np.int64)
    # One bincount over keys layer * (E + 1) + (id + 1): a dropped slot (-1) lands in its layer's bin 0.
    offsets = (np.arange(n_layers, dtype=np.int32) * (n_experts + 1) + 1)[None, :, None]
    keys = topk_ids.astype(np.int32, copy=False) + offsets
    counts = np.bincount(keys.ravel(), minlength=n_layers * (n_experts + 1))
    return counts.reshape(n_layers, n_experts + 1)[:, 1:].astype(np.int64, copy=False)
