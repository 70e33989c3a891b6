"""The worker's record arena (record_arena.py): steps appended in one go, each record gathered back
whole and in order, dead rows reclaimed. Pure numpy; runs without vLLM."""

from __future__ import annotations

import numpy as np
import pytest

from harness.vllm_plugin.checks import MoteVLLMError
from harness.vllm_plugin.record_arena import RecordArena

LAYERS, K = 3, 2


def step(owners: list[int], first_position: int) -> tuple[np.ndarray, ...]:
    """One step's rows: token t of the step has position first_position + t and ids encoding both."""
    n = len(owners)
    positions = np.arange(first_position, first_position + n, dtype=np.int64)
    ids = (positions[:, None, None] * 10 + np.arange(LAYERS * K).reshape(1, LAYERS, K)).astype(np.int32)
    weights = ids.astype(np.float32) / 7
    return np.asarray(owners, dtype=np.int32), positions, ids, weights


def test_each_owner_gets_back_its_rows_in_append_order_with_dtypes_kept() -> None:
    arena = RecordArena()
    arena.append(*step([0, 0, 1, 2, 2, 2], 0))
    arena.append(*step([0, 1, 2], 100))
    positions, ids, weights = arena.take(2) or pytest.fail("owner 2 has rows")
    assert positions.tolist() == [3, 4, 5, 102]
    assert ids.dtype == np.int32 and weights.dtype == np.float32 and ids.shape == (4, LAYERS, K)
    assert ids[:, 0, 0].tolist() == [30, 40, 50, 1020]
    np.testing.assert_array_equal(weights, ids.astype(np.float32) / 7)
    assert arena.take(2) is None  # taken once
    taken = arena.take(0)
    assert taken is not None and taken[0].tolist() == [0, 1, 100]
    assert arena.live == 2  # owner 1's rows


def test_an_owner_without_rows_takes_none_and_discard_forgets_rows() -> None:
    arena = RecordArena()
    assert arena.take(5) is None
    arena.append(*step([5, 6], 0))
    arena.discard(5)
    assert arena.take(5) is None
    assert arena.live == 1


def test_a_fully_dead_arena_starts_again_at_row_zero() -> None:
    arena = RecordArena()
    arena.append(*step([0, 1], 0))
    arena.take(0)
    arena.discard(1)
    assert (arena.size, arena.dead) == (0, 0)
    arena.append(*step([2], 7))
    taken = arena.take(2)
    assert taken is not None and taken[0].tolist() == [7]


def test_dead_rows_are_compacted_instead_of_growing_and_live_rows_survive() -> None:
    arena = RecordArena()
    keeper = 10_000
    arena.append(*step([keeper], 0))
    capacity = None
    for owner in range(200):  # 200 records of 100 rows, each fetched after the next one's step
        arena.append(*step([owner] * 100, 1 + owner * 100))
        if owner:
            arena.take(owner - 1)
        capacity = capacity or len(arena.owner)
    assert len(arena.owner) <= 4 * capacity  # 20,001 rows written, at most ~200 live at once
    taken = arena.take(keeper)
    assert taken is not None and taken[0].tolist() == [0]
    last = arena.take(199)
    assert last is not None and last[0].tolist() == list(range(19_901, 20_001))


def test_rows_of_another_shape_are_refused_while_records_are_held() -> None:
    arena = RecordArena()
    arena.append(*step([0], 0))
    owners, positions, ids, weights = step([1], 1)
    with pytest.raises(MoteVLLMError, match="fetch every record"):
        arena.append(owners, positions, ids[:, :2], weights[:, :2])
    arena.take(0)
    arena.append(owners, positions, ids[:, :2], weights[:, :2])  # nothing held: the new shape is taken
    taken = arena.take(1)
    assert taken is not None and taken[1].shape == (1, 2, K)
