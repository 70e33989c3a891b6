"""Every tensor of every supported family, as transformers stores it, is placed in exactly one group, and
the router and routed-expert groups sit in the layers where the HF backend finds the MoE blocks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.assembly.groups import GROUPS, group_of, weight_of

REPO = Path(__file__).resolve().parents[2]
LAYER = re.compile(r"\.(?:layers|blocks)\.(\d+)\.")


def supported_families() -> list[str]:
    from harness.models import coverage

    table = coverage.readme_table(REPO / "README.md")
    rows = [line.strip("| ").split(" | ") for line in table.splitlines() if line.startswith("| ")]
    return [cells[0] for cells in rows if cells[-1] == "supported"]


def test_per_expert_fused_and_fp8_names_are_placed():
    assert group_of("model.layers.3.mlp.experts.17.gate_proj.weight") == "routed_experts"
    assert group_of("model.layers.3.mlp.experts.17.gate_proj.weight_scale_inv") == "routed_experts"
    assert group_of("model.layers.3.mlp.experts.gate_up_proj") == "routed_experts"
    assert group_of("model.layers.3.mlp.shared_experts.down_proj.weight") == "shared_experts"
    assert group_of("model.layers.3.mlp.gate.weight") == "router"
    assert group_of("model.layers.3.mlp.gate.e_score_correction_bias") == "router"
    assert group_of("model.layers.0.mlp.gate_proj.weight") == "dense_mlp"
    assert group_of("model.layers.0.self_attn.kv_a_layernorm.weight") == "norms"
    assert group_of("model.layers.0.self_attn.kv_b_proj.weight_scale_inv") == "attention"
    assert group_of("transformer.blocks.0.norm_attn_norm.attn.Wqkv.weight") == "attention"
    assert group_of("model.embed_tokens.weight") == "embeddings"
    assert group_of("lm_head.weight") == "lm_head"
    assert weight_of("a.weight_scale_inv") == "a.weight" and weight_of("a.weight") is None
    assert group_of("model.layers.0.mystery.thing") is None


def test_every_supported_family_is_placed_where_the_hf_backend_finds_its_moe_blocks(tmp_path):
    from safetensors import safe_open

    from harness.backends.hf_discovery import find_moe_blocks
    from harness.models.tiny import build_tiny_model

    families = supported_families()
    assert len(families) >= 40
    for family in families:
        model = build_tiny_model(family)
        folder = tmp_path / family
        model.save_pretrained(str(folder))
        moe_layers = {block.layer for block in find_moe_blocks(model)}
        placed: dict[str, set[int]] = {g: set() for g in GROUPS}
        for shard in folder.glob("*.safetensors"):
            with safe_open(str(shard), "pt") as handle:
                for name in handle.keys():  # noqa: SIM118
                    group = group_of(name)
                    assert group is not None, f"{family}: no group places {name}"
                    layer = LAYER.search(name)
                    if layer:
                        placed[group].add(int(layer.group(1)))
        # hash-routed expert layers (hy_v4's first) have experts and no learned router
        assert placed["routed_experts"] >= moe_layers, family
        assert placed["router"] == moe_layers, family


@pytest.mark.parametrize("name", ["model.layers.1.mlp.experts.0.w9.weight_scale_inv"])
def test_a_scale_goes_with_its_weight(name):
    assert group_of(name) == group_of(name.removesuffix("_scale_inv"))
