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
