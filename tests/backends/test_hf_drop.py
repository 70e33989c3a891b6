"""The HF hook's drop of one layer: the host test of a decode step's few selected experts and the
tensor path give the drop of the shared routing math, bit for bit."""

from __future__ import annotations

import torch

from harness.backends.hf_hooks import HOST_TEST_SLOTS, LayerDrop
from harness.mote.routing import drop_after_topk, expand_rows


def _routing(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(8, generator=generator)[:2] for _ in range(tokens)])
    weights = torch.rand(tokens, 2, generator=generator)
    return ids, weights


def test_a_step_that_selects_no_dropped_expert_keeps_its_weights_tensor():
    drop = torch.zeros(1, 8, dtype=torch.bool)
    drop[0, 7] = True
    ids, weights = torch.tensor([[0, 5]]), torch.tensor([[0.6, 0.4]])
    got, slots = LayerDrop(drop).apply(ids, weights)
    assert got is weights and slots is None


def test_host_test_and_tensor_path_give_the_shared_drop_bit_for_bit():
    drop = torch.zeros(1, 8, dtype=torch.bool)
    drop[0, [1, 6]] = True
    layer = LayerDrop(drop)
    for tokens in (1, 3, HOST_TEST_SLOTS // 2, HOST_TEST_SLOTS):  # host test, then tensors
        for seed in range(20):
            ids, weights = _routing(tokens, seed)
            expected, dropped = drop_after_topk(ids, weights, expand_rows(drop, tokens))
            got, slots = layer.apply(ids, weights)
            assert torch.equal(got, expected), (tokens, seed)
            if slots is None:
                assert not dropped.any() and got is weights
            else:
                assert torch.equal(slots == 0, dropped)


def test_rows_of_a_batch_drop_their_own_experts():
    drop = torch.zeros(2, 8, dtype=torch.bool)
    drop[0, 0] = True
    drop[1, 3] = True
    ids = torch.tensor([[0, 3], [0, 3]])
    weights = torch.tensor([[0.5, 0.25], [0.5, 0.25]])
    got, slots = LayerDrop(drop).apply(ids, weights)
    assert slots is not None
    assert got.tolist() == [[0.0, 0.75], [0.75, 0.0]]


def test_a_token_whose_every_selected_expert_is_dropped_gets_no_weight_on_both_paths():
    drop = torch.zeros(1, 8, dtype=torch.bool)
    drop[0, [1, 6]] = True
    layer = LayerDrop(drop)
    for tokens in (1, HOST_TEST_SLOTS):  # host test, tensor path
        ids = torch.tensor([[1, 6]] * tokens)
        got, slots = layer.apply(ids, torch.full((tokens, 2), 0.5))
        assert slots is not None and got.abs().sum() == 0 and not got.isnan().any()
