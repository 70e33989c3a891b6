"""Top-k selection under a mask/stimulate edit, with each router's own weighting at the new ids.

vLLM's routers fuse scoring, top-k and weighting (a C++/CUDA `topk_softmax`, a grouped-top-k
kernel), so editing the logits before them would also change a forced expert's *weight*. The HF
backend selects on edited scores and weighs the chosen experts from their original scores; this
module does the same for vLLM's router kinds: the selection scores (softmax / sigmoid, plus the
correction bias, grouped) go through `edit_selection_scores` (the shared routing function), and
the weights are the router's unbiased scores at the chosen ids, renormalised and scaled exactly as
that router does. Only tokens whose row carries a selection edit use this path; all others keep
vLLM's own output bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.mote.routing import edit_selection_scores
from harness.vllm_plugin.checks import MoteVLLMError


@dataclass(frozen=True)
class RouterMath:
    """What a vLLM router computes, read from its attributes."""

    top_k: int
    scoring_func: str  # softmax | sigmoid
    renormalize: bool
    n_groups: int  # 0 = not grouped
    topk_group: int
    bias: torch.Tensor | None  # e_score_correction_bias: selection only
    scale: float  # routed_scaling_factor applied inside the router


def router_math(router: Any) -> RouterMath:
    """Describe `router`, or raise if its selection cannot be edited exactly (then only drop and
    recording work on that layer)."""
    kind = type(router).__name__
    top_k = int(router.top_k)
    renormalize = bool(getattr(router, "renormalize", True))
    scoring = str(getattr(router, "scoring_func", "softmax"))
    bias = getattr(router, "e_score_correction_bias", None)
    bias_t = bias.data if isinstance(bias, torch.Tensor) else None
    scale = float(getattr(router, "routed_scaling_factor", 1.0))
    groups = int(getattr(router, "num_expert_group", 0) or 0)
    topk_group = int(getattr(router, "topk_group", 0) or 0)
    if getattr(router, "num_fused_shared_experts", 0):
        raise MoteVLLMError(f"{kind}: fused shared experts in the top-k are not supported for mask/stimulate")
    if getattr(router, "_hash_indices_table", None) is not None or scoring not in ("softmax", "sigmoid"):
        raise MoteVLLMError(f"{kind}: scoring {scoring!r} / hash routing is not supported for mask/stimulate")
    if kind == "CPURouter":
        if getattr(router, "custom_routing_function", None) is not None:
            raise MoteVLLMError("CPURouter with a custom routing function: mask/stimulate not supported")
        if router.use_grouped_topk:
            return RouterMath(top_k, scoring, renormalize, groups, topk_group, bias_t, scale)
        # the CPU softmax path ignores bias and scale
        return RouterMath(top_k, "softmax", renormalize, 0, 0, None, 1.0)
    if kind == "FusedTopKRouter":
        return RouterMath(top_k, scoring, renormalize, 0, 0, None, 1.0)
    if kind == "FusedTopKBiasRouter":
        if getattr(router, "bias_vl", None) is not None:
            raise MoteVLLMError("FusedTopKBiasRouter with a vision bias: mask/stimulate not supported")
        return RouterMath(top_k, scoring, renormalize, 0, 0, bias_t, scale)
    if kind == "GroupedTopKRouter":
        return RouterMath(top_k, scoring, renormalize, groups, topk_group, bias_t, scale)
    raise MoteVLLMError(
        f"router {kind}: mask/stimulate needs the router's math (supported: CPURouter, FusedTopKRouter, "
        "FusedTopKBiasRouter, GroupedTopKRouter); drop-mode suppression and recording still work"
    )


def edited_routing(
    math: RouterMath, logits: torch.Tensor, block: torch.Tensor | None, force: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights float32 [T, k], ids int64 [T, k]) with selection on edited scores and weights from
    the original ones. `block` / `force`: bool [T, E], or [1, E] for every token."""
    logits = logits.float()
    if math.scoring_func == "softmax" and math.bias is None and math.n_groups <= 1 and math.scale == 1.0:
        # softmax is monotonic per token: select on the edited logits (as vLLM's own softmax top-k
        # does) and weigh with the softmax share of the chosen experts: fewer ops, same result
        ids = torch.topk(edit_selection_scores(logits, block, force), k=math.top_k, dim=-1, sorted=False)[1]
        chosen = logits.gather(1, ids)
        if math.renormalize:
            return torch.softmax(chosen, dim=-1), ids
        return (chosen - torch.logsumexp(logits, dim=-1, keepdim=True)).exp(), ids
    scores = torch.softmax(logits, dim=-1) if math.scoring_func == "softmax" else logits.sigmoid()
    choice = scores if math.bias is None else scores + math.bias.float().unsqueeze(0)
    n_tokens, n_experts = choice.shape
    if math.n_groups > 1 and n_experts % math.n_groups == 0 and n_experts > math.n_groups:
        shape = (n_tokens, math.n_groups, n_experts // math.n_groups)
        flag_shape = (-1, math.n_groups, n_experts // math.n_groups)  # flags may be one broadcast row
        view = edit_selection_scores(
            choice.view(shape),
            None if block is None else block.reshape(flag_shape),
            None if force is None else force.reshape(flag_shape),
        )
        # with a correction bias a group scores the sum of its top-2, otherwise its max (as vLLM)
        top = view.topk(2, dim=-1)[0].sum(dim=-1) if math.bias is not None else None
        group_scores = top if top is not None else view.max(dim=-1).values
        group_idx = torch.topk(group_scores, k=math.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
        keep = group_mask.unsqueeze(-1).expand(shape).reshape(n_tokens, n_experts)
        choice = choice.masked_fill(~keep, float("-inf"))
    edited = edit_selection_scores(choice, block, force)
    ids = torch.topk(edited, k=math.top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, ids)
    if math.renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if math.scale != 1.0:
        weights = weights * math.scale
    return weights, ids
