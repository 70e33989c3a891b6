"""Hooks that apply interventions and record routing in a transformers MoE model.

- Selection edits (mask, stimulate): the router's selection calls (`topk`, and `max` where the family
  selects with it) get the scores plus one `selection_lift` table (-inf where masked, the dtype's
  largest finite value where forced: the edit of `edit_selection_scores`, in one add), and hand back
  the router's *original* scores at the new indices. Each family's weighting code then runs
  unchanged. The calls are found by running the router's forward under a TorchFunctionMode, or,
  where a probe showed it edits the same calls, a copy of that forward whose `torch` is a stand-in
  (`_FastSelection`). Calls over a grouped view [tokens, groups, experts/group] get the edit too and
  keep the edited values, so a forced expert's group wins and a masked one never lifts its group.
- Drop (after top-k) and recording: an instance-level forward of the fused `experts` module, which
  every family calls with (hidden, top_k_index, top_k_weights); `LayerDrop` zeroes the dropped slots'
  weights and rescales the rest.

With no intervention and no recording, no hook is installed (outputs are bit-identical).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FunctionType, MethodType, ModuleType
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from harness.backends.hf_discovery import MoEBlock, Selection
from harness.mote.intervention import Intervention
from harness.mote.routing import (
    LayerTables,
    build_layer_tables,
    expand_rows,
    keep_table,
    rescale_kept,
    selection_lift,
)

_SELECTION_FUNCS: dict[str, tuple[Callable[..., Any], ...]] = {
    "topk": (torch.topk, torch.Tensor.topk),
    "max": (torch.max, torch.Tensor.max),
}


class SelectionLifts:
    """One layer's selection edit (mask, stimulate) as `selection_lift` tables [rows, E], one per score
    dtype its router selects in, each made once per configured call: the edit of a selection call is
    then one add (at batch 1 every op of a hook is a few microseconds of a decode step)."""

    __slots__ = ("_lifts", "block", "force")

    def __init__(self, block: torch.Tensor | None, force: torch.Tensor | None) -> None:
        self.block = block
        self.force = force
        self._lifts: dict[torch.dtype, torch.Tensor] = {}

    def for_scores(self, scores: torch.Tensor, n_tokens: int) -> torch.Tensor:
        lift = self._lifts.get(scores.dtype)
        if lift is None:
            lift = self._lifts[scores.dtype] = selection_lift(self.block, self.force, scores.dtype)
        return expand_rows(lift, n_tokens)


# selected slots of at most this many are tested for a dropped expert on the host (CPU tensors only)
HOST_TEST_SLOTS = 64


class LayerDrop:
    """One layer's drop for one configured call: the drop table as float factors (`keep_table`) and,
    where the call has one row on the CPU, that row's dropped experts as a set. A decode step's few
    selected experts are tested against the set on the host: no selected expert dropped (the common
    case) then costs no tensor op, where the test on tensors (a gather, an any) costs two, each a
    few microseconds in a forward pass."""

    __slots__ = ("dropped_experts", "keep", "on_cpu")

    def __init__(self, drop: torch.Tensor) -> None:
        self.keep = keep_table(drop)
        self.on_cpu = drop.device.type == "cpu"
        single = self.on_cpu and drop.shape[0] == 1
        self.dropped_experts = frozenset(drop[0].nonzero().flatten().tolist()) if single else None

    def apply(self, ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weights with dropped slots zeroed and the rest rescaled, each slot's factor [T, k]: 1.0
        kept, 0.0 dropped), or (`weights` itself, None) where no selected slot is dropped."""
        every_slot_dropped = True  # possibly, for some token: the factor's guard runs
        if self.dropped_experts is not None and ids.numel() <= HOST_TEST_SLOTS:
            selected = ids.tolist()
            if all(self.dropped_experts.isdisjoint(token) for token in selected):
                return weights, None
            every_slot_dropped = any(self.dropped_experts.issuperset(token) for token in selected)
        slots = expand_rows(self.keep, ids.shape[0]).gather(1, ids if ids.dtype == torch.int64 else ids.long())
        # on an accelerator the test would wait for the device (a host sync per layer): it runs on CPU only
        if self.on_cpu and self.dropped_experts is None and bool(slots.all()):
            return weights, None
        w = weights if weights.dtype == torch.float32 else weights.float()
        return rescale_kept(w, w * slots, weights.dtype, every_slot_dropped), slots


class SelectionEdit:
    """The edit of one router call: its lifts for `n_tokens` tokens of `n_experts` experts, applied to
    each selection call handed to `apply`, and how many calls it edited."""

    __slots__ = ("calls", "edited", "lifts", "n_experts", "n_tokens")

    def __init__(self, lifts: SelectionLifts, n_tokens: int, n_experts: int) -> None:
        self.lifts = lifts
        self.n_tokens = n_tokens
        self.n_experts = n_experts
        self.edited = 0  # selection calls over [tokens, n_experts] that got the edit
        self.calls = 0  # every call that got it, grouped views included

    def apply(self, func: Callable[..., Any], op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scores = args[0] if args else None
        if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
            return func(*args, **kwargs)
        dim = _reduction_dim(op, args, kwargs)
        shape = scores.shape
        if dim is None or dim % len(shape) != len(shape) - 1 or shape[0] != self.n_tokens:
            return func(*args, **kwargs)
        if len(shape) == 2 and shape[1] == self.n_experts:
            _, indices = func(scores + self.lifts.for_scores(scores, self.n_tokens), *args[1:], **kwargs)
            self.edited += 1
            self.calls += 1
            return _same_return_type(op, scores.gather(-1, indices), indices)
        if len(shape) == 3 and shape[1] * shape[2] == self.n_experts:
            self.calls += 1
            lift = self.lifts.for_scores(scores, self.n_tokens).reshape(shape)
            return func(scores + lift, *args[1:], **kwargs)
        return func(*args, **kwargs)


class SelectionEditMode(TorchFunctionMode):
    """Hands a router's selection calls (`ops`, as functions or tensor methods) to `edit`, wherever in its
    forward they are made; every other torch call inside passes through (a Python call each)."""

    def __init__(self, edit: SelectionEdit, ops: Sequence[str]) -> None:
        super().__init__()
        self.edit = edit
        self.funcs = {f: op for op in ops for f in _SELECTION_FUNCS[op]}

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        op = self.funcs.get(func)
        if op is None:
            return func(*args, **(kwargs or {}))
        return self.edit.apply(func, op, args, kwargs or {})


class _TorchWithEdits(ModuleType):
    """`torch` as a copy of a router's forward sees it (its globals' `torch`): the selection functions go
    to the current edit, every other name is torch's own. Only the calls the forward itself makes as
    `torch.topk(...)` / `torch.max(...)` are seen, so it stands in for the mode only where a probe showed
    it edits exactly the calls the mode does (`_FastSelection`)."""

    def __init__(self, ops: Sequence[str]) -> None:
        super().__init__("torch")
        self.edit: SelectionEdit | None = None
        for op in ops:
            setattr(self, op, self._selection(op))

    def _selection(self, op: str) -> Callable[..., Any]:
        func = getattr(torch, op)

        def call(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs) if self.edit is None else self.edit.apply(func, op, args, kwargs)

        return call

    def __getattr__(self, name: str) -> Any:
        value = getattr(torch, name)
        setattr(self, name, value)  # found in the instance from now on: no Python call per lookup
        return value


class _FastSelection:
    """A router forward whose selection calls are edited without a TorchFunctionMode (which costs a Python
    call per torch op of the router, the larger part of mask's and stimulate's cost at batch 1): a copy
    of the router class's forward with `torch` in its globals swapped for `_TorchWithEdits`. Used for a
    layer once the first edited call, run both ways, gave the same outputs and the same edited calls;
    until then, and for good where it did not, the mode runs."""

    def __init__(self, selector: torch.nn.Module, ops: Sequence[str]) -> None:
        self.torch = _TorchWithEdits(ops)
        # a forward set on the instance (a wrapper of someone else's) is not the class's: keep the mode
        own = "forward" in selector.__dict__
        self.forward = None if own else _with_torch(type(selector).forward, selector, self.torch)
        self.verdict: bool | None = None if self.forward is not None else False

    def run(self, edit: SelectionEdit, *args: Any, **kwargs: Any) -> Any:
        assert self.forward is not None
        self.torch.edit = edit
        try:
            return self.forward(*args, **kwargs)
        finally:
            self.torch.edit = None

    def decide(self, expected: Any, done: SelectionEdit, *args: Any, **kwargs: Any) -> None:
        """Run the call the mode just made (`expected`, its edit `done`) this way too; use this way from
        now on only if it gave the same outputs and edited the same calls. Anything odd: the mode stays."""
        trial = SelectionEdit(done.lifts, done.n_tokens, done.n_experts)
        try:
            same = _same_outputs(self.run(trial, *args, **kwargs), expected)
        except Exception:  # the copy cannot run as the original does (a decorator, a missing global)
            same = False
        self.verdict = same and (trial.calls, trial.edited) == (done.calls, done.edited)


def _with_torch(function: Any, instance: torch.nn.Module, stand_in: ModuleType) -> Callable[..., Any] | None:
    """`function` bound to `instance`, with `torch` in its globals replaced; None where it names no torch."""
    if not isinstance(function, FunctionType) or "torch" not in function.__code__.co_names:
        return None
    copy = FunctionType(
        function.__code__,
        {**function.__globals__, "torch": stand_in},
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    return MethodType(copy, instance)


def _same_outputs(a: Any, b: Any) -> bool:
    """Bit-identical router outputs: tensors, and tuples / lists / dicts of them; anything else compared
    with ==, and anything that cannot be compared is not the same."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and (a.dtype == b.dtype and bool(torch.equal(a, b)))
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_outputs(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_outputs(a[k], b[k]) for k in a)
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # an output type whose == is not a truth value
        return False


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
    own modules with no hook at all. Both are instance-level `forward`s (the selector's routed
    forward; the experts' forward behind `edit_experts_args`), not module hooks: a module with a hook
    takes torch's slow call path, which at batch 1 costs as much as the edit itself."""

    def __init__(
        self,
        selector: torch.nn.Module,
        routed_forward: Callable[..., Any],
        experts: torch.nn.Module,
        edit_experts_args: Callable[[tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]] | None],
    ) -> None:
        self.selector = selector
        self.routed_forward = routed_forward
        self.experts = experts
        self.edit_experts_args = edit_experts_args
        self.selecting = False
        self.editing_experts = False
        self._own: dict[str, Any] = {}  # instance-level forwards someone set before us, per module role

    def arm(self, selection: bool, experts: bool) -> None:
        if selection != self.selecting:
            self._swap("selector", self.selector, self.routed_forward if selection else None)
            self.selecting = selection
        if experts != self.editing_experts:
            self._swap("experts", self.experts, self._experts_forward() if experts else None)
            self.editing_experts = experts

    def _swap(self, role: str, module: torch.nn.Module, forward: Callable[..., Any] | None) -> None:
        """Install `forward` on `module` (keeping any instance forward already there), or with None put
        back what was there before."""
        if forward is not None:
            self._own[role] = module.__dict__.get("forward")
            module.forward = forward
        elif self._own.get(role) is not None:
            module.forward = self._own.pop(role)
        else:
            self._own.pop(role, None)
            del module.forward  # back to the class's method

    def _experts_forward(self) -> Callable[..., Any]:
        inner = self.experts.forward  # the instance's own forward, or the class's bound method
        edit = self.edit_experts_args

        def forward(*args: Any, **kwargs: Any) -> Any:
            edited = edit(args, kwargs)
            if edited is not None:
                args, kwargs = edited
            return inner(*args, **kwargs)

        return forward


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
        self.lifts: dict[int, SelectionLifts] = {}
        self.drops: dict[int, LayerDrop] = {}
        self.n_rows = 1
        self.recording = False
        self.steps: list[StepCapture] = []
        self._current: StepCapture | None = None
        self._step_source = step_source
        self._step_handle: Any = None
        self._layers: dict[int, _LayerHooks] = {}
        self._fast: dict[int, _FastSelection | None] = {}
        for block, selection in zip(self.blocks, selections, strict=True):
            self._layers[block.layer] = self._hooks_of(block, selection)

    # -- configuration per generate() call -------------------------------------------------------
    def configure(self, interventions: Sequence[Intervention], record: bool, device: torch.device) -> None:
        self.tables = build_layer_tables(interventions, self.n_experts, device)
        self.lifts = {layer: SelectionLifts(t.block, t.force) for layer, t in self.tables.items() if t.edits_selection}
        self.drops = {layer: LayerDrop(t.drop) for layer, t in self.tables.items() if t.drop is not None}
        self.n_rows = len(interventions)
        self.recording = record
        self.steps = []
        self._current = None
        self._arm()

    def reset(self) -> None:
        self.tables = {}
        self.lifts = {}
        self.drops = {}
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
        """Layer -> (selection edit installed, experts edit / capture installed)."""
        return {layer: (hooks.selecting, hooks.editing_experts) for layer, hooks in self._layers.items()}

    def fast_selection(self) -> dict[int, bool | None]:
        """Layer -> whether its selection edit runs without the mode (None: not decided yet, or a block
        that selects itself, which always uses the mode)."""
        return {layer: None if fast is None else fast.verdict for layer, fast in self._fast.items()}

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

        fast = _FastSelection(selector, selection.ops) if selection.where == "router" else None
        self._fast[block.layer] = fast

        def routed_forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            n_tokens = hidden_states.numel() // hidden_states.shape[-1]
            # installed (`_arm`) only while they edit this layer's selection
            edit = SelectionEdit(controller.lifts[block.layer], n_tokens, block.n_experts)
            if fast is not None and fast.verdict:
                out = fast.run(edit, hidden_states, *args, **kwargs)
            else:
                with SelectionEditMode(edit, selection.ops):
                    out = router_forward(hidden_states, *args, **kwargs)
                if fast is not None and fast.verdict is None and edit.edited:
                    fast.decide(out, edit, hidden_states, *args, **kwargs)
            if not edit.edited:  # the router selected some other way: the edit would be a silent no-op
                raise RuntimeError(
                    f"layer {block.layer}: {type(selector).__name__}.forward made no "
                    f"{'/'.join(selection.ops)} call over [{n_tokens} tokens, {block.n_experts} experts] "
                    "scores, so the mask / stimulate edit did not apply; it selected differently on the "
                    "probe forward at load"
                )
            return out

        names = _experts_arg_names(block.experts)
        return _LayerHooks(selector, routed_forward, block.experts, self._experts_edit(block.layer, names))

    def _experts_edit(self, layer: int, names: tuple[str, str, str]) -> Callable[..., Any]:
        """The experts' call arguments with dropped slots' weights zeroed (None: unchanged), recording
        the routing on the way."""

        def edit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if len(args) >= 3:
                hidden, ids, weights = args[0], args[1], args[2]
            else:
                values = [*args, *(kwargs[n] for n in names[len(args) :])]
                hidden, ids, weights = values[0], values[1], values[2]
            drop = self.drops.get(layer)
            slots = None
            if drop is not None:
                weights, slots = drop.apply(ids, weights)
            if self.recording and self._current is not None:
                recorded = ids if slots is None else ids.masked_fill(slots == 0, -1)
                self._current.layers[layer] = (  # copies on the device: no host sync here
                    recorded.detach().to(torch.int32, copy=True),
                    weights.detach().to(torch.float32, copy=True),
                )
            if slots is None:
                return None
            if len(args) >= 3:
                return (hidden, ids, weights, *args[3:]), kwargs
            new_args = [hidden, ids, weights][: len(args)]
            new_kwargs = dict(kwargs)
            for name, value in zip(names[len(args) :], [hidden, ids, weights][len(args) :], strict=True):
                new_kwargs[name] = value
            return tuple(new_args), new_kwargs

        return edit


def _experts_arg_names(experts: torch.nn.Module) -> tuple[str, str, str]:
    params = [p for p in inspect.signature(experts.forward).parameters.values() if p.name != "self"]
    if len(params) < 3:
        raise TypeError(
            f"{type(experts).__name__}.forward takes {len(params)} arguments, expected (hidden, ids, weights)"
        )
    return params[0].name, params[1].name, params[2].name
