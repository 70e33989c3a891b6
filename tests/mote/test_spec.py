"""Checking an intervention against a model's MoE layout (before any weights load)."""

from __future__ import annotations

import pytest

from harness.common.errors import InputError
from harness.mote import Intervention
from harness.mote.spec import ModelSpec

FLAT = ModelSpec(family="qwen3_moe", n_layers=3, moe_layers=(0, 1, 2), n_experts={0: 8, 1: 8, 2: 8}, top_k=2)
GROUPED = ModelSpec(
    family="deepseek_v3", n_layers=3, moe_layers=(1, 2), n_experts={1: 16, 2: 16}, top_k=2, groups=(4, 2)
)


def test_masking_so_many_experts_that_top_k_must_pick_one_is_refused():
    FLAT.check(Intervention.suppress({1: list(range(6))}, mode="mask"))  # 2 experts left for top-2
    with pytest.raises(InputError, match="at most n_experts - top_k = 6") as info:
        FLAT.check(Intervention.suppress({1: list(range(7))}, mode="mask"), "iv.yaml")
    assert info.value.field == "experts.1" and info.value.source == "iv.yaml"
    FLAT.check(Intervention.suppress({1: list(range(8))}, mode="drop"))  # drop empties slots instead


def test_forcing_experts_in_more_groups_than_a_token_can_route_to_is_refused():
    GROUPED.check(Intervention.stimulate({1: [0, 5]}))  # groups 0 and 1 of 4 experts: topk_group = 2
    with pytest.raises(InputError, match="topk_group=2") as info:
        ModelSpec(**{**GROUPED.__dict__, "top_k": 3}).check(Intervention.stimulate({2: [0, 5, 9]}))
    assert info.value.field == "experts.2"
    ModelSpec(**{**FLAT.__dict__, "top_k": 3}).check(Intervention.stimulate({2: [0, 5, 7]}))  # no groups


def test_the_tiny_grouped_families_report_their_groups(tiny_model_dir):
    from harness.backends.hf_discovery import inspect_model

    assert inspect_model(tiny_model_dir("deepseek_v3")).groups == (4, 2)
    assert inspect_model(tiny_model_dir("qwen3_moe")).groups is None
