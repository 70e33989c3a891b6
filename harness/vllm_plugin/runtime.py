"""Worker-side MoTE state: per-step token -> request mapping, router hooks, routing records.

One `MoteRuntime` per model runner (it lives on the runner object, so a process with several
engines keeps them apart). Each step, the wrapped `_model_forward` reads the scheduled requests
(`input_batch.req_ids`, `query_start_loc`), their `extra_args`, and builds:
- the intervention tables of the distinct interventions in the step plus a final "none" row
  (`build_layer_tables`), and each token's row index (`rows_for_tokens` picks per-token flags);
- which requests are recorded, and where their tokens sit in the step;
- for requests counted on the device (`mote_count`), each token's count bucket (counts.py).
A step in which no request carries any of these opens no step context: the route hooks return at
once (route_hook.py) and the MoE layers run vLLM's own path.
Each MoE layer's router ends with the route hook (route_hook.py, installed when the layer is built;
`install` says what it does): vLLM's own routing runs first; tokens whose row edits the selection are
re-selected with `selection.edited_routing`, except mask-only rows on routers that mask logits, whose
blocked logits the logit hook set to -inf before vLLM's top-k (`LayerEdits`); drop-mode rows go
through `drop_after_topk`; recorded ids are the
logical ids, before any EPLB / expert-parallel remapping. Outside a step (profiling and warm-up
runs) the hooks pass everything through. On a compiled engine the hooks are used only when
`compiled.compiled_hook_problem` finds none, and every step that uses them checks at its end that
each MoE layer's hook ran exactly once on the step's tokens (`check_fired`), else it raises.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.mote.experts import ExpertSet
from harness.mote.intervention import Intervention
from harness.mote.routing import LayerTables, build_layer_tables, drop_after_topk, rows_for_tokens
from harness.vllm_plugin.capture import CaptureBuffers, StepCapture
from harness.vllm_plugin.checks import MoteVLLMError, check_runner, count_problem
from harness.vllm_plugin.compiled import MoEPath, compiled_hook_problem, op_name
from harness.vllm_plugin.counts import CountedRequest, CountPool, StepRequests, ThinkIds
from harness.vllm_plugin.protocol import COUNT_KEY, INTERVENTION_KEY, RECORD_KEY, THINK_KEY, WorkerRecord
from harness.vllm_plugin.record_arena import RecordArena
from harness.vllm_plugin.route_hook import (
    HOOK_ATTR,
    KEY_ATTR,
    MASKS_LOGITS_ATTR,
    PRE_HOOK_ATTR,
    VIA_OP_ATTR,
    close_step,
    open_step,
)
from harness.vllm_plugin.selection import RouterMath, edited_routing, router_math
from harness.vllm_plugin.timing import StepTiming, timing_on

_ATTR = "_mote_runtime"
_CACHE_SIZE = 64
# Records nobody fetched would pile up in the worker forever (a served engine with recording on, a
# client that died): beyond this many pending records the oldest is dropped, with a warning, and a
# later fetch of it says so.
MAX_PENDING_ENV = "MOTE_VLLM_MAX_PENDING_RECORDS"
DEFAULT_MAX_PENDING = 1024

log = logging.getLogger("harness.vllm_plugin")


@dataclass
class LayerHook:
    layer: int
    router: Any
    n_experts: int
    math: RouterMath | None
    math_error: str | None
    column: int  # this layer's index in a record's layer axis (layers in ascending order)
    masks_logits: bool = False  # its router starts with the logit hook (route_hook.masks_logits)


@dataclass(frozen=True)
class LayerEdits:
    """How one MoE layer's intervention rows edit its routing this step. A mask-only row on a router that
    masks logits is applied to the logits before vLLM's top-k (one index_fill_ for a step on one row, a
    masked_fill_ of per-token flags otherwise); every other selection edit is redone after the top-k
    (selection.py) from `block` / `force`, which hold only those rows."""

    masked_rows: list[bool]  # per row: blocked logits set to -inf before vLLM's top-k
    select_rows: list[bool]  # per row: the selection redone after vLLM's top-k
    drop_rows: list[bool]
    logit_block: torch.Tensor | None  # bool [rows, E]: the masked rows' blocked experts
    logit_index: tuple[torch.Tensor | None, ...]  # per row: its blocked experts' ids (masked rows only)
    block: torch.Tensor | None  # bool [rows, E]: blocked experts of the select rows
    force: torch.Tensor | None


def layer_edits(table: LayerTables, rows: int, n_experts: int, top_k: int, masks_logits: bool) -> LayerEdits:
    """Split a layer's tables between the logit hook and the route hook (see LayerEdits)."""
    blocked = [0] * rows if table.block is None else table.block.sum(dim=-1).tolist()
    forced = [False] * rows if table.force is None else table.force.any(dim=-1).tolist()
    # with fewer than top_k experts left a row would select a -inf expert; selection.py handles it
    masked = [masks_logits and 0 < b <= n_experts - top_k and not f for b, f in zip(blocked, forced, strict=True)]
    select = [(b > 0 or f) and not m for b, f, m in zip(blocked, forced, masked, strict=True)]

    def only(flags: torch.Tensor | None, keep: list[bool]) -> torch.Tensor | None:
        if flags is None or not any(keep):
            return None
        return flags & torch.tensor(keep, dtype=torch.bool, device=flags.device)[:, None]

    logit_block = only(table.block, masked)
    return LayerEdits(
        masked_rows=masked,
        select_rows=select,
        drop_rows=[False] * rows if table.drop is None else table.drop.any(dim=-1).tolist(),
        logit_block=logit_block,
        # a whole step on one row fills these columns (index_fill_: a broadcast mask is slower at many experts)
        logit_index=tuple(
            None if logit_block is None or not m else logit_block[r].nonzero().view(-1) for r, m in enumerate(masked)
        ),
        block=only(table.block, select),
        force=only(table.force, select),
    )


def logit_layers(edits: dict[int, LayerEdits]) -> tuple[int, ...]:
    """The layers whose edits mask logits: their logit hook must run on the step (`check_fired`)."""
    return tuple(layer for layer, e in edits.items() if e.logit_block is not None)


@dataclass
class PendingRecord:
    """One record key, until fetched; its routing is the arena's rows of `owner` (record_arena.py).
    The request id guards against a key reused by another request (a second run with the same key,
    n > 1 samples of one prompt), whose routing would otherwise merge into this record position by
    position."""

    request_id: str
    prompt_length: int
    owner: int  # this record's rows in the arena
    conflict: str | None = None  # set when another request used the same key


@dataclass(frozen=True)
class StepPlan:
    """What a step's interventions need, for one list of per-request interventions (cached: decode
    steps of the same requests reuse it)."""

    tables: dict[int, LayerTables]
    row_of_req: np.ndarray  # int64 [requests]; none_row = no intervention
    none_row: int
    uniform_row: int | None  # every request on this row (then no per-token gather is needed)
    edits: dict[int, LayerEdits]
    logit_layers: tuple[int, ...]  # layers whose edits mask logits (their logit hook must run)


@dataclass(frozen=True)
class RequestScan:
    """The scheduled requests of a step, as the hooks need them."""

    req_ids: list[str]
    state_ids: list[int]  # id() of each request's state: a new request is a new state object
    record_all: bool
    texts: tuple[str | None, ...]  # each request's `mote` extra arg
    any_text: bool
    # each request's record owner (-1: not recorded; keys dropped by the cap are not recorded), None if
    # no request is recorded
    owner_of_req: np.ndarray | None
    all_recorded: bool  # every request recorded
    counted: StepRequests | None  # the counted requests (device-side counts), None if none


@dataclass
class StepContext:
    n_tokens: int  # tokens in this forward (padding included)
    tables: dict[int, LayerTables]
    row_of_token: torch.Tensor | None  # long [n_tokens]; None when every token is on uniform_row
    record_owner: np.ndarray | None  # int64 [scheduled tokens]: each token's record owner, -1 = none
    all_recorded: bool  # every scheduled token recorded
    positions: np.ndarray | None  # [scheduled tokens] when recording (a view of the runner's on CPU)
    uniform_row: int | None = None
    edits: dict[int, LayerEdits] = field(default_factory=dict)
    logit_layers: tuple[int, ...] = ()  # StepPlan.logit_layers
    # the step's routing, [n_tokens, moe_layers, k], filled layer by layer when recording
    capture: StepCapture | None = None
    fired: dict[int, int] = field(default_factory=dict)  # layer -> hook calls this step
    fired_logits: dict[int, int] = field(default_factory=dict)  # layer -> logit hook calls this step
    # per MoE layer, each token's offset into the count buffer, [n_tokens, 1] (counts.py `step_rows`)
    count_rows: tuple[torch.Tensor, ...] | None = None

    @property
    def recording(self) -> bool:
        return self.record_owner is not None


def _max_pending() -> int:
    text = os.environ.get(MAX_PENDING_ENV, str(DEFAULT_MAX_PENDING))
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise MoteVLLMError(f"{MAX_PENDING_ENV}={text!r}: expected an integer >= 1 (records kept until fetched)")
    return value


class MoteRuntime:
    def __init__(self, runner: Any) -> None:
        check_runner(runner)
        self.runner = runner
        self.layers: dict[int, LayerHook] = {}
        self.global_intervention = Intervention.none()
        self.record_all = False
        self._step: StepContext | None = None
        self.records: OrderedDict[str, PendingRecord] = OrderedDict()  # oldest first
        self.arena = RecordArena()  # the records' routing
        self._owners = 0  # owners handed out
        self.captures = CaptureBuffers()  # per-token capture of recorded steps (capture.py)
        self.max_pending = _max_pending()
        self.dropped: OrderedDict[str, None] = OrderedDict()  # keys dropped by the cap, not fetched yet
        self.pool: CountPool | None = None  # device-side counts (counts.py), made on first use
        self.count_unavailable: str | None = None  # why counts cannot run here (checked with the pool)
        self.hooked_steps = 0  # steps that opened a step context (the others ran vLLM's own path)
        self.timing: StepTiming | None = StepTiming() if timing_on() else None  # MOTE_VLLM_TIMING=1
        self.stage_layers: range | None = None  # pipeline parallel: the absolute layers of this stage
        self._parsed: OrderedDict[str, tuple[Intervention, str]] = OrderedDict()  # text -> (iv, fingerprint)
        self._tables: OrderedDict[tuple[str, ...], dict[int, LayerTables]] = OrderedDict()
        self._plans: OrderedDict[tuple[Any, ...], StepPlan] = OrderedDict()
        self._global: tuple[Intervention, str, Intervention] | None = None  # (local, fingerprint, global)
        self._scan: RequestScan | None = None
        self._installed_on: int | None = None
        self.hook_problem: str | None = None  # why the hooks would not run every step on this engine
        self.hook_ops: dict[int, str] = {}  # layer -> the opaque op the hook runs in ("python": none)

    @property
    def step(self) -> StepContext | None:
        """The open step's context; None on idle steps and outside a forward."""
        return self._step

    @step.setter
    def step(self, value: StepContext | None) -> None:
        # the route hook op returns at once while no step is open anywhere in the process
        if self._step is None and value is not None:
            open_step()
        elif self._step is not None and value is None:
            close_step()
        self._step = value

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
        """True if torch.compile or CUDA graphs run the model (the hooks then need compiled.py's
        conditions, checked at install)."""
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

        runners = [module for _, module in model.named_modules() if isinstance(module, MoERunner)]
        self.stage_layers = pipeline_stage_layers(self.runner.vllm_config)
        if not runners and self.stage_layers is None:
            # (a pipeline stage may hold only dense layers: DeepSeek's first_k_dense_replace)
            raise MoteVLLMError(f"{type(model).__name__}: no FusedMoE layer found; not an MoE model")
        paths = [
            MoEPath(
                name=str(m.layer_name),
                moe_op=op_name(getattr(m, "_forward_entry", None)),
                router_wrapped=getattr(m.router, KEY_ATTR, None) is not None,
                router_via_op=bool(getattr(m.router, VIA_OP_ATTR, False)),
                router_masks_logits=bool(getattr(m.router, MASKS_LOGITS_ATTR, False)),
            )
            for m in runners
        ]
        self.hook_problem = compiled_hook_problem(self.runner.vllm_config, paths)
        self.hook_ops = {int(m.layer_id): p.hook_op or "python" for m, p in zip(runners, paths, strict=True)}
        layers: dict[int, LayerHook] = {}
        for module in runners:
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
            masks = bool(getattr(router, MASKS_LOGITS_ATTR, False)) and math is not None
            hook = LayerHook(layer, router, n_experts, math, error, column=-1, masks_logits=masks)
            if getattr(router, KEY_ATTR, None) is not None:
                setattr(router, HOOK_ATTR, self._hook(hook))
                if masks:
                    setattr(router, PRE_HOOK_ATTR, self._logit_hook(hook))
            layers[layer] = hook
        self.layers = dict(sorted(layers.items()))
        for column, hook in enumerate(self.layers.values()):
            hook.column = column
        self._installed_on = id(model)

    def n_experts(self) -> dict[int, int]:
        return {layer: hook.n_experts for layer, hook in self.layers.items()}

    def top_k(self) -> int | None:
        """None on a pipeline stage without MoE layers."""
        hook = next(iter(self.layers.values()), None)
        return None if hook is None else int(hook.router.top_k)

    def parse(self, text: str) -> Intervention:
        return self._parse(text)[0]

    def _parse(self, text: str) -> tuple[Intervention, str]:
        parsed = self._parsed.get(text)
        if parsed is None:
            intervention = Intervention.from_data(json.loads(text), "extra_args.mote")
            parsed = (self._local(intervention), intervention.fingerprint())
            self._parsed[text] = parsed
            if len(self._parsed) > _CACHE_SIZE:
                self._parsed.popitem(last=False)
        return parsed

    def _global_parsed(self) -> tuple[Intervention, str]:
        """(global intervention, its fingerprint), recomputed only when the RPC replaced it."""
        cached = self._global
        current = self.global_intervention
        if cached is None or cached[2] is not current:
            cached = (self._local(current), current.fingerprint(), current)
            self._global = cached
        return cached[0], cached[1]

    def _local(self, intervention: Intervention) -> Intervention:
        """The part of an intervention this pipeline stage applies: experts of layers that other stages
        hold are theirs (validated against the whole model by the client, `ranks.merge_status`)."""
        stage = self.stage_layers
        if stage is None or intervention.is_none or all(layer in stage for layer, _ in intervention.experts):
            return intervention
        mine = ExpertSet(tuple(pair for pair in intervention.experts if pair[0] in stage))
        return intervention.model_copy(update={"experts": mine}) if mine else Intervention.none()

    # -- one step --------------------------------------------------------------------------------
    def forward(self, call: Callable[[], Any], n_tokens: int, positions: torch.Tensor | None) -> Any:
        """Run the model forward `call` as one step: begin_step, the forward, end_step."""
        timing = self.timing
        if timing is None:
            self.begin_step(n_tokens, positions)
            try:
                output = call()
                self.end_step()
            finally:
                self.step = None
            return output
        start = time.perf_counter()
        self.begin_step(n_tokens, positions)
        begun = time.perf_counter()
        timing.hooked_steps += self.step is not None
        try:
            output = call()
            forwarded = time.perf_counter()
            self.end_step()
        finally:
            self.step = None
        timing.steps += 1
        timing.begin_s += begun - start
        timing.forward_s += forwarded - begun
        timing.end_s += time.perf_counter() - forwarded
        return output

    def begin_step(self, n_tokens: int, positions: torch.Tensor | None) -> None:
        if self._step is not None:
            self.step = None
        runner = self.runner
        num_reqs = int(runner.input_batch.num_reqs)
        if num_reqs == 0:
            return
        req_ids = runner.input_batch.req_ids[:num_reqs]
        requests = runner.requests
        states = list(map(requests.get, req_ids))
        state_ids = list(map(id, states))
        scan = self._scan
        if scan is None or scan.state_ids != state_ids or scan.req_ids != req_ids or scan.record_all != self.record_all:
            scan = self._scan_requests(req_ids, states, state_ids)
        global_iv, global_fp = self._global_parsed()
        if global_iv.is_none and scan.owner_of_req is None and not scan.any_text and scan.counted is None:
            return
        self.install()
        if self.hook_problem is not None:
            raise MoteVLLMError(
                f"MoTE interventions / routing capture refused: {self.hook_problem}. Nothing would be changed "
                "or recorded; start the engine with enforce_eager=True (--enforce-eager) or a configuration "
                "in which the router hook runs outside every graph (docs/vllm.md)."
            )
        if not self.layers:
            return  # a pipeline stage with only dense layers: nothing to route here
        plan = self._plan(scan.texts, global_iv, global_fp)
        starts = runner.query_start_loc.np[: num_reqs + 1]
        row_of_token = None
        uniform = plan.uniform_row
        if uniform is None and plan.tables:
            rows = np.full(n_tokens, plan.none_row, dtype=np.int64)
            rows[: int(starts[-1])] = np.repeat(plan.row_of_req, np.diff(starts))
            row_of_token = torch.from_numpy(rows).to(runner.device)
        owner = pos = None
        if scan.owner_of_req is not None:
            scheduled = int(starts[-1])
            # one token per request (a decode step): the requests' owners are the tokens'
            owner = scan.owner_of_req if scheduled == num_reqs else np.repeat(scan.owner_of_req, np.diff(starts))
            if positions is not None:
                flat = (positions[0] if positions.dim() == 2 else positions)[:scheduled]
                # on CPU a view of the runner's positions buffer, which holds until end_step copies it
                pos = flat.cpu().numpy()
        self.hooked_steps += 1
        self.step = StepContext(
            n_tokens=n_tokens,
            tables=plan.tables,
            row_of_token=row_of_token,
            record_owner=owner,
            all_recorded=scan.all_recorded,
            positions=pos,
            uniform_row=uniform,
            edits=plan.edits,
            logit_layers=plan.logit_layers,
            count_rows=self._count_rows(scan, starts, n_tokens) if scan.counted is not None else None,
        )

    def _count_rows(self, scan: RequestScan, starts: np.ndarray, n_tokens: int) -> tuple[torch.Tensor, ...] | None:
        """Each token's count bucket this step as an offset into the count buffer (counts.py), on the
        device: one vectorised pass on the host, one host-to-device copy."""
        assert self.pool is not None and scan.counted is not None
        if not len(scan.counted.slots):
            return None  # only refused keys: nothing to count
        batch = self.runner.input_batch
        token_ids = batch.token_ids_cpu if scan.counted.thinking.any() else None
        first = batch.num_computed_tokens_cpu
        return self.pool.step_rows(scan.counted, n_tokens, starts, first, token_ids, self.runner.device)

    def _scan_requests(self, req_ids: list[str], states: list[Any], state_ids: list[int]) -> RequestScan:
        """Each scheduled request's intervention text and record key (a request's `extra_args` never
        change, so consecutive steps of the same requests reuse this)."""
        record_all = self.record_all
        texts: list[str | None] = []
        keys: list[str | None] = []
        counted: list[tuple[int, CountedRequest]] = []
        for index, (rid, state) in enumerate(zip(req_ids, states, strict=True)):
            params = getattr(state, "sampling_params", None)
            extra = getattr(params, "extra_args", None)
            text = key = None
            if extra:
                text = extra.get(INTERVENTION_KEY)
                key = extra.get(RECORD_KEY)
                if extra.get(COUNT_KEY):
                    counts = self._open_counts(str(extra[COUNT_KEY]), str(rid), state, extra.get(THINK_KEY))
                    if counts is not None:
                        counted.append((index, counts))
            texts.append(str(text) if text else None)
            record_key = str(key) if key else (rid if record_all else None)
            if record_key is not None and not self._register(record_key, str(rid), state):
                record_key = None
            keys.append(record_key)
        # keys the cap dropped (this scan may drop an earlier one) or two requests share are never kept:
        # their steps are not captured at all
        owners = [self._owner_of(key) for key in keys]
        recorded = any(owner >= 0 for owner in owners)
        scan = RequestScan(
            req_ids=list(req_ids),
            state_ids=state_ids,
            record_all=record_all,
            texts=tuple(texts),
            any_text=any(texts),
            owner_of_req=np.asarray(owners, dtype=np.int64) if recorded else None,
            all_recorded=all(owner >= 0 for owner in owners),
            counted=CountPool.step_requests(counted) if counted else None,
        )
        self._scan = scan
        return scan

    def _register(self, key: str, request_id: str, state: Any) -> bool:
        """Open (or find) `key`'s record for this request; False if the key was dropped by the cap. A
        key already held by another request marks the record as conflicting (fetching it fails)."""
        if key in self.dropped:
            return False
        pending = self.records.get(key)
        if pending is None:
            prompt_length = int(getattr(state, "num_prompt_tokens", 0) or 0)
            self.records[key] = PendingRecord(request_id, prompt_length, owner=self._owners)
            self._owners += 1
            self._enforce_cap()
            return key in self.records
        if pending.request_id != request_id and pending.conflict is None:
            pending.conflict = (
                f"record key {key!r} was used by request {pending.request_id!r} and again by request "
                f"{request_id!r} before it was fetched (a reused key, or n > 1 samples of one request); "
                "their routing would merge, so the record is refused: give every request its own key"
            )
        return True

    def _open_counts(self, key: str, request_id: str, state: Any, think_data: Any) -> CountedRequest | None:
        """`key`'s device-side counts for this request (counts.py); None if the cap dropped the key."""
        if key in self.dropped:
            return None
        if self.pool is None:
            self.install()
            self.pool = CountPool(len(self.layers), max(self.n_experts().values(), default=1), self.runner.device)
            self.count_unavailable = count_problem(self.runner)  # the runner's attributes do not change
        fresh = key not in self.pool.requests
        unavailable = self.count_unavailable
        try:  # checked at admission (admission.py); an error here must not stop the step
            think = None if think_data is None else ThinkIds.from_data(think_data, f"extra_args.{THINK_KEY}")
            if think is not None:
                think = think.with_prompt(getattr(state, "prompt_token_ids", None))
            problem = None
        except MoteVLLMError as err:
            think, problem = None, str(err)
        counted = self.pool.open(key, request_id, int(getattr(state, "num_prompt_tokens", 0) or 0), think)
        if fresh and (unavailable or problem) is not None:
            counted.conflict = unavailable or problem
        elif fresh and think is not None and self.runner.vllm_config.scheduler_config.async_scheduling:
            counted.conflict = (
                f"{THINK_KEY}: the think / answer split reads each sampled token on the host, which async "
                "scheduling does not keep up to date; start the engine with --no-async-scheduling"
            )
        if fresh:
            self._enforce_cap()
        return counted if key in self.pool.requests else None

    def _owner_of(self, key: str | None) -> int:
        """The arena owner a step records `key`'s tokens under; -1 for no key, or one not kept."""
        pending = None if key is None else self.records.get(key)
        return -1 if pending is None or pending.conflict is not None else pending.owner

    def _enforce_cap(self) -> None:
        while len(self.records) + (len(self.pool.requests) if self.pool else 0) > self.max_pending:
            if self.pool is not None and self.pool.requests and not self.records:
                key = self.pool.drop_oldest()
            else:
                key, pending = self.records.popitem(last=False)
                self.arena.discard(pending.owner)
            self.dropped[key] = None
            if len(self.dropped) > self.max_pending:
                self.dropped.popitem(last=False)
            log.warning(
                "MoTE: more than %d routing records pending (never fetched); dropped the oldest, %r. Fetch "
                "records (mote_fetch / mote_counts) after each batch, or raise %s",
                self.max_pending,
                key,
                MAX_PENDING_ENV,
            )

    def _plan(self, texts: tuple[str | None, ...], global_iv: Intervention, global_fp: str) -> StepPlan:
        cache_key = (texts, global_fp)
        plan = self._plans.get(cache_key)
        if plan is not None:
            return plan
        unique: dict[str, int] = {}
        rows: list[Intervention] = []
        row_of_req: list[int] = []
        for text in texts:
            iv, fp = self._parse(text) if text else (global_iv, global_fp)
            if iv.is_none:
                row_of_req.append(-1)
                continue
            if fp not in unique:
                unique[fp] = len(rows)
                rows.append(iv)
            row_of_req.append(unique[fp])
        none_row = len(rows)
        row_array = np.asarray([none_row if r < 0 else r for r in row_of_req], dtype=np.int64)
        tables = self._tables_for(tuple(unique), rows, self.runner.device) if rows else {}
        edits = {layer: self._layer_edits(layer, table, none_row + 1) for layer, table in tables.items()}
        distinct = set(row_array.tolist())
        plan = StepPlan(
            tables=tables,
            row_of_req=row_array,
            none_row=none_row,
            uniform_row=distinct.pop() if len(distinct) == 1 else None,
            edits=edits,
            logit_layers=logit_layers(edits),
        )
        self._plans[cache_key] = plan
        if len(self._plans) > _CACHE_SIZE:
            self._plans.popitem(last=False)
        return plan

    def _layer_edits(self, layer: int, table: LayerTables, rows: int) -> LayerEdits:
        hook = self.layers[layer]
        top_k = int(hook.router.top_k) if hook.masks_logits else 0  # (only the logit mask needs it)
        return layer_edits(table, rows, hook.n_experts, top_k, hook.masks_logits)

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
        if step is None:
            return
        self.check_fired(step)
        if not step.recording:
            return
        assert step.capture is not None  # check_fired: every layer ran
        owner, positions = step.record_owner, step.positions
        assert owner is not None and positions is not None
        # one append for the whole step (the scan left out keys dropped by the cap or refused)
        scheduled = len(owner)
        ids, weights = step.capture.to_host(scheduled)
        if step.all_recorded:
            self.arena.append(owner, positions, ids, weights)
        else:
            keep = owner >= 0
            self.arena.append(owner[keep], positions[keep], ids[keep], weights[keep])

    def check_fired(self, step: StepContext) -> None:
        """Every hooked MoE layer's router hook ran exactly once on this step's tokens (`_apply` checks
        the token count), else the step's interventions / records did not happen: a hook traced into
        a compiled graph or captured in a CUDA graph, a monolithic kernel, or a second router call."""
        fired, fired_logits = step.fired, step.fired_logits
        # (the hooks only count installed layers, each call adds 1: a count per layer and a sum equal to
        # it mean exactly one call each)
        if (
            len(fired) == len(self.layers)
            and sum(fired.values()) == len(fired)
            and all(fired_logits.get(layer) == 1 for layer in step.logit_layers)
        ):
            return
        wrong = {layer: fired.get(layer, 0) for layer in self.layers if fired.get(layer, 0) != 1}
        # a layer whose logit hook was traced away would run its masked rows unmasked
        wrong |= {layer: fired_logits.get(layer, 0) for layer in step.logit_layers if fired_logits.get(layer) != 1}
        if wrong:
            raise MoteVLLMError(
                f"MoTE router hooks: MoE layer -> hook calls this step {wrong} (expected exactly 1 per layer "
                f"on {step.n_tokens} tokens; compiled engine: {self.compiled}). The router ran without the "
                "hook (traced into a compiled graph, replayed from a CUDA graph, or a fused kernel), so "
                "this step's interventions / records did not happen; refusing to continue"
            )

    # -- the router hooks ------------------------------------------------------------------------
    def _logit_hook(self, hook: LayerHook) -> Callable[[torch.Tensor], None]:
        """What `mote::route_logits` runs for this layer: blocked logits of the step's masked rows set to
        -inf in place, before vLLM's own routing (LayerEdits)."""
        runtime = self

        def mask(logits: torch.Tensor) -> None:
            step = runtime.step
            if step is None:
                return
            timing = runtime.timing
            start = time.perf_counter() if timing is not None else 0.0
            step.fired_logits[hook.layer] = step.fired_logits.get(hook.layer, 0) + 1
            edits = step.edits.get(hook.layer)
            if edits is not None and edits.logit_block is not None:
                if logits.shape[0] != step.n_tokens:
                    raise MoteVLLMError(
                        f"layer {hook.layer}: the router saw {logits.shape[0]} tokens but the step has "
                        f"{step.n_tokens}; token dispatch before routing is not supported by the MoTE hooks"
                    )
                row = step.uniform_row
                if row is None:
                    assert step.row_of_token is not None
                    logits.masked_fill_(rows_for_tokens(edits.logit_block, step.row_of_token), float("-inf"))
                else:
                    index = edits.logit_index[row]
                    if index is not None:
                        logits.index_fill_(1, index, float("-inf"))
            if timing is not None:
                timing.hooks_s += time.perf_counter() - start

        return mask

    def _hook(self, hook: LayerHook) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]:
        """What `mote::route_hook` runs for this layer: edit vLLM's routing outputs in place."""
        runtime = self

        def route(logits: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> None:
            step = runtime.step
            if step is None:
                return
            timing = runtime.timing
            start = time.perf_counter() if timing is not None else 0.0
            new_weights, new_ids = runtime._apply(hook, step, logits, weights, ids)
            if new_weights is not weights:
                weights.copy_(new_weights)
            if new_ids is not ids:
                ids.copy_(new_ids)
            if timing is not None:
                timing.hooks_s += time.perf_counter() - start
                timing.hook_calls += 1

        return route

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
        step.fired[hook.layer] = step.fired.get(hook.layer, 0) + 1
        tables = step.tables.get(hook.layer)
        edits = step.edits.get(hook.layer)
        dropped = None
        if tables is not None and edits is not None and step.uniform_row is not None:
            # every token on one row: that row's flags broadcast, no per-token gather or merge
            row = step.uniform_row
            if edits.select_rows[row]:
                if hook.math is None:
                    raise MoteVLLMError(f"layer {hook.layer}: {hook.math_error}")
                block = None if edits.block is None else edits.block[row : row + 1]
                force = None if edits.force is None else edits.force[row : row + 1]
                # int64 ids / float32 weights: the hook's copy_ into vLLM's outputs converts them
                weights, ids = edited_routing(hook.math, logits, block, force)
            if edits.drop_rows[row]:
                assert tables.drop is not None
                weights, dropped = drop_after_topk(ids, weights, tables.drop[row : row + 1].expand(ids.shape[0], -1))
        elif tables is not None and edits is not None:
            rows = step.row_of_token
            assert rows is not None
            if edits.block is not None or edits.force is not None:
                if hook.math is None:
                    raise MoteVLLMError(f"layer {hook.layer}: {hook.math_error}")
                block = None if edits.block is None else rows_for_tokens(edits.block, rows)
                force = None if edits.force is None else rows_for_tokens(edits.force, rows)
                flags = [t for t in (block, force) if t is not None]
                touched = flags[0].any(-1) if len(flags) == 1 else (flags[0] | flags[1]).any(-1)
                new_weights, new_ids = edited_routing(hook.math, logits, block, force)
                weights = torch.where(touched[:, None], new_weights.to(weights.dtype), weights)
                ids = torch.where(touched[:, None], new_ids.to(ids.dtype), ids)
            if tables.drop is not None:
                weights, dropped = drop_after_topk(ids, weights, rows_for_tokens(tables.drop, rows))
        if step.count_rows is not None:
            assert self.pool is not None
            self.pool.add(step.count_rows[hook.column], ids, dropped)
        if step.recording:
            self._capture(hook, step, weights, ids, dropped)
        return weights, ids

    def _capture(
        self, hook: LayerHook, step: StepContext, weights: torch.Tensor, ids: torch.Tensor, dropped: torch.Tensor | None
    ) -> None:
        """Copy the layer's final routing into the step's buffers (in a compiled graph the routing
        outputs' memory is reused after the layer); a dropped slot is recorded as -1."""
        capture = step.capture
        if capture is None:
            capture = step.capture = self.captures.for_step(ids.shape[0], len(self.layers), ids.shape[1], ids.device)
        column = capture.id_columns[hook.column]
        column.copy_(ids)
        if dropped is not None:
            column.masked_fill_(dropped, -1)
        capture.weight_columns[hook.column].copy_(weights)

    def held(self) -> dict[str, int | bool]:
        """Sizes of what this runtime keeps between steps (mote_status' `held`): per-key records until
        fetched (capped), and caches bounded by _CACHE_SIZE; nothing per request beyond those."""
        return {
            "records": len(self.records),
            "record_rows": self.arena.live,
            "dropped_keys": len(self.dropped),
            "parsed_interventions": len(self._parsed),
            "tables": len(self._tables),
            "plans": len(self._plans),
            "count_slots": 0 if self.pool is None else self.pool.slots,
            "counted": 0 if self.pool is None else len(self.pool.requests),
            "cache_limit": _CACHE_SIZE,
            "step_open": self.step is not None,
            "hooked_steps": self.hooked_steps,
        }

    # -- records ---------------------------------------------------------------------------------
    def take_counts(self, key: str) -> dict[str, Any] | None:
        """`key`'s device-side counts as a count map {layers, prompt, generated [L][E], and think / answer
        when split}, removed from the worker; None if no request counted under it (counts.py)."""
        if self.pool is None or key not in self.pool.requests:
            return None
        self._scan = None  # a request still running re-registers next step
        spans = self.pool.take(key)
        if not self.layers:
            return None  # a pipeline stage with only dense layers routes nothing (as with records)
        assert spans is not None
        tokens = spans["tokens"]
        out: dict[str, Any] = {
            "layers": list(self.layers),
            "prompt": spans["prompt"].tolist(),
            "generated": (spans["think"] + spans["answer"]).tolist(),
            # tokens routed per span (each counts top-k times per layer, less its dropped slots)
            "tokens": {"prompt": tokens["prompt"], "generated": tokens["think"] + tokens["answer"]},
        }
        if spans["think_split"]:
            out["think"], out["answer"] = spans["think"].tolist(), spans["answer"].tolist()
            out["tokens"] |= {"think": tokens["think"], "answer": tokens["answer"]}
        return out

    def take(self, key: str) -> tuple[WorkerRecord | None, int]:
        """(the record of `key`, its request's prompt length), removed from the worker; (None, 0) if no
        request recorded under it. Raises MoteVLLMError for a key two requests used, or one dropped by
        the cap on pending records."""
        pending = self.records.pop(key, None)
        self._scan = None  # a request still running re-registers next step
        if key in self.dropped:
            del self.dropped[key]
            raise MoteVLLMError(
                f"record {key!r} was dropped: more than {self.max_pending} records were pending (never "
                f"fetched); fetch records after each batch, or raise {MAX_PENDING_ENV}"
            )
        if pending is None:
            return None, 0
        if pending.conflict is not None:
            self.arena.discard(pending.owner)
            raise MoteVLLMError(pending.conflict)
        rows = self.arena.take(pending.owner)
        if rows is None:
            return None, 0
        positions, ids, weights = rows
        # a position routed twice (preemption recompute) keeps its first routing, the one that produced
        # the request's tokens (as the device-side counts do, counts.py)
        order = np.argsort(positions, kind="stable")
        positions, ids, weights = positions[order], ids[order], weights[order]
        first = np.ones(len(positions), dtype=bool)
        first[1:] = positions[1:] != positions[:-1]
        record = WorkerRecord(
            positions=positions[first],
            topk_ids=ids[first],
            topk_weights=weights[first],
            layers=np.asarray(list(self.layers), dtype=np.int32),
        )
        reject_all_zero(record, key)
        return record, pending.prompt_length


def pipeline_stage_layers(config: Any) -> range | None:
    """The absolute layer indices this worker's pipeline stage holds; None without pipeline parallel."""
    parallel = getattr(config, "parallel_config", None)
    size = int(getattr(parallel, "pipeline_parallel_size", 1) or 1)
    if size == 1:
        return None
    from vllm.distributed import get_pp_group
    from vllm.distributed.utils import get_pp_indices

    n_layers = int(config.model_config.hf_text_config.num_hidden_layers)
    start, end = get_pp_indices(n_layers, get_pp_group().rank_in_group, size)
    return range(start, end)


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
