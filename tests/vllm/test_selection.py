"""The selection edit on vLLM's router math (pure torch, no engine): grouped sigmoid with correction
bias (DeepSeek-V3), softmax top-k; unedited rows equal vLLM's own router output."""

from __future__ import annotations

import torch
from marks import VLLM

from harness.vllm_plugin.selection import RouterMath, edited_routing

pytestmark = VLLM

T, E, K = 64, 16, 2


def dsv3_math(bias: torch.Tensor) -> RouterMath:
    return RouterMath(top_k=K, scoring_func="sigmoid", renormalize=True, n_groups=4, topk_group=2, bias=bias, scale=2.5)


def test_unedited_grouped_selection_equals_vllm_cpu_router():
    from vllm.model_executor.layers.fused_moe.router.cpu_router import _grouped_topk

    gen = torch.Generator().manual_seed(0)
    logits, bias = torch.randn(T, E, generator=gen), 0.1 * torch.randn(E, generator=gen)
    weights, ids = edited_routing(dsv3_math(bias), logits, None, None)
    ref_w, ref_ids = _grouped_topk(logits, K, True, 4, 2, "sigmoid", 2.5, bias)
    order, ref_order = ids.sort(-1), ref_ids.long().sort(-1)
    assert torch.equal(order.values, ref_order.values)
    assert torch.allclose(weights.gather(1, order.indices), ref_w.gather(1, ref_order.indices))


def test_masked_expert_is_excluded_even_with_a_huge_correction_bias():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(T, E, generator=gen)
    bias = torch.zeros(E)
    bias[5] = 100.0  # without the edit, expert 5 would win every token
    block = torch.zeros(T, E, dtype=torch.bool)
    block[:, 5] = True
    _, plain = edited_routing(dsv3_math(bias), logits, None, None)
    assert (plain == 5).any(-1).all()
    _, ids = edited_routing(dsv3_math(bias), logits, block, None)
    assert not (ids == 5).any()


def test_forced_expert_wins_its_group_and_keeps_its_own_sigmoid_weight():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(T, E, generator=gen)
    bias = torch.zeros(E)
    bias[12:] = 1.0  # group 3 always chosen, group 0 rarely
    force = torch.zeros(T, E, dtype=torch.bool)
    force[:, 1] = True  # an expert of group 0
    weights, ids = edited_routing(dsv3_math(bias), logits, None, force)
    assert (ids == 1).any(-1).all()
    scores = logits.sigmoid()
    expected = scores.gather(1, ids) / scores.gather(1, ids).sum(-1, keepdim=True) * 2.5
    assert torch.allclose(weights, expected)


def test_softmax_router_forced_weight_is_its_softmax_share():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(T, 8, generator=gen)
    math = RouterMath(
        top_k=K, scoring_func="softmax", renormalize=False, n_groups=0, topk_group=0, bias=None, scale=1.0
    )
    force = torch.zeros(T, 8, dtype=torch.bool)
    force[:, 7] = True
    weights, ids = edited_routing(math, logits, None, force)
    assert (ids == 7).any(-1).all()
    assert torch.allclose(weights, torch.softmax(logits, -1).gather(1, ids))


def test_one_broadcast_row_of_flags_equals_the_same_flags_per_token():
    """A step whose requests share one intervention passes its flags as one [1, E] row (runtime.py's
    uniform path): the grouped and the plain selection must be exactly those of per-token flags."""
    gen = torch.Generator().manual_seed(4)
    logits, bias = torch.randn(T, E, generator=gen), 0.1 * torch.randn(E, generator=gen)
    block, force = torch.zeros(1, E, dtype=torch.bool), torch.zeros(1, E, dtype=torch.bool)
    block[0, [2, 9]] = True
    force[0, 5] = True
    softmax = RouterMath(
        top_k=K, scoring_func="softmax", renormalize=True, n_groups=0, topk_group=0, bias=None, scale=1.0
    )
    for math in (dsv3_math(bias), softmax):
        one = edited_routing(math, logits, block, force)
        each = edited_routing(math, logits, block.expand(T, E), force.expand(T, E))
        assert torch.equal(one[1], each[1]) and torch.equal(one[0], each[0])
        assert not torch.isin(one[1], torch.tensor([2, 9])).any() and (one[1] == 5).any(-1).all()


def test_masking_logits_before_vllms_softmax_topk_equals_the_edit_after_it():
    """Where route_hook.masks_logits holds (softmax renormalised over the top-k, no bias), a mask is one
    -inf fill of the logits before vLLM's own top-k: same experts, same weights as selection.py's edit."""
    from vllm.model_executor.layers.fused_moe.router.cpu_router import _softmax_topk

    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(T, E, generator=gen)
    block = torch.zeros(T, E, dtype=torch.bool)
    block[:, [0, 3, 9]] = True
    block[::2, 11] = True  # tokens on two rows
    math = RouterMath(top_k=K, scoring_func="softmax", renormalize=True, n_groups=0, topk_group=0, bias=None, scale=1.0)
    edited_w, edited_ids = edited_routing(math, logits, block, None)
    weights, ids = _softmax_topk(logits.masked_fill(block, float("-inf")), K, True)
    order, edited_order = ids.long().sort(-1), edited_ids.sort(-1)
    assert torch.equal(order.values, edited_order.values)
    assert not block.gather(1, order.values).any()
    assert torch.allclose(weights.gather(1, order.indices), edited_w.gather(1, edited_order.indices))


def test_only_renormalised_unbiased_softmax_routers_mask_logits():
    from vllm.model_executor.layers.fused_moe.router.cpu_router import CPURouter

    from harness.vllm_plugin.route_hook import masks_logits

    assert masks_logits(CPURouter(top_k=2, global_num_experts=8, renormalize=True))
    # without renormalisation a blocked expert would leave the softmax's denominator too
    assert not masks_logits(CPURouter(top_k=2, global_num_experts=8, renormalize=False))
    grouped = CPURouter(
        top_k=2,
        global_num_experts=16,
        use_grouped_topk=True,
        num_expert_group=4,
        topk_group=2,
        scoring_func="sigmoid",
        e_score_correction_bias=torch.zeros(16),
    )
    assert not masks_logits(grouped)


def test_layer_edits_send_mask_only_rows_to_the_logits_and_the_rest_after_topk():
    from harness.mote.routing import LayerTables
    from harness.vllm_plugin.runtime import layer_edits

    block = torch.zeros(4, 8, dtype=torch.bool)
    force = torch.zeros(4, 8, dtype=torch.bool)
    block[0, 1] = True  # mask only: before top-k
    block[1, 2], force[1, 5] = True, True  # mask and stimulate: redone after
    block[2, :7] = True  # fewer than top_k experts left: redone after
    # row 3: no intervention
    table = LayerTables(block=block, force=force)
    edits = layer_edits(table, 4, n_experts=8, top_k=2, masks_logits=True)
    assert edits.masked_rows == [True, False, False, False]
    assert edits.select_rows == [False, True, True, False]
    assert edits.logit_block is not None and edits.block is not None and edits.force is not None
    assert torch.equal(edits.logit_block[0], block[0]) and not edits.logit_block[1:].any()
    assert not edits.block[0].any() and torch.equal(edits.block[1:3], block[1:3])
    plain = layer_edits(table, 4, n_experts=8, top_k=2, masks_logits=False)
    assert plain.masked_rows == [False] * 4 and plain.logit_block is None
    assert plain.select_rows == [True, True, True, False]
