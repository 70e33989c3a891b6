"""Routing agreement counted only over the rows two runs were fed alike."""

from __future__ import annotations

import numpy as np
import pytest

from harness.mote.agreement import rows_fed_alike, topk_disagreements
from harness.mote.records import RoutingRecord


def record(ids: list[list[list[int]]], layers=(1, 2)) -> RoutingRecord:
    topk = np.asarray(ids, dtype=np.int32)
    return RoutingRecord(
        topk, np.ones_like(topk, dtype=np.float32), np.asarray(layers, np.int32), np.zeros(len(ids), np.int8)
    )


def test_rows_fed_alike_stop_at_the_first_generated_token_that_differs():
    assert rows_fed_alike(5, [1, 2, 3, 4], [1, 2, 9, 4]) == 7  # prompt + generated tokens 0 and 1 fed back
    assert rows_fed_alike(5, [1, 2], [1, 2, 3]) == 7
    assert rows_fed_alike(5, [7], [8]) == 5


def test_disagreements_compare_top_k_sets_over_the_given_rows_only():
    a = record([[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[0, 1], [2, 3]]])
    b = record([[[1, 0], [2, 3]], [[4, 5], [6, 0]], [[9, 9], [9, 9]]])  # same set, one differs, then unrelated
    assert topk_disagreements(a, b, rows=2) == (1, 4)
    assert topk_disagreements(a, b, rows=10) == (3, 6)


def test_records_of_different_layers_are_refused():
    with pytest.raises(ValueError, match="different MoE layers"):
        topk_disagreements(record([[[0, 1]]], layers=(1,)), record([[[0, 1]]], layers=(2,)), rows=1)
