"""The routing change: one small set of pure torch functions that every backend calls.

Two edits, both expressed over boolean expert tables so that rows of one batch can differ:

(a) `edit_selection_scores`: edit the scores a router *selects* over. Mask-suppressed experts get
    -inf (never chosen; the next-best takes the slot), stimulated experts are lifted above every
    other score (always chosen, displacing the weakest selected one). Applied to the tensor passed to the router's own
    selection call, so each family's weighting code (softmax, sigmoid + correction bias,
    renormalisation, scaling) runs unchanged. The same edit on a grouped view [.., G, E/G] makes a
    forced expert's group always win and keeps a masked expert from ever lifting its group.
(b) `drop_after_topk`: after selection, zero the weights of drop-suppressed experts and rescale
    the remaining selected weights to the token's original weight sum (MoTE: the slot stays empty).

No model, module or backend is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.mote.intervention import Intervention


@dataclass(frozen=True)
class LayerTables:
    """Per-row flags of one MoE layer, each a bool tensor [rows, n_experts] or None if unused."""

    block: torch.Tensor | None = None  # suppress/mask: excluded before top-k
    force: torch.Tensor | None = None  # stimulate: forced into the top-k
    drop: torch.Tensor | None = None  # suppress/drop: weight zeroed after top-k

    @property
    def edits_selection(self) -> bool:
        return self.block is not None or self.force is not None


def build_layer_tables(
    interventions: Sequence[Intervention], n_experts: dict[int, int], device: torch.device | str = "cpu"
) -> dict[int, LayerTables]:
    """Tables for every MoE layer that at least one row's intervention touches.

    `interventions[r]` is row r's intervention; `n_experts` maps absolute MoE layer index to its
    routed-expert count. Layers no row touches are absent (the backend then leaves them alone).
    """
    rows = len(interventions)
    flags: dict[int, dict[str, torch.Tensor]] = {}
    for row, intervention in enumerate(interventions):
        if intervention.is_none:
            continue
        which = "force" if intervention.kind == "stimulate" else "block" if intervention.mode == "mask" else "drop"
        for layer, expert in intervention.experts:
            if layer not in n_experts:
                raise ValueError(f"layer {layer} is not an MoE layer of this model")
            if expert >= n_experts[layer]:
                raise ValueError(f"expert {expert} out of range for layer {layer} ({n_experts[layer]} experts)")
            table = flags.setdefault(layer, {}).get(which)
            if table is None:
                table = torch.zeros(rows, n_experts[layer], dtype=torch.bool)  # filled on the host
                flags[layer][which] = table
            table[row, expert] = True
    # one copy per table: filling a device table flag by flag would launch a kernel per flag
    return {layer: LayerTables(**{k: t.to(device) for k, t in tables.items()}) for layer, tables in flags.items()}


def expand_rows(table: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """[rows, E] -> [tokens, E] for tokens laid out row-major (row r owns tokens r*S .. r*S+S-1)."""
    rows = table.shape[0]
    if rows == n_tokens:
        return table
    if rows == 1:
        return table.expand(n_tokens, -1)  # a view: no copy
    if n_tokens % rows:
        raise ValueError(f"{n_tokens} tokens cannot be split evenly over {rows} rows")
    return table.repeat_interleave(n_tokens // rows, dim=0)


def rows_for_tokens(table: torch.Tensor, row_of_token: torch.Tensor) -> torch.Tensor:
    """[rows, E] -> [tokens, E] for tokens packed in any layout: token t belongs to row `row_of_token[t]`.

    vLLM packs each step's requests back to back with different lengths (prefill chunks and single
    decode tokens mixed), so an even split (`expand_rows`) does not apply; the engine gives each
    token's row instead.
    """
    return table.index_select(0, row_of_token.to(device=table.device, dtype=torch.long))


def edit_selection_scores(scores: torch.Tensor, block: torch.Tensor | None, force: torch.Tensor | None) -> torch.Tensor:
    """Scores with blocked experts at -inf and forced experts lifted above every other score.

    `block` is bool and `force` bool or its `force_lift` in the scores' dtype, broadcastable to
    `scores` (per token [T, E], or reshaped like a grouped view). A forced score s gets the dtype's
    largest finite value M added: s + M is above every score not forced (exactly M or +inf for the
    scores routers produce; only scores within |s| of M could tie it, even in float16), while an
    expert the family's own code already set to -inf (one it already picked in a sequential
    selection, or one outside the chosen groups) stays at -inf: never forced back in. With a lift made
    once, forcing is one add (a decode step at batch 1 pays a launch per op).
    """
    out = scores
    if block is not None:
        out = out.masked_fill(block, float("-inf"))
    if force is not None:
        out = out + (force if force.dtype == scores.dtype else force_lift(force > 0, scores.dtype))
    return out


def force_lift(force: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool force table as `edit_selection_scores` adds it: `dtype`'s largest finite value where
    forced, 0 elsewhere."""
    return selection_lift(None, force, dtype)


def selection_lift(block: torch.Tensor | None, force: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Both selection edits as one table to add to the scores: -inf where blocked, `dtype`'s largest
    finite value where forced, 0 elsewhere. For the scores routers produce (finite, or -inf where the
    family's own code excluded an expert), `scores + lift` equals `edit_selection_scores(scores, block,
    force)` bit for bit, in one op; a score of +inf or NaN, which no router produces, would not be
    blocked by it."""
    like = block if block is not None else force
    if like is None:
        raise ValueError("a selection lift needs a block or a force table")
    lift = torch.zeros(like.shape, dtype=dtype, device=like.device)
    if force is not None:
        lift.masked_fill_(force, torch.finfo(dtype).max)
    if block is not None:
        lift.masked_fill_(block, float("-inf"))
    return lift


def drop_after_topk(
    topk_ids: torch.Tensor, topk_weights: torch.Tensor, drop: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the selected weights of dropped experts and rescale the rest to the original sum.

    `topk_ids`/`topk_weights` [T, k]; `drop` bool [T, E]. Returns (weights, dropped slots [T, k]).
    A token whose selected experts are all dropped gets all-zero routed weights. Tokens with no
    dropped slot keep their weights bit for bit.
    """
    dropped = drop.gather(1, topk_ids.long())
    # "nothing dropped" skips the rest on CPU only: on an accelerator the test would wait for the device
    # (a host sync per layer), which costs more than the few kernels it saves
    if dropped.device.type == "cpu" and not bool(dropped.any()):
        return topk_weights, dropped
    w = topk_weights if topk_weights.dtype == torch.float32 else topk_weights.float()
    return rescale_kept(w, w.masked_fill(dropped, 0.0), topk_weights.dtype), dropped


def keep_table(drop: torch.Tensor) -> torch.Tensor:
    """A bool drop table as float32 factors: 0.0 where dropped, 1.0 elsewhere (`keep.gather(1, ids)`
    then gives each selected slot its factor, and one multiply zeroes the dropped ones)."""
    return torch.logical_not(drop).to(torch.float32)


def rescale_kept(
    weights: torch.Tensor, kept: torch.Tensor, dtype: torch.dtype, every_slot_dropped: bool = True
) -> torch.Tensor:
    """`kept` (the selected `weights`, both float32, with dropped slots zeroed; a fresh tensor: it is
    scaled in place) rescaled to each token's original weight sum, in `dtype`.

    A few small ops (a decode step at batch 1 is host-bound: every op is a launch). A token with no
    dropped slot gets the factor s / s = 1.0 exactly, so its weights come back bit for bit; one with
    every slot dropped gets s / 0, set to 0 (as is a factor that is not a number). A caller that knows
    no token had `every_slot_dropped` (and no weight is infinite or NaN) skips that guard."""
    factor = weights.sum(dim=-1, keepdim=True).div_(kept.sum(dim=-1, keepdim=True))
    if every_slot_dropped:
        factor.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return kept.mul_(factor).to(dtype)
