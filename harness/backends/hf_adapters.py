"""Where each transformers MoE family keeps its router and experts, and how its router selects.

One small adapter per family: the attribute of the decoder layer that holds the MoE block, the
router and experts attributes inside it, and which torch calls the router selects with. The
routing math itself is never re-implemented here: the backend edits the scores passed to those
selection calls (see hf_hooks.py) and lets the family's own code weight them.

All families use the transformers 5.x layout: the router returns (logits, top-k weights, top-k
indices) and the MoE block calls one fused `experts` module with (hidden, indices, weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.common.errors import InputError, UnsupportedModelError
from harness.mote.spec import ModelSpec


@dataclass(frozen=True)
class FamilyAdapter:
    block_attr: str  # decoder layer attribute holding the MoE block
    router_attr: str  # MoE block attribute holding the router
    selection: str  # human-readable: what the router selects over and with which call
    note: str = ""
    experts_attr: str = "experts"
    selection_ops: tuple[str, ...] = ("topk",)  # torch calls whose inputs are edited


FAMILIES: dict[str, FamilyAdapter] = {
    "mixtral": FamilyAdapter("mlp", "gate", "softmax(logits) -> topk -> renormalise"),
    "qwen2_moe": FamilyAdapter(
        "mlp",
        "gate",
        "softmax(logits) -> topk (norm_topk_prob optional)",
        "sigmoid-gated shared expert runs beside the routed ones; mlp_only_layers / decoder_sparse_step "
        "make some layers dense",
    ),
    "qwen3_moe": FamilyAdapter("mlp", "gate", "softmax(logits) -> topk (norm_topk_prob optional)"),
    "olmoe": FamilyAdapter("mlp", "gate", "softmax(logits) -> topk (norm_topk_prob optional)"),
    "deepseek_v2": FamilyAdapter(
        "mlp",
        "gate",
        "softmax -> (group_limited_greedy: group max -> topk groups ->) topk; topk values are "
        "the weights, x routed_scaling_factor",
        "a group is scored by its max (a `max` call over the grouped view); experts outside the chosen "
        "groups are zeroed, not -inf",
        selection_ops=("topk", "max"),
    ),
    "deepseek_v3": FamilyAdapter(
        "mlp",
        "gate",
        "sigmoid + e_score_correction_bias -> group top-2 sum -> topk groups -> topk; "
        "weights gathered from the un-biased sigmoid, renormalised, x routed_scaling_factor",
        "first_k_dense_replace dense layers; the bias affects selection only; a forced expert's group "
        "always wins because its group score is +inf",
    ),
    "glm4_moe": FamilyAdapter("mlp", "gate", "as deepseek_v3 (grouped sigmoid with correction bias)"),
    "gpt_oss": FamilyAdapter(
        "mlp",
        "router",
        "topk over biased logits -> softmax over the k selected",
        "router has a bias; HFBackend loads without use_kernels, which would replace the block wholesale",
    ),
    "granitemoe": FamilyAdapter("block_sparse_moe", "router", "topk over logits -> softmax over the k selected"),
    "granitemoeshared": FamilyAdapter(
        "block_sparse_moe", "router", "as granitemoe", "a shared MLP beside the block (layer.shared_mlp)"
    ),
    "phimoe": FamilyAdapter(
        "mlp",
        "router",
        "sparsemixer: two sequential max passes with a jitter threshold, no topk",
        "the second pass sees the first choice at -inf, which a forced expert never overrides",
        selection_ops=("max",),
    ),
}


@dataclass(frozen=True)
class MoEBlock:
    layer: int  # absolute index in model.layers
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    n_experts: int


def supported_families() -> list[str]:
    return sorted(FAMILIES)


def adapter_for(model_type: str) -> FamilyAdapter:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} has no routing adapter; supported: {', '.join(supported_families())}"
        ) from None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedModelError(f"{type(model).__name__}: no `model.layers` ModuleList found")
    return layers


def find_moe_blocks(model: nn.Module, model_type: str) -> list[MoEBlock]:
    """The MoE blocks of `model`, in layer order; dense layers are skipped."""
    adapter = adapter_for(model_type)
    blocks: list[MoEBlock] = []
    for index, layer in enumerate(decoder_layers(model)):
        block = getattr(layer, adapter.block_attr, None)
        router = getattr(block, adapter.router_attr, None) if block is not None else None
        experts = getattr(block, adapter.experts_attr, None) if block is not None else None
        if router is None or experts is None:
            continue  # a dense layer (first_k_dense_replace, mlp_only_layers, ...)
        weight = getattr(router, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise UnsupportedModelError(
                f"{model_type} layer {index}: router {type(router).__name__} has no [n_experts, hidden] "
                "weight; the transformers version may have moved its router"
            )
        assert isinstance(block, nn.Module)
        blocks.append(MoEBlock(index, block, router, experts, int(weight.shape[0])))
    if not blocks:
        raise UnsupportedModelError(f"{model_type}: no MoE block found under model.layers[*].{adapter.block_attr}")
    return blocks


def top_k_of(model: nn.Module) -> int:
    config: Any = model.config
    for name in ("num_experts_per_tok", "moe_topk", "top_k"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise UnsupportedModelError(f"{config.model_type}: cannot find the router's top-k in the config")


def spec_from_model(model: nn.Module) -> ModelSpec:
    config: Any = model.config
    model_type = str(config.model_type)
    blocks = find_moe_blocks(model, model_type)
    return ModelSpec(
        family=model_type,
        n_layers=len(decoder_layers(model)),
        moe_layers=tuple(b.layer for b in blocks),
        n_experts={b.layer: b.n_experts for b in blocks},
        top_k=top_k_of(model),
        groups=expert_groups(config),
    )


def expert_groups(config: Any) -> tuple[int, int] | None:
    """(n_group, topk_group) of a grouped top-k router, None where routing is not grouped (DeepSeek-V2
    groups only with topk_method group_limited_greedy; V3 and GLM-4 MoE always)."""
    if getattr(config, "topk_method", None) == "greedy":
        return None
    n_group, topk_group = getattr(config, "n_group", None), getattr(config, "topk_group", None)
    if isinstance(n_group, int) and isinstance(topk_group, int) and n_group > 1 and topk_group < n_group:
        return n_group, topk_group
    return None


def inspect_model(path: str | Path) -> ModelSpec:
    """ModelSpec of a local model folder, from its config alone (the model is built on the meta
    device: no weights are read), so inputs can be checked before the model loads."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:  # unreadable / malformed config.json, unknown model_type
        raise InputError(Path(path) / "config.json", "<file>", "a transformers model config", str(err)[:300]) from None
    adapter_for(config.model_type)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return spec_from_model(model)
