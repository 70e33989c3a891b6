"""fTRI's inputs and outputs, shared by `harness run` (its discovery step) and `harness ftri` (standalone).

- which routing spans a span name covers, and one prompt's counts over them;
- which fTRI class a judge label falls in;
- the two files an fTRI step writes: the intervention that suppresses the top k (`experts.yaml`,
  with provenance) and the ranking report (`ftri.json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness.analysis.ftri import FtriResult
from harness.common.atomic_files import write_whole
from harness.mote.intervention import Intervention, Mode, save_intervention
from harness.mote.records import RoutingRecord, Span, count_map
from harness.suite.schema import Span as SpanName

SCHEMA_VERSION = 1  # of ftri.json
TARGET: Literal["target"] = "target"
OTHER: Literal["other"] = "other"
OTHER_DEFAULT = "every other scored label"
UNSCORED = "unscored"
REPORT_TOP = 50  # ftri.json lists at least this many ranked experts (at least k)

SPAN_PARTS: dict[SpanName, tuple[Span, ...]] = {
    "prompt": (Span.PROMPT,),
    "think": (Span.THINK,),
    "answer": (Span.ANSWER,),
    "generated": (Span.THINK, Span.ANSWER),
    "all": (Span.PROMPT, Span.THINK, Span.ANSWER),
}


def record_counts(record: RoutingRecord, n_experts: int, span: SpanName) -> tuple[np.ndarray, int]:
    """Counts [moe_layers, n_experts] of the record's tokens in `span`, and how many tokens that is."""
    mask = np.isin(record.span, [int(s) for s in SPAN_PARTS[span]])
    return count_map(record.topk_ids[mask], n_experts), int(mask.sum())


def classify(label: str, target: Sequence[str], other: Sequence[str] | None) -> Literal["target", "other"] | None:
    """The fTRI class of a scored label: target, other (`other` None = every other label), or neither."""
    if label in target:
        return TARGET
    if other is None or label in other:
        return OTHER
    return None


@dataclass(frozen=True)
class FtriSetup:
    """How a ranking was made, as its files record it (the score is the ranking's own)."""

    span: SpanName
    k: int
    target_labels: Sequence[str]
    other_labels: Sequence[str] | None = None  # None: every other scored label
    mode: Mode = "drop"  # of the emitted intervention
    task: str | None = None  # the suite task and split of the prompts (None outside a suite run)
    split: str | None = None


def ftri_intervention(result: FtriResult, setup: FtriSetup, source: Mapping[str, Any]) -> Intervention:
    """Suppress the top k; provenance says how they were found and, from `source`, from what."""
    intervention = result.intervention(setup.k, mode=setup.mode)
    provenance = {
        **intervention.provenance,
        "span": setup.span,
        "task": setup.task,
        "split": setup.split,
        "target_labels": list(setup.target_labels),
        **source,
    }
    return intervention.model_copy(update={"provenance": provenance})


def ftri_report(
    result: FtriResult, setup: FtriSetup, unscored: int, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The content of ftri.json; `extra` keys follow the common ones."""
    other = list(setup.other_labels) if setup.other_labels else OTHER_DEFAULT
    return {
        "schema_version": SCHEMA_VERSION,
        "task": setup.task,
        "split": setup.split,
        "span": setup.span,
        "score": result.score,
        "k": setup.k,
        "classes": {"target": list(setup.target_labels), "other": other},
        "n_prompts": result.n_prompts,
        "n_tokens": result.n_tokens,
        "unscored": unscored,
        "excluded": result.excluded.to_mapping(),
        "stability": result.stability,
        "top": [r.__dict__ for r in result.rows(max(REPORT_TOP, setup.k))],
        **(extra or {}),
    }


def write_ftri(
    result: FtriResult,
    setup: FtriSetup,
    intervention_path: Path,
    report_path: Path,
    *,
    unscored: int,
    source: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Intervention:
    """Write the intervention file and ftri.json; return the intervention."""
    intervention = ftri_intervention(result, setup, source)
    save_intervention(intervention, intervention_path)
    text = json.dumps(ftri_report(result, setup, unscored, extra), indent=2, ensure_ascii=False, default=str)
    data = (text + "\n").encode("utf-8")
    write_whole(report_path, lambda sink: sink.write(data))
    return intervention
