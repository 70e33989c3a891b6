"""Where a transformers MoE model keeps its routers and experts, found from the model's own structure.

No per-family list: an MoE block is any module with a fused `experts` child (a module whose class name
ends in `Experts`, shared experts aside); its router is the sibling holding the [n_experts, hidden]
weight (directly, or in a Linear inside it: `router.gate`, `gate.wg`, `router.layer`); the layer index
comes from the block's path (`layers.N`, `blocks.N`, `h.N`). Which torch call selects the experts
(`topk`, or `max` for PhiMoE and DeepSeek-V2's group scores) and whether the router or the block makes
it is observed on one short forward (`probe_selection`), so the backend edits exactly the call the
model makes. The routing math is never re-implemented here (see hf_hooks.py).

Families whose routing the hooks cannot reach are refused before any weight loads, with the reason
(`REFUSED`); a model with no routed experts module is refused the same way.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from harness.common.errors import InputError, UnsupportedModelError
from harness.mote.spec import ModelSpec

# model_type -> why its routing cannot be edited by the hooks (checked before loading).
REFUSED: dict[str, str] = {
    "doge": "routes through product keys over embedding rows (no experts module and no top-k over experts)",
    "jetmoe": "experts take sorted dispatch (inputs, expert_size) with no per-token expert ids, and attention "
    "holds a second MoE in the same layer; drop and recording need ids at the experts input",
    "zaya": "the router is an MLP over n_experts + 1 classes (a 'null' expert) on [batch, seq] scores and carries "
    "state from layer to layer; its selection is not a top-k over the routed experts",
    "deepseek_v4": "its first layers are hash-routed (experts looked up from the token id, no selection), so "
    "mask and stimulate cannot apply there",
    "llama4_text": "the router returns dense sigmoid scores over all experts and the experts take no expert ids "
    "(every expert runs on score-scaled input), so drop and recording have no ids to act on",
    "llama4": "see llama4_text: dense router scores, experts take no expert ids",
    "switch_transformers": "encoder-decoder with capacity-limited argmax routing (a token's route depends on the "
    "rest of the batch); no causal-LM class",
    "nllb-moe": "encoder-decoder with capacity-limited top-2 routing and sampled second experts; no causal-LM class",
    "vitpose_backbone": "experts are picked by dataset index, not routed per token; a vision backbone",
}

_LAYER_PATH = re.compile(r"(?:^|\.)(?:layers|blocks|h)\.(\d+)(?:\.|$)")
_TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "moe_k", "top_k_experts", "num_experts_per_token", "top_k")


@dataclass(frozen=True)
class MoEBlock:
    layer: int  # absolute decoder layer index
    path: str  # module path of the block, e.g. "model.layers.3.mlp"
    block: nn.Module
    router: nn.Module  # the router module (holds the [n_experts, hidden] weight)
    experts: nn.Module  # the fused experts module, called with (hidden, top-k ids, top-k weights)
    n_experts: int

    @property
    def router_name(self) -> str:
        return _child_name(self.block, self.router)


@dataclass(frozen=True)
class Selection:
    """How a block selects its experts, observed on a forward: which module's forward makes the call
    (the router, or the block itself for DBRX and Jamba) and with which torch calls."""

    selector: nn.Module
    where: str  # "router" | "block"
    ops: tuple[str, ...]  # ("topk",), ("max",), ("max", "topk")
    grouped: bool  # a call over a [tokens, groups, experts/group] view


def refusal(model_type: str) -> str | None:
    return REFUSED.get(model_type)


def check_supported(model_type: str) -> None:
    reason = refusal(model_type)
    if reason is not None:
        raise UnsupportedModelError(f"model_type {model_type!r} is not supported: {reason}")


def find_moe_blocks(model: nn.Module) -> list[MoEBlock]:
    """Every MoE block of `model`, in layer order (dense layers have none)."""
    model_type = str(getattr(model.config, "model_type", type(model).__name__))
    hidden = _hidden_size(model)
    blocks: list[MoEBlock] = []
    for path, module in model.named_modules():
        experts_name = _experts_child(module)
        if experts_name is None:
            continue
        experts = getattr(module, experts_name)
        n_experts = _count_experts(experts)
        router = _router_of(module, experts_name, n_experts, hidden)
        where = _LAYER_PATH.search(path)
        if n_experts is None:
            raise UnsupportedModelError(f"{model_type}: cannot count the experts of {type(experts).__name__} at {path}")
        if router is None or where is None:
            missing = "no router holding an [n_experts, hidden] weight" if router is None else "no layer index"
            raise UnsupportedModelError(f"{model_type}: MoE block {path} has {missing}")
        blocks.append(MoEBlock(int(where.group(1)), path, module, router, experts, n_experts))
    if not blocks:
        raise UnsupportedModelError(
            f"{model_type}: no routed-experts module found (a module with an `experts` child beside a router); "
            "the model is dense or routes in a way the hooks cannot reach"
        )
    per_layer = Counter(b.layer for b in blocks)
    crowded = [layer for layer, n in per_layer.items() if n > 1]
    if crowded:
        raise UnsupportedModelError(
            f"{model_type}: layer {crowded[0]} holds {per_layer[crowded[0]]} MoE blocks "
            f"({', '.join(b.path for b in blocks if b.layer == crowded[0])}); interventions name one block per layer"
        )
    return sorted(blocks, key=lambda b: b.layer)


def _experts_child(module: nn.Module) -> str | None:
    for name, child in module.named_children():
        if "shared" in name.lower():
            continue
        if name == "experts" or type(child).__name__.endswith("Experts"):
            return name
    return None


def _count_experts(experts: nn.Module) -> int | None:
    if isinstance(experts, nn.ModuleList):
        return len(experts)
    for attr in ("num_experts", "n_experts", "num_local_experts"):
        value = getattr(experts, attr, None)
        if isinstance(value, int):
            return value
    for param in experts.parameters(recurse=False):
        if param.dim() == 3:
            return int(param.shape[0])
    return None


def _router_of(block: nn.Module, experts_name: str, n_experts: int | None, hidden: int) -> nn.Module | None:
    """The block's child that holds the [n_experts, hidden] routing weight (itself or in a Linear inside it).
    Rows may exceed n_experts where a router also scores zero-compute experts (LongCat-Flash)."""
    found: list[tuple[bool, int, bool, str]] = []
    for name, module in block.named_modules():
        top = name.split(".")[0]
        if not name or top == experts_name or "shared" in top.lower():
            continue
        weight = getattr(module, "weight", None)
        if (
            isinstance(weight, torch.Tensor)
            and weight.dim() == 2
            and weight.shape[1] == hidden
            and (n_experts is None or weight.shape[0] >= n_experts)
            and weight.shape[0] > 1
        ):
            found.append((weight.shape[0] != n_experts, name.count("."), top not in ("gate", "router"), top))
    if not found:
        return None
    return getattr(block, min(found)[-1])


def _child_name(parent: nn.Module, child: nn.Module) -> str:
    return next((name for name, module in parent.named_children() if module is child), "?")


def _hidden_size(model: nn.Module) -> int:
    config: Any = model.config
    for name in ("hidden_size", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise UnsupportedModelError(f"{config.model_type}: no hidden_size in the config")


def top_k_of(model: nn.Module) -> int:
    config: Any = model.config
    for source in (config, getattr(config, "ffn_config", None)):
        for name in (*_TOP_K_KEYS, "moe_top_k"):
            value = getattr(source, name, None) if source is not None else None
            if isinstance(value, int):
                return value
    raise UnsupportedModelError(f"{config.model_type}: cannot find the router's top-k in the config")


def expert_groups(config: Any) -> tuple[int, int] | None:
    """(n_group, topk_group) of a grouped top-k router, None where routing is not grouped (DeepSeek-V2
    groups only with topk_method group_limited_greedy; V3 and GLM-4 MoE always)."""
    if getattr(config, "topk_method", None) == "greedy":
        return None
    n_group = getattr(config, "n_group", getattr(config, "num_expert_group", None))
    topk_group = getattr(config, "topk_group", None)
    if isinstance(n_group, int) and isinstance(topk_group, int) and n_group > 1 and topk_group < n_group:
        return n_group, topk_group
    return None


def spec_from_model(model: nn.Module) -> ModelSpec:
    config: Any = model.config
    model_type = str(config.model_type)
    check_supported(model_type)
    blocks = find_moe_blocks(model)
    n_layers = getattr(config, "num_hidden_layers", getattr(config, "n_layers", None))
    return ModelSpec(
        family=model_type,
        n_layers=int(n_layers) if isinstance(n_layers, int) else blocks[-1].layer + 1,
        moe_layers=tuple(b.layer for b in blocks),
        n_experts={b.layer: b.n_experts for b in blocks},
        top_k=top_k_of(model),
        groups=expert_groups(config),
    )


def inspect_model(path: str | Path) -> ModelSpec:
    """ModelSpec of a local model folder, from its config alone (the model is built on the meta
    device: no weights are read), so inputs are checked and unsupported families refused before the
    model loads."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:  # unreadable / malformed config.json, unknown model_type
        raise InputError(Path(path) / "config.json", "<file>", "a transformers model config", str(err)[:300]) from None
    check_supported(str(config.model_type))
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError:  # no causal-LM class for this config (a multimodal model's text part, an encoder)
        raise UnsupportedModelError(
            f"{config.model_type}: transformers has no causal-LM class for it (AutoModelForCausalLM, which "
            "`harness generate` loads)"
        ) from None
    return spec_from_model(model)


# -- which call selects the experts, observed on one forward -------------------------------------------

_OPS = ("topk", "max")


class _SelectionProbe(TorchFunctionMode):
    """Logs the topk / max calls over [tokens, n_experts] (or a grouped view) made inside each block."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[int, str]] = []  # (block index, "router" | "block")
        self.calls: list[tuple[int, str, str, tuple[int, ...]]] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        name = getattr(func, "__name__", "")
        if self.stack and name in _OPS and args and isinstance(args[0], torch.Tensor):
            index, where = self.stack[-1]
            self.calls.append((index, where, name, tuple(args[0].shape)))
        return func(*args, **(kwargs or {}))


def probe_selection(model: nn.Module, blocks: list[MoEBlock], input_ids: torch.Tensor) -> list[Selection]:
    """Run one forward and report, per block, where and with which calls it selects its experts."""
    probe = _SelectionProbe()
    with _scoped(probe, blocks), torch.no_grad(), probe:
        model(input_ids=input_ids, use_cache=False)
    return [_selection_of(i, block, probe.calls) for i, block in enumerate(blocks)]


class _scoped:
    """Forward hooks that tell the probe which block (and whether its router) is running."""

    def __init__(self, probe: _SelectionProbe, blocks: list[MoEBlock]) -> None:
        self.probe = probe
        self.blocks = blocks
        self.handles: list[Any] = []

    def __enter__(self) -> None:
        for index, block in enumerate(self.blocks):
            for where, module in (("block", block.block), ("router", block.router)):
                self.handles.append(module.register_forward_pre_hook(self._push(index, where)))
                self.handles.append(module.register_forward_hook(self._pop))

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _push(self, index: int, where: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self.probe.stack.append((index, where))

        return hook

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        self.probe.stack.pop()


def _selection_of(index: int, block: MoEBlock, calls: list[tuple[int, str, str, tuple[int, ...]]]) -> Selection:
    def over_experts(shape: tuple[int, ...]) -> bool:
        return shape[-1] == block.n_experts or (len(shape) >= 3 and shape[-1] * shape[-2] == block.n_experts)

    mine = [(where, op, shape) for i, where, op, shape in calls if i == index and shape and over_experts(shape)]
    for where, selector in (("router", block.router), ("block", block.block)):
        ops = tuple(sorted({op for w, op, _ in mine if w == where}))
        if ops:
            grouped = any(len(shape) == 3 for w, _, shape in mine if w == where)
            return Selection(selector, where, ops, grouped)
    raise UnsupportedModelError(
        f"layer {block.layer}: {type(block.block).__name__} made no topk/max call over its {block.n_experts} "
        "experts on a forward; its routing is not a top-k the hooks can edit"
    )

