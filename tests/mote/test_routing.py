"""The shared routing math, on hand-made tensors."""

from __future__ import annotations

import torch

from harness.mote import Intervention
from harness.mote.routing import (
    build_layer_tables,
    drop_after_topk,
    edit_selection_scores,
    expand_rows,
    force_lift,
    keep_table,
    rescale_kept,
    selection_lift,
)

INF = float("inf")


def test_mask_sends_experts_to_minus_inf_and_force_lifts_them_above_every_score():
    scores = torch.tensor([[0.125, 0.5, 0.25, 0.125]])
    block = torch.tensor([[False, True, False, False]])
    force = torch.tensor([[False, False, False, True]])
    out = edit_selection_scores(scores, block, force)
    assert out.tolist() == [[0.125, -INF, 0.25, torch.finfo(torch.float32).max]]
    assert torch.topk(out, 2).indices.tolist() == [[3, 2]]  # forced first, next best fills


def test_a_forced_expert_wins_over_every_score_not_forced_in_every_float_dtype():
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        scores = torch.tensor([[1e4, -1e4, 1e-3, 5e3, -1.0]], dtype=dtype)  # far beyond router scores
        for forced in range(1, 5):
            force = torch.zeros(1, 5, dtype=torch.bool)
            force[0, forced] = True
            for table in (force, force_lift(force, dtype)):  # the bool table, or its lift made once
                out = edit_selection_scores(scores, None, table)
                assert out.dtype == dtype
                assert torch.topk(out, 1).indices.item() == forced, (dtype, forced)
                assert torch.equal(out[0, :forced], scores[0, :forced]), "a score not forced changed"


def test_force_never_overrides_an_expert_the_family_already_excluded():
    scores = torch.tensor([[-INF, 0.2, 0.1]])
    force = torch.tensor([[True, False, False]])
    assert edit_selection_scores(scores, None, force)[0, 0] == -INF


def test_grouped_view_forced_expert_group_wins_and_masked_expert_never_lifts_group():
    # 2 groups of 3; group score = sum of top-2 (DeepSeek-V3)
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.3, 0.2, 0.1]])
    force = torch.zeros(1, 6, dtype=torch.bool)
    force[0, 5] = True
    grouped = edit_selection_scores(scores.view(1, 2, 3), None, force.view(1, 2, 3))
    group_scores = grouped.topk(2, dim=-1).values.sum(-1)
    assert group_scores.argmax().item() == 1
    block = torch.zeros(1, 6, dtype=torch.bool)
    block[0, :2] = True  # the two experts that made group 0 strong
    grouped = edit_selection_scores(scores.view(1, 2, 3), block.view(1, 2, 3), None)
    group_scores = grouped.topk(2, dim=-1).values.sum(-1)
    assert group_scores[0, 0] == -INF


def test_drop_zeroes_dropped_weights_and_rescales_rest_to_original_sum():
    ids = torch.tensor([[0, 2], [1, 3], [2, 0]])
    weights = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]]) * 2.5  # a scaled router
    drop = torch.zeros(3, 4, dtype=torch.bool)
    drop[:, 2] = True
    new, dropped = drop_after_topk(ids, weights, drop)
    assert dropped.tolist() == [[False, True], [False, False], [True, False]]
    assert torch.allclose(new.sum(-1), weights.sum(-1))
    assert new[0, 1] == 0 and new[2, 0] == 0
    assert torch.equal(new[1], weights[1])  # untouched token keeps its weights bit for bit


def test_one_add_of_the_selection_lift_is_the_selection_edit_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        scores = torch.randn(6, 8, generator=generator).to(dtype)
        scores[0, 5] = -INF  # an expert the family's own code excluded
        scores[1, 2] = -0.0
        block = torch.rand(6, 8, generator=generator) < 0.25
        force = ~block & (torch.rand(6, 8, generator=generator) < 0.2)
        force[0, 5] = True  # forcing an excluded expert leaves it excluded
        for b, f in ((block, None), (None, force), (block, force)):
            expected = edit_selection_scores(scores, b, f)
            got = scores + selection_lift(b, f, dtype)
            assert got.dtype == dtype
            assert torch.equal(got, expected), (dtype, b is None, f is None)
            assert torch.equal(torch.topk(got, 3).indices, torch.topk(expected, 3).indices)


def test_rescale_of_kept_weights_matches_the_drop_for_every_weight_dtype():
    ids = torch.tensor([[0, 2], [1, 3], [2, 0], [2, 2]])
    drop = torch.zeros(4, 4, dtype=torch.bool)
    drop[:, 2] = True
    for dtype in (torch.float32, torch.bfloat16):
        weights = (torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5], [0.5, 0.5]]) * 2.5).to(dtype)
        expected, dropped = drop_after_topk(ids, weights, drop)
        slots = keep_table(drop).gather(1, ids)
        got = rescale_kept(weights.float(), weights.float() * slots, dtype)
        assert got.dtype == dtype and torch.equal(got, expected)
        assert torch.equal(slots == 0, dropped)
        assert got[3].tolist() == [0.0, 0.0]  # every slot dropped: no weight, no NaN
        assert torch.equal(got[1], weights[1])


def test_drop_of_every_selected_expert_leaves_zero_weight():
    ids = torch.tensor([[0, 1]])
    new, dropped = drop_after_topk(ids, torch.tensor([[0.5, 0.5]]), torch.ones(1, 2, dtype=torch.bool))
    assert new.tolist() == [[0.0, 0.0]] and dropped.all()


def test_tables_give_each_row_its_own_flags():
    rows = [
        Intervention.none(),
        Intervention.suppress({1: [2]}, mode="drop"),
        Intervention.suppress({1: [3]}, mode="mask"),
        Intervention.stimulate({2: [0]}),
    ]
    tables = build_layer_tables(rows, {1: 4, 2: 4})
    assert tables[1].drop is not None and tables[1].drop[:, 2].tolist() == [False, True, False, False]
    assert tables[1].block is not None and tables[1].block[:, 3].tolist() == [False, False, True, False]
    assert tables[2].force is not None and tables[2].force[:, 0].tolist() == [False, False, False, True]
    assert tables[1].force is None and 0 not in tables


def test_expand_rows_repeats_each_row_for_its_tokens():
    table = torch.tensor([[True, False], [False, True]])
    assert expand_rows(table, 6).tolist() == [[True, False]] * 3 + [[False, True]] * 3
