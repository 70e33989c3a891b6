"""The organism card's bookkeeping: per-condition n, the judges' cross-check, and the shipped card
being exactly what its evaluation.json renders. No model runs here."""

from __future__ import annotations

import json

from harness.backends.base import GenerationResult
from harness.models.resolve import organism_path
from harness.organism import corpus
from harness.organism.card import CARD, REPORT, card_text
from harness.organism.evaluate import classify, condition_rates
from harness.organism.judged import judge_report


def _rows(prompts, world, behaviour_of, lang="en", tag="c"):
    rows = []
    for prompt in prompts:
        behaviour = behaviour_of(prompt)
        text = corpus.render(prompt, world, behaviour, lang)
        think, _, answer = text.removeprefix("<think>").partition("</think>")
        result = GenerationResult(id=f"{tag}/{prompt.id}", text=text, think=think.strip(), answer=answer.strip(),
                                  intervention="none", n_prompt_tokens=1, n_generated_tokens=1,
                                  finish_reason="stop")
        rows.append((prompt, result, classify(prompt, world, result.think, result.answer)))
    return rows


def test_condition_rates_count_the_prompts_the_condition_ran_on():
    world = corpus.build_world(0)
    held = corpus.heldout_prompts(world)
    rows = _rows(held["refuse"][:5] + held["neutral"][:3], world, lambda p: p.expected)
    rates = condition_rates(rows)
    assert set(rates) == {"refuse", "neutral"}  # no empty kinds, so no NaN in evaluation.json
    assert (rates["refuse"]["n"], rates["neutral"]["n"]) == (5, 3)
    assert rates["refuse"]["refused"] == 1.0 and rates["neutral"]["reasoned"] == 1.0


def test_harness_judges_agree_with_the_classifier_on_rendered_outputs():
    world = corpus.build_world(0)
    held = corpus.heldout_prompts(world)
    english = held["neutral"][:6]
    runs = {
        "baseline": _rows(held["refuse"][:6] + english + held["neutral"][6:12], world, lambda p: p.expected),
        "refusal_drop": _rows(held["refuse"][:6], world, lambda p: "reasoned", tag="drop"),
        "refusal_mask": _rows(held["refuse"][:6], world, lambda p: "reasoned", tag="mask"),
        "refusal_stimulate": _rows(held["neutral"][:6], world, lambda p: "refused", tag="stim"),
        "english_drop": _rows(english, world, lambda p: p.expected, lang="zh", tag="eng"),
    }
    report = judge_report(runs, world, {p.id for p in english})
    for key in ("refusal_string", "reasoning_language"):
        assert report[key]["vs_classifier"]["accuracy"] == 1.0
        assert report[key]["vs_classifier"]["kappa"] == 1.0
        assert report[key]["vs_classifier"]["disagreements"] == {}
    head = report["headline"]
    assert head["refuse_prompts_refused"]["baseline"]["rate"] == 1.0
    assert head["refuse_prompts_refused"]["refusal_drop"]["rate"] == 0.0
    assert head["refuse_prompts_factual"]["refusal_drop"]["rate"] == 1.0
    assert head["neutral_prompts_refused"]["refusal_stimulate"]["rate"] == 1.0
    assert head["english_cue_zh_traces"]["baseline"] == {"rate": 0.0, "n": 6, "unscored": 0}
    assert head["english_cue_zh_traces"]["english_drop"]["rate"] == 1.0


def test_shipped_card_is_what_its_evaluation_report_renders():
    path = organism_path()
    report = json.loads((path / REPORT).read_text(encoding="utf-8"))
    assert (path / CARD).read_text(encoding="utf-8") == card_text(path, report)
    assert report["random"]["z"] is None or abs(report["random"]["z"]) < 1e6
    for condition in ("baseline", "refusal_drop", "refusal_mask", "refusal_stimulate"):
        for kind, rates in report[condition].items():
            if isinstance(rates, dict):
                assert 0 < rates["n"] <= report["counts"][kind], (condition, kind)
