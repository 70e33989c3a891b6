"""Hooks that apply interventions and record routing in a transformers MoE model.

- Selection edits (mask, stimulate): the router's own forward runs under a TorchFunctionMode that
  rewrites the scores passed to its selection calls (`topk`, and `max` where the family selects with
  it) with `edit_selection_scores`, and hands back the router's *original* scores at the new
  indices. Each family's weighting code then runs unchanged. Calls over a grouped view
  [tokens, groups, experts/group] get the edit too and keep the edited values, so a forced expert's
  group wins and a masked one never lifts its group.
- Drop (after top-k) and recording: a forward pre-hook on the fused `experts` module, which every
  family calls with (hidden, top_k_index, top_k_weights).

With no intervention and no recording, no hook changes anything (outputs are bit-identical).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from harness.backends.hf_discovery import MoEBlock, Selection
from harness.mote.intervention import Intervention
from harness.mote.routing import (
    LayerTables,
    build_layer_tables,
    drop_after_topk,
    edit_selection_scores,
    expand_rows,
)

_SELECTION_FUNCS: dict[str, tuple[Callable[..., Any], ...]] = {
    "topk": (torch.topk, torch.Tensor.topk),
    "max": (torch.max, torch.Tensor.max),
}


class SelectionEditMode(TorchFunctionMode):
    """Edits the inputs of a router's selection calls for `n_tokens` tokens of `n_experts` experts."""

    def __init__(
        self,
        block: torch.Tensor | None,
        force: torch.Tensor | None,
        n_tokens: int,
        n_experts: int,
        ops: Sequence[str],
    ) -> None:
        super().__init__()
        self.block = block
        self.force = force
        self.n_tokens = n_tokens
        self.n_experts = n_experts
        self.funcs = {f: op for op in ops for f in _SELECTION_FUNCS[op]}
        self.edited = 0  # selection calls over [tokens, n_experts] that got the edit

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        op = self.funcs.get(func)
        if op is None or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        scores: torch.Tensor = args[0]
        dim = _reduction_dim(op, args, kwargs)
        if dim is None or dim % scores.dim() != scores.dim() - 1 or scores.shape[0] != self.n_tokens:
            return func(*args, **kwargs)
        if scores.dim() == 2 and scores.shape[1] == self.n_experts:
            edited = edit_selection_scores(scores, self.block, self.force)
            _, indices = func(edited, *args[1:], **kwargs)
            self.edited += 1
            original = scores.gather(-1, indices)
            return _same_return_type(op, original, indices)
        if scores.dim() == 3 and scores.shape[1] * scores.shape[2] == self.n_experts:
            shape = scores.shape
            block = None if self.block is None else self.block.reshape(shape)
            force = None if self.force is None else self.force.reshape(shape)
            return func(edit_selection_scores(scores, block, force), *args[1:], **kwargs)
        return func(*args, **kwargs)


def _reduction_dim(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    if op == "topk":
        return int(kwargs.get("dim", args[2] if len(args) > 2 else -1))
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)  # max(x) with no dim is a reduction
    return None if dim is None or isinstance(dim, torch.Tensor) else int(dim)


def _same_return_type(op: str, values: torch.Tensor, indices: torch.Tensor) -> Any:
    if op == "topk":
        return torch.return_types.topk((values, indices))
    return torch.return_types.max((values, indices))


@dataclass
class StepCapture:
    """Routing of one forward pass: layer -> (topk_ids with -1 for dropped slots, weights), [T, k]."""

    shape: tuple[int, int]  # (rows, tokens per row) of this forward
    layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class RoutingController:
    """Owns the hooks of one model: the per-row intervention tables and the routing capture."""

    def __init__(self, blocks: Sequence[MoEBlock], selections: Sequence[Selection]) -> None:
        self.blocks = list(blocks)
        self.n_experts = {b.layer: b.n_experts for b in self.blocks}
        self.tables: dict[int, LayerTables] = {}
        self.n_rows = 1
        self.recording = False
        self.steps: list[StepCapture] = []
        self._current: StepCapture | None = None
        self._handles: list[Any] = []
        self._original_forwards: list[tuple[torch.nn.Module, Any]] = []
        for block, selection in zip(self.blocks, selections, strict=True):
            self._install(block, selection)

    # -- configuration per generate() call -------------------------------------------------------
    def configure(self, interventions: Sequence[Intervention], record: bool, device: torch.device) -> None:
        self.tables = build_layer_tables(interventions, self.n_experts, device)
        self.n_rows = len(interventions)
        self.recording = record
        self.steps = []
        self._current = None

    def reset(self) -> None:
        self.tables = {}
        self.n_rows = 1
        self.recording = False
        self.steps = []
        self._current = None

    def begin_step(self, rows: int, tokens_per_row: int) -> None:
        if self.recording:
            self._current = StepCapture((rows, tokens_per_row))
            self.steps.append(self._current)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for module, forward in self._original_forwards:
            module.forward = forward
        self._handles.clear()
        self._original_forwards.clear()

    # -- hooks -----------------------------------------------------------------------------------
    def _install(self, block: MoEBlock, selection: Selection) -> None:
        selector = selection.selector  # the router, or the block where the block itself selects (DBRX, Jamba)
        router_forward = selector.forward
        self._original_forwards.append((selector, router_forward))
        controller = self

        def routed_forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            tables = controller.tables.get(block.layer)
            if tables is None or not tables.edits_selection:
                return router_forward(hidden_states, *args, **kwargs)
            n_tokens = hidden_states.numel() // hidden_states.shape[-1]
            block_t = None if tables.block is None else expand_rows(tables.block, n_tokens)
            force_t = None if tables.force is None else expand_rows(tables.force, n_tokens)
            mode = SelectionEditMode(block_t, force_t, n_tokens, block.n_experts, selection.ops)
            with mode:
                out = router_forward(hidden_states, *args, **kwargs)
            if not mode.edited:  # the router selected some other way: the edit would be a silent no-op
                raise RuntimeError(
                    f"layer {block.layer}: {type(selector).__name__}.forward made no "
                    f"{'/'.join(selection.ops)} call over [{n_tokens} tokens, {block.n_experts} experts] "
                    "scores, so the mask / stimulate edit did not apply; it selected differently on the "
                    "probe forward at load"
                )
            return out

        selector.forward = routed_forward
        names = _experts_arg_names(block.experts)
        self._handles.append(
            block.experts.register_forward_pre_hook(self._experts_pre_hook(block.layer, names), with_kwargs=True)
        )

    def _experts_pre_hook(self, layer: int, names: tuple[str, str, str]) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            values = list(args) + [kwargs[n] for n in names[len(args) :]]
            hidden, ids, weights = values[0], values[1], values[2]
            tables = self.tables.get(layer)
            dropped = None
            changed = False
            if tables is not None and tables.drop is not None:
                drop = expand_rows(tables.drop, ids.shape[0])
                new_weights, dropped = drop_after_topk(ids, weights, drop)
                changed = new_weights is not weights
                weights = new_weights
            if self.recording and self._current is not None:
                recorded = ids if dropped is None else ids.masked_fill(dropped, -1)
                self._current.layers[layer] = (
                    recorded.detach().to("cpu", torch.int32),
                    weights.detach().float().cpu(),
                )
            if not changed:
                return None
            if len(args) >= 3:
                return (hidden, ids, weights, *args[3:]), kwargs
            new_args = [hidden, ids, weights][: len(args)]
            new_kwargs = dict(kwargs)
            for name, value in zip(names[len(args) :], [hidden, ids, weights][len(args) :], strict=True):
                new_kwargs[name] = value
            return tuple(new_args), new_kwargs

        return hook


def _experts_arg_names(experts: torch.nn.Module) -> tuple[str, str, str]:
    params = [p for p in inspect.signature(experts.forward).parameters.values() if p.name != "self"]
    if len(params) < 3:
        raise TypeError(
            f"{type(experts).__name__}.forward takes {len(params)} arguments, expected (hidden, ids, weights)"
        )
    return params[0].name, params[1].name, params[2].name
