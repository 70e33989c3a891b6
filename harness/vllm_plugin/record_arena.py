"""Per-token routing records held in the worker until fetched, in one arena of rows.

A row is one routed token of a recorded request: its position, its top-k ids and weights at every
MoE layer, and its owner (the record's integer id). A step appends its recorded tokens in one go (a
few numpy copies, no Python per request: `runtime.end_step`); a fetch gathers one owner's rows
(`take`). Rows of fetched or dropped records are dead until the arena compacts, which it does
instead of growing once half its rows are dead, and a fully dead arena starts over at row 0.
"""

from __future__ import annotations

import numpy as np

from harness.vllm_plugin.checks import MoteVLLMError

_MIN_ROWS = 1024
# a fully dead arena bigger than this gives its memory back (a big recorded batch, then idle serving)
_KEEP_BYTES = 64 << 20


class RecordArena:
    def __init__(self) -> None:
        self.size = 0  # rows written
        self.dead = 0  # rows of them whose record was taken or discarded
        self.owner = np.empty(0, dtype=np.int64)  # -1 = dead
        self.positions = np.empty(0, dtype=np.int64)
        self.ids: np.ndarray = np.empty((0, 0, 0), dtype=np.int32)  # [rows, moe_layers, k]; -1 = dropped slot
        self.weights: np.ndarray = np.empty((0, 0, 0), dtype=np.float32)

    @property
    def live(self) -> int:
        return self.size - self.dead

    def append(self, owner: np.ndarray, positions: np.ndarray, ids: np.ndarray, weights: np.ndarray) -> None:
        """Rows for tokens owned by `owner` (int, one per token; every one a live record)."""
        n = len(owner)
        if n == 0:
            return
        self._reserve(n, ids.shape[1:])
        start, end = self.size, self.size + n
        self.owner[start:end] = owner
        self.positions[start:end] = positions
        self.ids[start:end] = ids
        self.weights[start:end] = weights
        self.size = end

    def take(self, owner: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(positions, ids, weights) of `owner`'s rows in the order they were appended, now dead;
        None if it has none."""
        rows = self._rows(owner)
        if not len(rows):
            return None
        taken = (self.positions[rows], self.ids[rows], self.weights[rows])
        self._kill(rows)
        return taken

    def discard(self, owner: int) -> None:
        """Forget `owner`'s rows (a record dropped by the cap, or refused)."""
        self._kill(self._rows(owner))

    def _rows(self, owner: int) -> np.ndarray:
        return np.flatnonzero(self.owner[: self.size] == owner)

    def _kill(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        self.owner[rows] = -1
        self.dead += len(rows)
        if self.dead == self.size:
            self.size = self.dead = 0
            if self.ids.nbytes + self.weights.nbytes > _KEEP_BYTES:
                self._allocate(0, self.ids.shape[1:])

    def _reserve(self, n: int, row_shape: tuple[int, ...]) -> None:
        if row_shape != self.ids.shape[1:]:
            if self.live:
                raise MoteVLLMError(
                    f"routing records: a step's rows are {row_shape} (MoE layers, top-k), the records held "
                    f"are {self.ids.shape[1:]}; fetch every record before the model changes"
                )
            self.size = self.dead = 0
            self._allocate(0, row_shape)
        capacity = len(self.owner)
        if self.size + n <= capacity:
            return
        if 2 * self.dead >= self.size:
            self._compact()
            if self.size + n <= capacity:
                return
        self._allocate(max(self.size + n, 2 * capacity, _MIN_ROWS), row_shape)

    def _compact(self) -> None:
        keep = np.flatnonzero(self.owner[: self.size] >= 0)
        n = len(keep)
        for array in (self.owner, self.positions, self.ids, self.weights):
            array[:n] = array[keep]
        self.size, self.dead = n, 0

    def _allocate(self, rows: int, row_shape: tuple[int, ...]) -> None:
        """New arrays of `rows` rows holding the rows written so far (dead ones included)."""
        size = self.size
        owner = np.empty(rows, dtype=np.int64)
        positions = np.empty(rows, dtype=np.int64)
        ids = np.empty((rows, *row_shape), dtype=np.int32)
        weights = np.empty((rows, *row_shape), dtype=np.float32)
        if size:
            owner[:size], positions[:size] = self.owner[:size], self.positions[:size]
            ids[:size], weights[:size] = self.ids[:size], self.weights[:size]
        self.owner, self.positions, self.ids, self.weights = owner, positions, ids, weights
