from __future__ import annotations

import numpy as np

from harness.mote.records import RoutingRecord, Span, count_map


def _record() -> RoutingRecord:
    ids = np.array([[[0, 1], [2, 3]], [[0, 2], [2, -1]], [[1, 3], [0, 3]]], dtype=np.int32)
    return RoutingRecord(
        topk_ids=ids,
        topk_weights=np.ones(ids.shape, np.float32),
        layers=np.array([4, 6], np.int32),
        span=np.array([Span.PROMPT, Span.THINK, Span.ANSWER], np.int8),
    )


def test_counts_per_span_count_tokens_per_layer_and_expert_ignoring_dropped_slots():
    rec = _record()
    assert rec.counts(4).tolist() == [[2, 2, 1, 1], [1, 0, 2, 2]]
    assert rec.counts(4, Span.THINK).tolist() == [[1, 0, 1, 0], [0, 0, 1, 0]]
    by_span = rec.counts_by_span(4)
    assert sum(by_span.values()).tolist() == rec.counts(4).tolist()


def test_record_round_trips_through_npz(tmp_path):
    rec = _record()
    back = RoutingRecord.load(rec.save(tmp_path / "r.npz"))
    for name in ("topk_ids", "topk_weights", "layers", "span"):
        assert np.array_equal(getattr(back, name), getattr(rec, name))


def test_count_map_of_no_tokens_is_zero():
    assert count_map(np.zeros((0, 3, 2), np.int32), 5).sum() == 0
