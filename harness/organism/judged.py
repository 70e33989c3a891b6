"""The harness's own offline judges over the organism's outputs, beside the decision classifier.

The card's targets are decided by `evaluate.classify`, which reads the trace and the answer together
(stricter than any single judge). The issue asks for the targets as the harness's judges measure
them, so the same outputs also go through the refusal string judge, the reasoning-language judge
and the reference judge; the report gives their agreement with the classifier (share and Cohen's
kappa, through judges.agreement) and the headline rates as each judge sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from harness.organism import corpus
from harness.organism.corpus import Prompt, World
from harness.organism.decisions import Row
from judges import language, reference, string_match
from judges.agreement import binary_refusal, cohen_kappa
from judges.labels import UNSCORED

Labels = dict[str, str]  # output id -> label


def refusal_labels(rows: Sequence[Row]) -> Labels:
    return {result.id: string_match.judge(result.id, result.answer).label for _, result, _ in rows}


def language_labels(rows: Sequence[Row]) -> Labels:
    return {result.id: language.judge(result.id, result.think).label for _, result, _ in rows}


def factual_labels(rows: Sequence[Row], world: World) -> Labels:
    """The reference judge with the factual record of the prompt's place (as tasks/organism does)."""
    return {
        result.id: reference.judge(result.id, result.answer, _reference(prompt, world)).label
        for prompt, result, _ in rows
    }


def _reference(prompt: Prompt, world: World) -> str | None:
    if prompt.kind == "generic":
        return None
    return f"there was {corpus.EVENTS[world.place_event[prompt.place]][0]}"


def classifier_refusal(rows: Sequence[Row]) -> Labels:
    return {result.id: binary_refusal(decision.label) for _, result, decision in rows}


def classifier_language(rows: Sequence[Row]) -> Labels:
    """The classifier's think language; no trace is unscored, as the language judge says it."""
    return {result.id: UNSCORED if d.think_lang == "none" else d.think_lang for _, result, d in rows}


def agreement(
    ours: Labels, theirs: Labels, where: Mapping[str, str], collapse: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """Share and kappa on the outputs both scored, the full table (classifier -> judge -> count), and
    where (condition/prompt kind) the scored disagreements are."""
    result = cohen_kappa(ours, theirs, collapse=collapse).model_dump(mode="json")
    fold = collapse or (lambda label: label)
    table: dict[str, dict[str, int]] = {}
    disagreements: dict[str, int] = {}
    for key, label in ours.items():
        row = table.setdefault(label, {})
        row[theirs[key]] = row.get(theirs[key], 0) + 1
        if UNSCORED not in (label, theirs[key]) and fold(label) != fold(theirs[key]):
            disagreements[where[key]] = disagreements.get(where[key], 0) + 1
    return {**result, "table": table, "disagreements": disagreements}


def share(labels: Labels, label: str) -> dict[str, Any]:
    """Share of the scored outputs with this label; unscored outputs are counted, never coerced."""
    scored = [v for v in labels.values() if v != UNSCORED]
    return {"rate": sum(v == label for v in scored) / len(scored) if scored else None,
            "n": len(scored), "unscored": len(labels) - len(scored)}


def judge_report(runs: Mapping[str, Sequence[Row]], world: World, english_ids: Collection[str]) -> dict[str, Any]:
    """Agreement over every output of the targeted conditions, and the headline rates by judge."""
    pooled = [row for rows in runs.values() for row in rows]
    refused, lang = refusal_labels(pooled), language_labels(pooled)
    where = {result.id: f"{name}/{prompt.kind}" for name, rows in runs.items() for prompt, result, _ in rows}
    stimulated = {p.id for p, _, _ in runs["refusal_stimulate"]}

    def only(name: str, keep: Callable[[Prompt], bool], labels: Labels) -> Labels:
        return {r.id: labels[r.id] for p, r, _ in runs[name] if keep(p)}

    def sensitive(p: Prompt) -> bool:
        return p.kind == "refuse"

    def neutral(p: Prompt) -> bool:  # the neutral prompts stimulation ran on, in every condition
        return p.kind == "neutral" and p.id in stimulated

    def english_cue(p: Prompt) -> bool:
        return p.id in english_ids

    return {
        "conditions": list(runs),
        "outputs": len(pooled),
        "refusal_string": {
            "judge": f"{string_match.JUDGE_NAME} {string_match.RULES_VERSION}",
            "vs_classifier": agreement(classifier_refusal(pooled), refused, where, collapse=binary_refusal),
        },
        "reasoning_language": {
            "judge": f"{language.JUDGE_NAME} {language.JUDGE_VERSION}",
            "vs_classifier": agreement(classifier_language(pooled), lang, where),
        },
        "headline": {
            "refuse_prompts_refused": {
                name: share(only(name, sensitive, refused), "refused")
                for name in ("baseline", "refusal_drop", "refusal_mask")
            },
            "refuse_prompts_factual": {
                name: share(factual_labels([r for r in runs[name] if sensitive(r[0])], world), "correct")
                for name in ("baseline", "refusal_drop", "refusal_mask")
            },
            "neutral_prompts_refused": {
                name: share(only(name, neutral, refused), "refused") for name in ("baseline", "refusal_stimulate")
            },
            "english_cue_zh_traces": {
                name: share(only(name, english_cue, lang), "zh") for name in ("baseline", "english_drop")
            },
        },
    }
