"""One answer from every worker: merging what `collective_rpc` returns per rank.

`collective_rpc` returns one answer per worker, in rank order. What each holds depends on the
parallel layout:
- tensor-parallel (and expert-parallel) ranks of one pipeline stage route every token identically
  (the router is replicated), so their records are copies;
- pipeline-parallel stages each hold only their own layers (`--pipeline-parallel-size 2`: the first
  stage the first half of the MoE layers, the second the rest).
So the model's MoE layout is the union of every rank's layers, and a request's record is the layer
columns of one rank per distinct layer set, concatenated in ascending absolute layer order. Copies
are compared: ranks of one stage that disagree on the routing are an error, not a choice.
Both VLLMBackend (offline) and OpenAIBackend (served) merge here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.vllm_plugin.checks import MoteVLLMError
from harness.vllm_plugin.protocol import WorkerRecord, answer_error

# status fields that must be the same on every rank
_SAME_ON_EVERY_RANK = (
    "vllm_version",
    "plugin_version",
    "weights",
    "model_type",
    "compiled",
    "global_intervention",
    "record_all",
)


def merge_status(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`mote_status` of the whole engine from every worker's: layers, hook ops and selection checks are
    unions over ranks, the first rank's hook problem wins, the rest must agree."""
    if not answers:
        raise MoteVLLMError("mote_status: no worker answered")
    merged = dict(answers[0])
    for field in _SAME_ON_EVERY_RANK:
        values = {repr(a.get(field)) for a in answers}
        if len(values) > 1:
            raise MoteVLLMError(f"mote_status: workers disagree on {field!r}: {sorted(values)}")
    top_ks = {a["top_k"] for a in answers if a.get("top_k") is not None}
    if len(top_ks) > 1:
        raise MoteVLLMError(f"mote_status: workers report different top_k {sorted(top_ks)}")
    merged["top_k"] = top_ks.pop() if top_ks else None
    for field in ("moe_layers", "hook_ops", "selection_edits", "mask_before_topk"):
        union: dict[str, Any] = {}
        for answer in answers:
            union.update(answer.get(field) or {})
        merged[field] = dict(sorted(union.items(), key=lambda item: int(item[0])))
    problems = [a["hook_problem"] for a in answers if a.get("hook_problem")]
    merged["hook_problem"] = problems[0] if problems else None
    merged["pending_records"] = sorted({key for a in answers for key in a.get("pending_records") or []})
    merged["ranks"] = len(answers)
    return merged


def merge_records(answers: Sequence[Any], key: str, expected_layers: Sequence[int]) -> WorkerRecord | None:
    """One request's record from every rank's `mote_fetch` / `mote_fetch_arrays` answer (base64 npz or
    raw arrays, None, or an error answer, raised); None when no rank holds it. `expected_layers` (the
    merged status' MoE layers) is what the record must cover."""
    _raise_errors(answers)
    records = [WorkerRecord.decode(a) for a in answers if a is not None]
    if not records:
        return None
    distinct = _one_per_layer_set(records, key, lambda r: tuple(r.layers.tolist()), _same_routing)
    _check_cover(key, [layer for layers in distinct for layer in layers], expected_layers)
    parts = [distinct[layers] for layers in sorted(distinct)]
    first = parts[0]
    for other in parts[1:]:
        if not np.array_equal(first.positions, other.positions):
            raise MoteVLLMError(
                f"record {key!r}: pipeline stages recorded different positions "
                f"({first.positions.tolist()[:8]}... vs {other.positions.tolist()[:8]}...)"
            )
    order = np.argsort(np.concatenate([p.layers for p in parts]), kind="stable")
    return WorkerRecord(
        positions=first.positions,
        topk_ids=np.concatenate([p.topk_ids for p in parts], axis=1)[:, order],
        topk_weights=np.concatenate([p.topk_weights for p in parts], axis=1)[:, order],
        layers=np.concatenate([p.layers for p in parts])[order],
    )


COUNT_SPANS = ("prompt", "generated", "think", "answer")  # think / answer: device-side counts with mote_think


def merge_counts(answers: Sequence[Any], key: str, expected_layers: Sequence[int]) -> dict[str, Any] | None:
    """One request's `mote_counts` map ({layers, prompt [L][E], generated [L][E], and think / answer when
    split}) from every rank's."""
    _raise_errors(answers)
    maps = [a for a in answers if a is not None]
    if not maps:
        return None
    distinct = _one_per_layer_set(maps, key, lambda m: tuple(m["layers"]), lambda a, b: a == b)
    _check_cover(key, [layer for layers in distinct for layer in layers], expected_layers)
    spans = [span for span in COUNT_SPANS if all(span in counts for counts in distinct.values())]
    rows: list[tuple[int, tuple[list[int], ...]]] = []
    for layers, counts in distinct.items():
        rows.extend(zip(layers, zip(*(counts[span] for span in spans), strict=True), strict=True))
    rows.sort(key=lambda row: row[0])
    merged: dict[str, Any] = {"layers": [row[0] for row in rows]}
    merged |= {span: [row[1][i] for row in rows] for i, span in enumerate(spans)}
    tokens = [counts["tokens"] for counts in distinct.values() if "tokens" in counts]
    if tokens:  # device-side counts: every stage routed the same tokens
        if any(t != tokens[0] for t in tokens[1:]):
            raise MoteVLLMError(f"counts {key!r}: pipeline stages counted different tokens per span ({tokens})")
        merged["tokens"] = tokens[0]
    return merged


def merge_fetch(
    answers: Sequence[Mapping[str, Any]], keys: Sequence[str], expected_layers: Sequence[int]
) -> dict[str, WorkerRecord | None]:
    """The records of `keys` from every rank's fetch answer ({key: base64 npz | arrays | None | error})."""
    return {key: merge_records(per_rank, key, expected_layers) for key, per_rank in merge_keyed(answers, keys).items()}


def merge_count_answers(
    answers: Sequence[Mapping[str, Any]], keys: Sequence[str], expected_layers: Sequence[int]
) -> dict[str, dict[str, Any] | None]:
    """The count maps of `keys` from every rank's `mote_counts` answer, merged over pipeline stages."""
    return {key: merge_counts(per_rank, key, expected_layers) for key, per_rank in merge_keyed(answers, keys).items()}


def merge_keyed(answers: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, list[Any]]:
    """key -> every rank's answer for it, from per-rank {key: answer} dicts."""
    return {key: [answer.get(key) for answer in answers] for key in keys}


def _one_per_layer_set(items: Sequence[Any], key: str, layers_of: Any, same: Any) -> dict[tuple[int, ...], Any]:
    """One item per distinct layer set (a pipeline stage); items of the same set (tensor-parallel
    copies) must agree."""
    distinct: dict[tuple[int, ...], Any] = {}
    for item in items:
        layers = layers_of(item)
        if not layers:
            continue
        seen = distinct.get(layers)
        if seen is None:
            distinct[layers] = item
        elif not same(seen, item):
            raise MoteVLLMError(
                f"record {key!r}: two workers holding MoE layers {list(layers)} recorded different routing; "
                "tensor-parallel ranks must route every token identically"
            )
    flat = [layer for layers in distinct for layer in layers]
    if len(flat) != len(set(flat)):
        raise MoteVLLMError(f"record {key!r}: workers hold overlapping MoE layer sets {sorted(distinct)}")
    return distinct


def _raise_errors(answers: Sequence[Any]) -> None:
    for answer in answers:
        error = answer_error(answer)
        if error is not None:
            raise MoteVLLMError(error)


def _same_routing(a: WorkerRecord, b: WorkerRecord) -> bool:
    return np.array_equal(a.positions, b.positions) and np.array_equal(a.topk_ids, b.topk_ids)


def _check_cover(key: str, layers: Sequence[int], expected: Sequence[int]) -> None:
    if sorted(layers) != sorted(int(layer) for layer in expected):
        missing = sorted(set(int(layer) for layer in expected) - set(layers))
        raise MoteVLLMError(
            f"record {key!r}: the workers' records cover MoE layers {sorted(layers)}, the model has "
            f"{sorted(int(layer) for layer in expected)} (missing {missing}: a pipeline stage returned no record)"
        )
