"""Worker-side MoTE state: per-step token -> request mapping, router hooks, routing records.

One `MoteRuntime` per model runner (it lives on the runner object, so a process with several
engines keeps them apart). Each step, the wrapped `_model_forward` reads the scheduled requests
(`input_batch.req_ids`, `query_start_loc`), their `extra_args`, and builds:
- the intervention tables of the distinct interventions in the step plus a final "none" row
  (`build_layer_tables`), and each token's row index (`rows_for_tokens` picks per-token flags);
- which requests are recorded, and where their tokens sit in the step.
Each MoE layer's router has its `_compute_routing` wrapped (an instance attribute): vLLM's own
routing runs first; tokens whose row edits the selection are re-selected with
`selection.edited_routing`; drop-mode rows go through `drop_after_topk`; recorded ids are the
logical ids, before any EPLB / expert-parallel remapping. Outside a step (profiling and warm-up
runs) the hooks pass everything through.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.mote.intervention import Intervention
from harness.mote.routing import LayerTables, build_layer_tables, drop_after_topk, rows_for_tokens
from harness.vllm_plugin.checks import MoteVLLMError, check_runner
from harness.vllm_plugin.protocol import INTERVENTION_KEY, RECORD_KEY, WorkerRecord
from harness.vllm_plugin.selection import RouterMath, edited_routing, router_math

_ATTR = "_mote_runtime"
_CACHE_SIZE = 64


@dataclass
class LayerHook:
    layer: int
    router: Any
    n_experts: int
    math: RouterMath | None
    math_error: str | None


@dataclass
class StepContext:
    n_tokens: int  # tokens in this forward (padding included)
    tables: dict[int, LayerTables]
    row_of_token: torch.Tensor  # long [n_tokens]
    recorded: list[tuple[str, int, int]]  # (key, start, end) in the step's tokens
    positions: np.ndarray | None  # int64 [n_tokens] when recording
    capture: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def recording(self) -> bool:
        return bool(self.recorded)


class MoteRuntime:
    def __init__(self, runner: Any) -> None:
        check_runner(runner)
        self.runner = runner
        self.layers: dict[int, LayerHook] = {}
        self.global_intervention = Intervention.none()
        self.record_all = False
        self.step: StepContext | None = None
        self.records: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.prompt_lengths: dict[str, int] = {}
        self._parsed: OrderedDict[str, Intervention] = OrderedDict()
        self._tables: OrderedDict[tuple[str, ...], dict[int, LayerTables]] = OrderedDict()
        self._installed_on: int | None = None

    @classmethod
    def of(cls, runner: Any) -> MoteRuntime:
        runtime = runner.__dict__.get(_ATTR)
        if runtime is None:
            runtime = cls(runner)
            runner.__dict__[_ATTR] = runtime
        return runtime

    # -- configuration ---------------------------------------------------------------------------
    @property
    def compiled(self) -> bool:
        """True if torch.compile or CUDA graphs run the model: Python hooks would be traced away."""
        config = self.runner.vllm_config
        if config.model_config.enforce_eager:
            return False
        from vllm.config import CompilationMode, CUDAGraphMode

        compilation = config.compilation_config
        return compilation.mode != CompilationMode.NONE or compilation.cudagraph_mode != CUDAGraphMode.NONE

    def install(self) -> None:
        """Wrap every MoE layer's router (once per model object)."""
        model = self.runner.model
        if self._installed_on == id(model):
            return
        from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

        layers: dict[int, LayerHook] = {}
        for _, module in model.named_modules():
            if not isinstance(module, MoERunner):
                continue
            if module.is_monolithic:
                raise MoteVLLMError(
                    f"{module.layer_name}: this MoE kernel is monolithic (routing fused into the expert "
                    "kernel), so no router hook can see or change the selection; use another "
                    "quantization / MoE backend"
                )
            router: Any = module.router
            layer = int(module.layer_id)
            n_experts = int(getattr(module.moe_config, "num_logical_experts", 0) or router.global_num_experts)
            try:
                math: RouterMath | None = router_math(router)
                error = None
            except MoteVLLMError as err:
                math, error = None, str(err)
            hook = LayerHook(layer, router, n_experts, math, error)
            router._compute_routing = self._wrap(hook, router._compute_routing)
            layers[layer] = hook
        if not layers:
            raise MoteVLLMError(f"{type(model).__name__}: no FusedMoE layer found; not an MoE model")
        self.layers = dict(sorted(layers.items()))
        self._installed_on = id(model)

    def n_experts(self) -> dict[int, int]:
        return {layer: hook.n_experts for layer, hook in self.layers.items()}

    def top_k(self) -> int:
        return int(next(iter(self.layers.values())).router.top_k)

    def parse(self, text: str) -> Intervention:
        intervention = self._parsed.get(text)
        if intervention is None:
            intervention = Intervention.from_data(json.loads(text), "extra_args.mote")
            self._parsed[text] = intervention
            if len(self._parsed) > _CACHE_SIZE:
                self._parsed.popitem(last=False)
        return intervention

    # -- one step --------------------------------------------------------------------------------
    def begin_step(self, n_tokens: int, positions: torch.Tensor | None) -> None:
        self.step = None
        runner = self.runner
        num_reqs = int(runner.input_batch.num_reqs)
        if num_reqs == 0:
            return
        req_ids = list(runner.input_batch.req_ids[:num_reqs])
        interventions: list[Intervention] = []
        record_keys: list[str | None] = []
        for rid in req_ids:
            state = runner.requests.get(rid)
            params = getattr(state, "sampling_params", None)
            extra = (getattr(params, "extra_args", None) or {}) if params is not None else {}
            text = extra.get(INTERVENTION_KEY)
            interventions.append(self.parse(str(text)) if text else self.global_intervention)
            key = extra.get(RECORD_KEY)
            record_key = str(key) if key else (rid if self.record_all else None)
            record_keys.append(record_key)
            if record_key is not None and state is not None:
                self.prompt_lengths[record_key] = int(getattr(state, "num_prompt_tokens", 0) or 0)
        if all(iv.is_none for iv in interventions) and not any(record_keys):
            return
        if self.compiled:
            raise MoteVLLMError(
                "MoTE interventions / routing capture requested, but this engine runs the model under "
                "torch.compile or CUDA graphs, where the router hooks are traced away (nothing would be "
                "changed or recorded). Start the engine with enforce_eager=True (--enforce-eager)."
            )
        self.install()
        unique: dict[str, int] = {}
        rows: list[Intervention] = []
        row_of_req: list[int] = []
        for iv in interventions:
            if iv.is_none:
                row_of_req.append(-1)
                continue
            fp = iv.fingerprint()
            if fp not in unique:
                unique[fp] = len(rows)
                rows.append(iv)
            row_of_req.append(unique[fp])
        none_row = len(rows)
        starts = np.asarray(runner.query_start_loc.np[: num_reqs + 1], dtype=np.int64)
        row_of_token = np.full(n_tokens, none_row, dtype=np.int64)
        recorded: list[tuple[str, int, int]] = []
        for i in range(num_reqs):
            start, end = int(starts[i]), int(starts[i + 1])
            if row_of_req[i] >= 0:
                row_of_token[start:end] = row_of_req[i]
            key = record_keys[i]
            if key is not None:
                recorded.append((key, start, end))
        device = runner.device
        tables = self._tables_for(tuple(unique), rows, device)
        pos = None
        if recorded and positions is not None:
            flat = positions[0] if positions.dim() == 2 else positions
            pos = flat[:n_tokens].to("cpu", torch.int64).numpy()
        self.step = StepContext(
            n_tokens=n_tokens,
            tables=tables,
            row_of_token=torch.from_numpy(row_of_token).to(device),
            recorded=recorded,
            positions=pos,
        )

    def _tables_for(
        self, key: tuple[str, ...], rows: list[Intervention], device: torch.device
    ) -> dict[int, LayerTables]:
        tables = self._tables.get(key)
        if tables is None:
            tables = build_layer_tables([*rows, Intervention.none()], self.n_experts(), device)
            self._tables[key] = tables
            if len(self._tables) > _CACHE_SIZE:
                self._tables.popitem(last=False)
        return tables

    def end_step(self) -> None:
        step, self.step = self.step, None
        if step is None or not step.recording:
            return
        missing = [layer for layer in self.layers if layer not in step.capture]
        if missing:
            raise MoteVLLMError(
                f"routing capture: MoE layers {missing} were not routed through the hooked router this "
                "step (a compiled or monolithic path bypassed the hook); refusing a partial record"
            )
        order = list(self.layers)
        ids = torch.stack([step.capture[layer][0] for layer in order], dim=1).to("cpu", torch.int32)
        weights = torch.stack([step.capture[layer][1] for layer in order], dim=1).to("cpu", torch.float32)
        ids_np, weights_np = ids.numpy(), weights.numpy()
        assert step.positions is not None
        for key, start, end in step.recorded:
            self.records.setdefault(key, []).append(
                (step.positions[start:end].copy(), ids_np[start:end].copy(), weights_np[start:end].copy())
            )

    # -- the router hook -------------------------------------------------------------------------
    def _wrap(self, hook: LayerHook, original: Any) -> Any:
        runtime = self

        def _compute_routing(
            hidden_states: torch.Tensor,
            router_logits: torch.Tensor,
            indices_type: torch.dtype | None,
            *,
            input_ids: torch.Tensor | None = None,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            weights, ids = original(hidden_states, router_logits, indices_type, input_ids=input_ids)
            if runtime.step is None:
                return weights, ids
            return runtime._apply(hook, runtime.step, router_logits, weights, ids)

        _compute_routing.__wrapped__ = original  # type: ignore[attr-defined]
        return _compute_routing

    def _apply(
        self,
        hook: LayerHook,
        step: StepContext,
        logits: torch.Tensor,
        weights: torch.Tensor,
        ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.shape[0] != step.n_tokens:
            raise MoteVLLMError(
                f"layer {hook.layer}: the router saw {ids.shape[0]} tokens but the step has "
                f"{step.n_tokens}; sequence-parallel / data-parallel token dispatch before routing is "
                "not supported by the MoTE hooks"
            )
        tables = step.tables.get(hook.layer)
        dropped = None
        if tables is not None:
            rows = step.row_of_token
            if tables.edits_selection:
                if hook.math is None:
                    raise MoteVLLMError(f"layer {hook.layer}: {hook.math_error}")
                block = None if tables.block is None else rows_for_tokens(tables.block, rows)
                force = None if tables.force is None else rows_for_tokens(tables.force, rows)
                flags = [t for t in (block, force) if t is not None]
                touched = flags[0].any(-1) if len(flags) == 1 else (flags[0] | flags[1]).any(-1)
                new_weights, new_ids = edited_routing(hook.math, logits, block, force)
                weights = torch.where(touched[:, None], new_weights.to(weights.dtype), weights)
                ids = torch.where(touched[:, None], new_ids.to(ids.dtype), ids)
            if tables.drop is not None:
                weights, dropped = drop_after_topk(ids, weights, rows_for_tokens(tables.drop, rows))
        if step.recording:
            recorded = ids if dropped is None else ids.masked_fill(dropped, -1)
            step.capture[hook.layer] = (recorded.detach(), weights.detach())
        return weights, ids

    # -- records ---------------------------------------------------------------------------------
    def pop_record(self, key: str) -> WorkerRecord | None:
        parts = self.records.pop(key, None)
        self.prompt_lengths.pop(key, None)
        if not parts:
            return None
        positions = np.concatenate([p for p, _, _ in parts])
        ids = np.concatenate([i for _, i, _ in parts])
        weights = np.concatenate([w for _, _, w in parts])
        # a position routed twice (preemption recompute) keeps its last routing
        order = np.argsort(positions, kind="stable")
        positions, ids, weights = positions[order], ids[order], weights[order]
        last = np.ones(len(positions), dtype=bool)
        last[:-1] = positions[1:] != positions[:-1]
        record = WorkerRecord(
            positions=positions[last],
            topk_ids=ids[last],
            topk_weights=weights[last],
            layers=np.asarray(list(self.layers), dtype=np.int32),
        )
        reject_all_zero(record, key)
        return record


def reject_all_zero(record: WorkerRecord, key: str) -> None:
    """A token's top-k ids are distinct, so with k >= 2 a token whose slots are all 0 cannot be a real
    routing: it is the known failure of fused kernels that return zeroed ids."""
    ids = record.topk_ids
    if ids.size == 0 or ids.shape[-1] < 2:
        return
    zero_tokens = (ids == 0).all(axis=(-1,))  # [tokens, layers]
    if bool(zero_tokens.any()):
        raise MoteVLLMError(
            f"routing capture for {key!r}: {int(zero_tokens.sum())} token x layer entries have all top-k "
            "ids equal to 0, which no top-k can produce (a fused kernel returned zeroed ids); rejected"
        )
