"""Device-side routing counts: per request, prompt / think / answer x MoE layer x expert, added up
where the routing is and fetched once per request.

A request asks with `extra_args={"mote_count": key}` (optionally `"mote_think": {"open": id, "close":
id, "prompt_opens": bool}` for the think / answer split; without "prompt_opens" the worker reads it
from the prompt's token ids: the last open after the last close). Each step, the worker gives every
token of the step a bucket, slot * 3 + span (host-side, from the runner's own bookkeeping: no device
read), and each MoE layer's route hook adds its top-k ids into a pooled int32 buffer [slots * 3,
layers, experts] with one `index_add_` (route_hook.py). Slot 0 is the trash: tokens of requests not counted, padding,
dropped (weight 0) slots and positions counted before all land there. So per step: one host-to-device
copy of the buckets (as flat offsets, one row per layer), and per layer one add and the index_add_; no
per-token ids leave the device, and nothing waits for it until the fetch.

Positions: a request's tokens in a step sit at positions num_computed_tokens + 0, 1, ... (as vLLM
builds them, `_prepare_inputs`). Positions below the highest one already counted are not counted again:
a preempted request recomputes its positions, and its first routing (the one that produced its tokens)
is the one kept, as in the per-token records (runtime.take).

Think / answer: a generated token's span follows `harness.mote.think.generated_spans`, on token ids
instead of text: the tokens that open or close the trace are think, tokens after the close are answer,
tokens before any open are answer unless the prompt opened the trace. The ids come from the runner's
host copy of each request's tokens, so the split is refused on an engine with async scheduling (the
last sampled token is not on the host yet when the next step runs).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from harness.vllm_plugin.checks import MoteVLLMError

SPANS = ("prompt", "think", "answer")
PROMPT, THINK, ANSWER = range(3)
TRASH = 0  # the slot whose counts nobody reads


@dataclass(frozen=True)
class ThinkIds:
    """Token ids of the trace's delimiters, and whether the prompt already opened it."""

    open: int | None
    close: int
    prompt_opens: bool | None = False  # None: from the prompt's token ids (`with_prompt`)

    @classmethod
    def from_data(cls, data: Any, where: str) -> ThinkIds:
        """From a dict or its JSON text (what `vllm_xargs` can carry over HTTP)."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as err:
                raise MoteVLLMError(f"{where}: expected a JSON object, got {data!r} ({err})") from err
        if not isinstance(data, dict) or not isinstance(data.get("close"), int):
            raise MoteVLLMError(
                f"{where}: expected {{'open': token id or null, 'close': token id, 'prompt_opens': bool}}, got {data!r}"
            )
        opener = data.get("open")
        if opener is not None and not isinstance(opener, int):
            raise MoteVLLMError(f"{where}.open: expected a token id or null, got {opener!r}")
        opens = data.get("prompt_opens")
        return cls(opener, int(data["close"]), None if opens is None else bool(opens))

    def with_prompt(self, prompt_ids: Sequence[int] | None) -> ThinkIds:
        """With `prompt_opens` read from the prompt's token ids where the client left it out: the prompt
        ends inside a trace if its last open comes after its last close (`prompt_opens_think` on ids)."""
        if self.prompt_opens is not None:
            return self
        ids = list(prompt_ids or [])

        def last(token: int | None) -> int:
            return max((i for i, t in enumerate(ids) if t == token), default=-1) if token is not None else -1

        return replace(self, prompt_opens=last(self.open) > last(self.close))


@dataclass
class CountedRequest:
    request_id: str
    slot: int
    think: ThinkIds | None
    state: str = "outside"  # of the trace: outside | think | done (with think ids)
    conflict: str | None = None

    def __post_init__(self) -> None:
        if self.think is not None and self.think.prompt_opens:
            self.state = "think"

    def span_of(self, token: int) -> int:
        """THINK or ANSWER for the next generated token, advancing the trace state."""
        if self.think is None:
            return ANSWER
        before = self.state
        if token == self.think.close:
            self.state = "done"
        elif token == self.think.open:
            self.state = "think"
        after = self.state
        in_think = "think" in (before, after) or (before, after) == ("outside", "done")
        return THINK if in_think else ANSWER


@dataclass(frozen=True)
class StepRequests:
    """The counted requests of a step's batch (cached while the batch composition holds)."""

    counted: list[CountedRequest]
    batch_index: np.ndarray  # int64: each one's index in the runner's input batch
    slots: np.ndarray  # int64: each one's slot
    thinking: np.ndarray  # bool: each one splits think / answer


@dataclass
class DecodeStep:
    """A step in which every request routed one token, and every counted one a new generated token outside
    any think split: the next step of the same batch, one position on, has the same buckets (so
    `step_rows` reuses them). The reused steps' tallies are added when the run ends (`CountPool.settle`)."""

    step: StepRequests
    n_tokens: int
    next_positions: np.ndarray  # each counted request's position in the next such step
    rows: tuple[torch.Tensor, ...]  # what `step_rows` gave
    reused: int = 0  # steps since, not yet in `upto` / `tokens`


class CountPool:
    """The count buffer of one worker, which request holds which slot, and per slot (host arrays) the
    prompt length, the positions counted so far and the tokens counted per span."""

    def __init__(self, n_layers: int, n_experts: int, device: torch.device | str) -> None:
        self.n_layers = n_layers
        self.n_experts = n_experts
        self.device = torch.device(device)
        self.buffer = self._zeros(2)
        self.flat = self.buffer.view(-1)
        self.prompt_length = np.zeros(2, dtype=np.int64)
        self.upto = np.zeros(2, dtype=np.int64)  # positions below this were counted
        self.tokens = np.zeros((2, len(SPANS)), dtype=np.int64)
        self.requests: OrderedDict[str, CountedRequest] = OrderedDict()
        self.free: list[int] = [1]
        self._ones: torch.Tensor | None = None
        self._ones_n: torch.Tensor | None = None  # its first n, for the last n added
        self._decode: DecodeStep | None = None

    def _zeros(self, slots: int) -> torch.Tensor:
        # made during a step, which runs under inference mode; a fetch (outside it) zeroes a slot in
        # place, which an inference tensor would refuse
        with torch.inference_mode(False):
            return torch.zeros(
                (slots * len(SPANS), self.n_layers, self.n_experts), dtype=torch.int32, device=self.device
            )

    @property
    def slots(self) -> int:
        return self.buffer.shape[0] // len(SPANS)

    def open(self, key: str, request_id: str, prompt_length: int, think: ThinkIds | None) -> CountedRequest:
        """`key`'s counts for this request (a slot taken on first use); a key another request holds is
        marked conflicting (its fetch fails)."""
        counted = self.requests.get(key)
        if counted is None:
            counted = CountedRequest(request_id, self._slot(), think)
            self.prompt_length[counted.slot] = prompt_length
            self.requests[key] = counted
        elif counted.request_id != request_id and counted.conflict is None:
            counted.conflict = (
                f"count key {key!r} was used by request {counted.request_id!r} and again by request "
                f"{request_id!r} before it was fetched; give every request its own key"
            )
        return counted

    def _slot(self) -> int:
        if not self.free:
            old = self.slots
            grown = self._zeros(2 * old)
            grown[: old * len(SPANS)] = self.buffer
            self.buffer = grown
            self.flat = grown.view(-1)
            self.prompt_length = np.concatenate([self.prompt_length, np.zeros(old, dtype=np.int64)])
            self.upto = np.concatenate([self.upto, np.zeros(old, dtype=np.int64)])
            self.tokens = np.concatenate([self.tokens, np.zeros((old, len(SPANS)), dtype=np.int64)])
            self.free = list(range(old, 2 * old))
        return self.free.pop()  # the last freed first

    @staticmethod
    def step_requests(counted: list[tuple[int, CountedRequest]]) -> StepRequests:
        kept = [(index, c) for index, c in counted if c.conflict is None]  # refused ones count nothing
        return StepRequests(
            counted=[c for _, c in kept],
            batch_index=np.asarray([index for index, _ in kept], dtype=np.int64),
            slots=np.asarray([c.slot for _, c in kept], dtype=np.int64),
            thinking=np.asarray([c.think is not None for _, c in kept], dtype=bool),
        )

    def buckets(
        self, step: StepRequests, n_tokens: int, starts: np.ndarray, first: np.ndarray, token_ids: np.ndarray | None
    ) -> np.ndarray:
        """Each of the step's tokens' bucket, slot * 3 + span (TRASH: not counted). `starts` the step's
        query_start_loc, `first` each batch request's first position this step (num_computed_tokens),
        `token_ids` the batch's token ids [requests, positions] (read for the think split only).
        Positions counted before (a recomputation) go to the trash; one pass over all requests."""
        self.settle()
        out = np.zeros(n_tokens, dtype=np.int64)
        if not len(step.slots):
            return out
        index, slots = step.batch_index, step.slots
        begin = starts[index]
        lengths = starts[index + 1] - begin
        if bool((lengths == 1).all()):
            # one token per request (a decode step): no per-token expansion
            owner: np.ndarray | None = None
            positions = first[index].astype(np.int64)
            at = begin
        else:
            owner = np.repeat(np.arange(len(slots)), lengths)
            offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            positions = first[index][owner] + offset
            at = begin[owner] + offset
        token_slots = slots if owner is None else slots[owner]
        new = positions >= self.upto[token_slots]
        spans = np.where(positions < self.prompt_length[token_slots], PROMPT, ANSWER)
        if step.thinking.any():
            if token_ids is None:
                raise MoteVLLMError("the think / answer split needs the step's token ids")
            # generated tokens of requests that split, in position order: one per request per decode step
            whose = step.thinking if owner is None else step.thinking[owner]
            for t in np.flatnonzero(new & (spans == ANSWER) & whose):
                request = int(t) if owner is None else int(owner[t])
                spans[t] = step.counted[request].span_of(int(token_ids[index[request], positions[t]]))
        bucket = token_slots * len(SPANS) + spans
        out[at] = np.where(new, bucket, TRASH)
        self.upto[slots] = np.maximum(self.upto[slots], first[index] + lengths)
        self.tokens += np.bincount(bucket[new], minlength=self.tokens.size).reshape(self.tokens.shape)
        return out

    def step_rows(
        self,
        step: StepRequests,
        n_tokens: int,
        starts: np.ndarray,
        first: np.ndarray,
        token_ids: np.ndarray | None,
        device: torch.device | str,
    ) -> tuple[torch.Tensor, ...]:
        """`layer_bases(buckets(...))` for a step, one [tokens, 1] row per MoE layer (what `add` takes). A
        decode step that follows one (`DecodeStep`) reuses its rows: only the positions and the tallies
        move, and nothing is copied to the device."""
        index = step.batch_index
        one_each = int(starts[-1]) == len(starts) - 1  # every request of the batch routes one token
        last = self._decode
        if last is not None and last.step is step and last.n_tokens == n_tokens and one_each:
            positions = first[index]
            if bool((positions == last.next_positions).all()):
                # every position is the one after the last counted one (so new) and generated (so answer)
                last.next_positions = last.next_positions + 1
                last.reused += 1
                return last.rows
        buckets = self.buckets(step, n_tokens, starts, first, token_ids)
        bases = self.layer_bases(buckets, device)
        decode = (
            one_each
            and len(index) > 0
            and not step.thinking.any()
            and bool((buckets[index] == step.slots * len(SPANS) + ANSWER).all())  # token i is request i
        )
        rows = tuple(bases.unsqueeze(-1).unbind(0))
        self._decode = DecodeStep(step, n_tokens, first[index].astype(np.int64) + 1, rows) if decode else None
        return rows

    def settle(self) -> None:
        """Add the reused decode steps' tallies (`step_rows`) to `upto` and `tokens`."""
        last = self._decode
        if last is not None and last.reused:
            slots = last.step.slots
            self.upto[slots] = np.maximum(self.upto[slots], last.next_positions)
            self.tokens[slots, ANSWER] += last.reused
            last.reused = 0

    def layer_bases(self, buckets: np.ndarray, device: torch.device | str) -> torch.Tensor:
        """Per MoE layer, each token's offset into the flat buffer ([layers, tokens], on the device: one
        host-to-device copy): what `add` takes, so a layer costs one add and the index_add_. int32 while
        the buffer's offsets fit (the add with vLLM's int32 ids then needs no widening)."""
        bases = buckets * (self.n_layers * self.n_experts) + (np.arange(self.n_layers) * self.n_experts)[:, None]
        if self.buffer.numel() < 2**31:
            bases = bases.astype(np.int32)
        return torch.from_numpy(bases).to(device)

    def add(self, row: torch.Tensor, ids: torch.Tensor, dropped: torch.Tensor | None) -> None:
        """Count one MoE layer's top-k ids ([tokens, k]) into each token's bucket; `row` is that layer's
        row of `step_rows` ([tokens, 1])."""
        flat = row + ids
        if dropped is not None:
            flat = flat.masked_fill(dropped, TRASH)  # flat index 0: the trash's first cell
        n = flat.numel()
        ones = self._ones_n
        if ones is None or ones.numel() != n or ones.device != flat.device:
            kept = self._ones
            if kept is None or kept.numel() < n or kept.device != flat.device:
                kept = self._ones = torch.ones(max(n, 4096), dtype=torch.int32, device=flat.device)
            ones = self._ones_n = kept[:n]
        self.flat.index_add_(0, flat.view(-1), ones)

    def take(self, key: str) -> dict[str, Any] | None:
        """`key`'s counts {prompt, think, answer: [L][E]} and tokens per span (one device read), its slot
        freed; None if no request counted under it. Raises for a conflicting key."""
        counted = self.requests.pop(key, None)
        if counted is None:
            return None
        values, tokens = self._release(counted.slot)
        if counted.conflict is not None:
            raise MoteVLLMError(counted.conflict)
        return {
            "think_split": counted.think is not None,
            "tokens": dict(zip(SPANS, tokens, strict=True)),
            **{name: values[i] for i, name in enumerate(SPANS)},
        }

    def _release(self, slot: int) -> tuple[np.ndarray, list[int]]:
        self.settle()
        block = self.buffer[slot * len(SPANS) : (slot + 1) * len(SPANS)]
        values = block.cpu().numpy().astype(np.int64)
        tokens = self.tokens[slot].tolist()
        block.zero_()
        self._decode = None  # (a new batch scan follows anyway)
        self.tokens[slot] = 0
        self.upto[slot] = 0
        self.prompt_length[slot] = 0
        self.free.append(slot)
        return values, tokens

    def drop_oldest(self) -> str:
        """Free the oldest pending key's slot (the cap on pending records); returns the key."""
        key, counted = self.requests.popitem(last=False)
        self._release(counted.slot)
        return key
