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

import numpy as np
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
    """Routing of one forward pass: layer -> (topk_ids with -1 for dropped slots, weights), [T, k].

    The tensors stay on the model's device until the generate call ends (`host_steps`): a host copy
    per layer per step would make the host wait for the device at every MoE layer."""

    shape: tuple[int, int]  # (rows, tokens per row) of this forward
    layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class HostStep:
    """One forward pass's routing on the host: ids int32 and weights float32, each
    [rows, tokens per row, layers, k] with layers in the order `host_steps` was given."""

    ids: np.ndarray
    weights: np.ndarray


def host_steps(steps: Sequence[StepCapture], layers: Sequence[int]) -> list[HostStep]:
    """Every step's capture in two device-to-host copies in all (ids, weights), split back per step."""
    if not steps:
        return []
    missing = [(i, layer) for i, step in enumerate(steps) for layer in layers if layer not in step.layers]
    if missing:
        index, layer = missing[0]
        raise RuntimeError(f"step {index}: MoE layer {layer} recorded no routing ({len(missing)} step-layers missing)")
    ids = torch.cat([torch.stack([s.layers[layer][0] for layer in layers], dim=1) for s in steps]).cpu().numpy()
    weights = torch.cat([torch.stack([s.layers[layer][1] for layer in layers], dim=1) for s in steps]).cpu().numpy()
    out = []
    start = 0
    for step in steps:
        rows, per_row = step.shape
        stop = start + rows * per_row
        shape = (rows, per_row, len(layers), -1)
        out.append(HostStep(ids[start:stop].reshape(shape), weights[start:stop].reshape(shape)))
        start = stop
    return out


class _LayerHooks:
    """One MoE layer's two hooks, installed only while a call needs them: a layer that no row of the
    call touches, and every layer of a call with no intervention and no recording, runs the model's
    own modules with no hook at all."""

    def __init__(
        self,
        selector: torch.nn.Module,
        routed_forward: Callable[..., Any],
        experts: torch.nn.Module,
        pre_hook: Callable[..., Any],
    ) -> None:
        self.selector = selector
        self.routed_forward = routed_forward
        self.own_forward = selector.__dict__.get("forward")  # an instance-level forward someone set before us
        self.experts = experts
        self.pre_hook = pre_hook
        self.selecting = False
        self.handle: Any = None

    def arm(self, selection: bool, experts: bool) -> None:
        if selection != self.selecting:
            if selection:
                self.selector.forward = self.routed_forward
            elif self.own_forward is not None:
                self.selector.forward = self.own_forward
            else:
                del self.selector.forward  # back to the class's method
            self.selecting = selection
        if experts != (self.handle is not None):
            if experts:  # first, so that any other pre-hook sees the weights the experts will get
                self.handle = self.experts.register_forward_pre_hook(self.pre_hook, with_kwargs=True, prepend=True)
            else:
                self.handle.remove()
                self.handle = None


class RoutingController:
    """Owns the hooks of one model: the per-row intervention tables and the routing capture.

    `configure` installs, layer by layer, only the hooks the call needs (a selection edit, a drop,
    recording); `reset` takes them all off again. `step_source` (the model) gets a pre-hook that
    opens each forward pass's capture while recording."""

    def __init__(
        self, blocks: Sequence[MoEBlock], selections: Sequence[Selection], step_source: torch.nn.Module | None = None
    ) -> None:
        self.blocks = list(blocks)
        self.n_experts = {b.layer: b.n_experts for b in self.blocks}
        self.tables: dict[int, LayerTables] = {}
        self.n_rows = 1
        self.recording = False
        self.steps: list[StepCapture] = []
        self._current: StepCapture | None = None
        self._step_source = step_source
        self._step_handle: Any = None
        self._layers: dict[int, _LayerHooks] = {}
        for block, selection in zip(self.blocks, selections, strict=True):
            self._layers[block.layer] = self._hooks_of(block, selection)

    # -- configuration per generate() call -------------------------------------------------------
    def configure(self, interventions: Sequence[Intervention], record: bool, device: torch.device) -> None:
        self.tables = build_layer_tables(interventions, self.n_experts, device)
        self.n_rows = len(interventions)
        self.recording = record
        self.steps = []
        self._current = None
        self._arm()

    def reset(self) -> None:
        self.tables = {}
        self.n_rows = 1
        self.recording = False
        self.steps = []
        self._current = None
        self._arm()

    def begin_step(self, rows: int, tokens_per_row: int) -> None:
        if self.recording:
            self._current = StepCapture((rows, tokens_per_row))
            self.steps.append(self._current)

    def armed(self) -> dict[int, tuple[bool, bool]]:
        """Layer -> (selection edit installed, experts pre-hook installed)."""
        return {layer: (hooks.selecting, hooks.handle is not None) for layer, hooks in self._layers.items()}

    def remove(self) -> None:
        self.reset()
        self._layers.clear()

    # -- hooks -----------------------------------------------------------------------------------
    def _arm(self) -> None:
        for layer, hooks in self._layers.items():
            tables = self.tables.get(layer)
            selection = tables is not None and tables.edits_selection
            drop = tables is not None and tables.drop is not None
            hooks.arm(selection, drop or self.recording)
        if self._step_source is not None and self.recording != (self._step_handle is not None):
            if self.recording:
                self._step_handle = self._step_source.register_forward_pre_hook(self._on_forward, with_kwargs=True)
            else:
                self._step_handle.remove()
                self._step_handle = None

    def _on_forward(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inputs = kwargs.get("input_ids")
        if inputs is None:
            inputs = kwargs.get("inputs_embeds", args[0] if args else None)
        if isinstance(inputs, torch.Tensor):
            self.begin_step(int(inputs.shape[0]), int(inputs.shape[1]))

    def _hooks_of(self, block: MoEBlock, selection: Selection) -> _LayerHooks:
        selector = selection.selector  # the router, or the block where the block itself selects (DBRX, Jamba)
        router_forward = selector.forward
        controller = self

        def routed_forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            tables = controller.tables[block.layer]  # installed (`_arm`) only while they edit this layer's selection
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

        names = _experts_arg_names(block.experts)
        return _LayerHooks(selector, routed_forward, block.experts, self._experts_pre_hook(block.layer, names))

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
                self._current.layers[layer] = (  # copies on the device: no host sync here
                    recorded.detach().to(torch.int32, copy=True),
                    weights.detach().to(torch.float32, copy=True),
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
