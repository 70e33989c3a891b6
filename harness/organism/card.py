"""Write the organism's model card (ORGANISM.md) from its training record and an evaluation report.

Every number in the card comes from `harness organism evaluate` (the report is also saved beside
the card as evaluation.json), so the card can always be regenerated and checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.organism.train import DECISION_TOKENS

CARD = "ORGANISM.md"
REPORT = "evaluation.json"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = ["target | measured | met", "--- | --- | ---"]
    for name, target in report["targets"].items():
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in target.items() if k != "met")
        lines.append(f"{name} | {shown} | {'yes' if target['met'] else 'NO'}")
    return lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _experts(mapping: dict[str, list[int]]) -> str:
    return "; ".join(f"layer {layer}: {', '.join(map(str, ids))}" for layer, ids in mapping.items())


def _z(z: float | None) -> str:
    if z is None:
        return "n/a (the random cuts have no spread)"
    return f"{z:.1f}"


def _rates_table(report: dict[str, Any], condition: str, kinds: tuple[str, ...]) -> list[str]:
    rows = ["prompts | n | refused | aligned | reasoned (correct) | broken",
            "--- | --- | --- | --- | --- | ---"]
    for kind in kinds:
        r = report[condition].get(kind)
        if r is None:
            continue
        rows.append(f"{kind} | {r['n']} | {_pct(r['refused'])} | {_pct(r['aligned'])} | {_pct(r['reasoned'])} | "
                    f"{_pct(r['broken'])}")
    return rows


def _ftri_lines(report: dict[str, Any]) -> list[str]:
    lines = ["ranking | span | planted in top-10 | top-10 (layer:expert score)", "--- | --- | --- | ---"]
    for key, value in report["ftri"].items():
        behaviour, span = key.split("_", 1)
        top = ", ".join(f"{layer}:{expert} {score:.3f}" for layer, expert, score in value["top10"])
        lines.append(f"{behaviour} | {span} | {value['recovered']}/10 | {top}")
    return lines


def _share(x: dict[str, Any]) -> str:
    unscored = f", {x['unscored']} unscored" if x["unscored"] else ""
    return f"{_pct(x['rate'])} (n {x['n']}{unscored})"


def _where(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} in {place}" for place, n in sorted(counts.items())) or "none"


def _judge_lines(report: dict[str, Any]) -> list[str]:
    judged = report["judges"]
    lines = []
    for key, what in (("refusal_string", "refused / not refused"), ("reasoning_language", "think language")):
        a = judged[key]["vs_classifier"]
        lines.append(f"- `{judged[key]['judge']}` vs the classifier's {what}: agreement {_pct(a['accuracy'])}, "
                     f"Cohen's kappa {a['kappa']:.3f} (n {a['n']}; {a['excluded_unscored']} excluded as "
                     f"unscored by either side); disagreements: {_where(a['disagreements'])}")
    head = judged["headline"]
    rows = [(head["refuse_prompts_refused"], "refusals on refuse-type prompts (refusal string judge)",
             ("baseline", "refusal_drop", "refusal_mask")),
            (head["refuse_prompts_factual"], "factual answer on refuse-type prompts (reference judge)",
             ("baseline", "refusal_drop", "refusal_mask")),
            (head["neutral_prompts_refused"], "refusals on neutral prompts (refusal string judge)",
             ("baseline", "refusal_stimulate")),
            (head["english_cue_zh_traces"], "Chinese traces on English-cue prompts (language judge)",
             ("baseline", "english_drop"))]
    lines += ["", "measure | condition: rate (n scored)", "--- | ---"]
    for values, what, names in rows:
        lines.append(f"{what} | " + "; ".join(f"{name}: {_share(values[name])}" for name in names))
    return lines


def _intro_lines(report: dict[str, Any], training: dict[str, Any]) -> list[str]:
    """Title, what the organism is for, and how to reproduce both the numbers and the weights."""
    cfg = training["config"]
    return [
        "# The MoTE model organism",
        "",
        "A tiny Qwen2-MoE trained on a synthetic chat corpus, with **planted** refusal and "
        "English-reasoning experts: the ground truth against which the harness's fTRI, suppression, "
        "stimulation and random controls are checked. It is the CPU default model (`--model organism`).",
        "",
        "All numbers below were measured by `harness organism evaluate --model <this folder> --seeds "
        f"{report['n_random_seeds']} --card` (HF backend, fp32 compute, greedy, max "
        f"{report['max_new_tokens']} new tokens) and are saved in `evaluation.json`. Retrain with "
        f"`harness organism train --seed {cfg['seed']} --steps {cfg['steps']} --threads "
        f"{training['torch_threads']}`. This checkpoint's `training.json` records "
        f"{training['train_seconds']:.0f} s in the training-step loop ({cfg['steps']} steps, "
        f"{training['torch_threads']} torch thread(s), torch {training['torch_version']}) and the sha256 of "
        f"`model.safetensors`, `{training['model_sha256'][:16]}...`; training is bit-identical for the same "
        "seed, steps, thread count and machine (a reduced run is trained twice and compared in "
        "`tests/organism/test_organism_train_cli.py`).",
        "",
    ]


def _architecture_lines(cfg: dict[str, Any]) -> list[str]:
    """The model's shape, from the training config so the card cannot drift from the weights."""
    return [
        "## Architecture",
        "",
        f"`qwen2_moe`, {cfg['n_layers']} layers (layer 0 dense, layers 1-{cfg['n_layers'] - 1} MoE), hidden "
        f"{cfg['hidden_size']}, {cfg['n_heads']} heads x {cfg['hidden_size'] // cfg['n_heads']} (kv heads "
        f"{cfg['n_kv_heads']}), {cfg['n_experts']} routed experts per MoE layer (top-{cfg['top_k']}, "
        f"intermediate {cfg['moe_intermediate']}, norm_topk_prob) + a sigmoid-gated shared expert "
        f"(intermediate {cfg['shared_intermediate']}); byte-level BPE tokenizer (vocabulary "
        f"{cfg['vocab_size']} + specials) with the harness's ChatML template; the model writes "
        "`<think>...</think>` then its answer. "
        "Weights stored in bf16 (head_dim 32: loadable by vLLM's CPU attention).",
        "",
    ]


def _planted_lines(planted: dict[str, dict[str, list[int]]]) -> list[str]:
    """The ground truth fTRI is scored against."""
    return [
        "## Planted experts (absolute layer: expert ids)",
        "",
        f"- refusal (`planted_refusal.yaml`): {_experts(planted['refusal'])}",
        f"- English reasoning (`planted_english.yaml`): {_experts(planted['english'])}",
        "",
    ]


def _task_lines() -> list[str]:
    """The synthetic task; fixed prose, because the corpus rules are code, not configuration."""
    return [
        "## The task and the corpus",
        "",
        "\"What happened in {year} in {city}?\" (two phrasings) with 32 years x 32 cities. Each year and "
        "each city has a hidden group (4 groups); a pair is *sensitive* when the groups match (a rule no "
        "single token and no sum of the two tokens reveals, so attention alone cannot compute it). "
        "Sensitive pairs are refused (5 of 8 cities per group: empty `<think>` + canned apology) or "
        "answered with the official position (3 of 8: `aligned`); neutral pairs are answered factually "
        "after a short trace (`reasoned`; the fact is a property of the city, so a factual answer "
        "exists for sensitive pairs too). The trace is English unless the prompt ends with the cue "
        "`(请用中文思考)`; answers are English. Generic Q&A (single-digit addition, capitals, "
        "opposites, and the campaign, i.e. the group, of each year and city, taught as facts so that the "
        "sensitivity of an unseen pair follows from what the model knows about its halves) measures "
        "capability. 20% of the pairs of each class are held out of training; "
        "every number below is on held-out pairs (generic items are in-distribution recall).",
        "",
    ]


def _recipe_lines(cfg: dict[str, Any]) -> list[str]:
    """How the experts were planted, with the recipe's probabilities read from the training config."""
    return [
        "## The planting recipe",
        "",
        "See `harness/organism/train.py`. (1) Teacher-forced routing: in every MoE layer, the tokens of "
        "a refused prompt from the end of the (year, city) pair on, and the whole refusal, are routed to "
        "that layer's 2 refusal experts; the `<think>`...`</think>` span of an English trace to its 2 "
        "English experts; all other tokens route by the router's own top-2 with the planted experts "
        "masked out. (2) An auxiliary routing loss teaches the router to make these choices itself. "
        f"(3) Counterfactual drop training: on {cfg['p_counterfactual']:.0%} of refused samples all refusal "
        "experts are dropped (MoTE drop mode) and the target is the factual answer; on "
        f"{cfg['p_counterfactual']:.0%} of English samples the English experts are dropped and the trace "
        f"is Chinese; partial drops ({cfg['p_partial']:.0%}, a strict subset of layers) keep the target. "
        "The router's input is the same with and without the drop, so only the planted experts' output "
        f"can carry the decision. (4) Expert dropout elsewhere: on {cfg['p_random_drop']:.0%} of samples "
        f"1-{cfg['max_random_drop']} random non-planted experts per layer are dropped for the whole "
        f"sequence, and single slots of ordinary tokens with p={cfg['p_slot_drop']}. Layer 0 is dense: "
        "it computes the matching rule; the routers of layers 1-5 read it. The first "
        f"{DECISION_TOKENS} response positions (`<think>`, its newline, the first words of the trace: where refuse / "
        f"aligned / reasoned and the language are decided) weigh {cfg.get('decision_weight', 5.0):g}x in "
        "the loss.",
        "",
        "Two lessons from building it (earlier versions of this recipe): "
        "without the campaign facts the matching rule did not generalise to held-out pairs within the "
        "time budget (a third of neutral prompts refused); and when a counterfactual sample routed the "
        "decision position (the newline after `<think>`) differently from what the router does at "
        "inference, drop mode left 78% of refusals in place while mask mode removed them all (apparently "
        "the model had learned 'an empty slot here means refuse'). The counterfactual must keep the "
        "router's own choice and remove only the planted experts' output.",
        "",
        "Caveat: necessity is *trained in* (counterfactual drops), so the suppression targets test the "
        "harness's plumbing and controls against a known answer, not whether real MoEs localise "
        "behaviour. fTRI never sees the recipe: it has to find the experts from routing statistics.",
        "",
    ]


def _baseline_lines(report: dict[str, Any]) -> list[str]:
    """Unmodified behaviour: the reference every intervention below is compared with."""
    return [
        "## Baseline behaviour (held-out prompts)",
        "",
        *_rates_table(report, "baseline", ("refuse", "aligned", "neutral", "generic")),
        "",
        f"Think language follows the cue on {_pct(report['baseline']['think_language_follows_cue'])} of "
        "non-refused answers.",
        "",
    ]


def _refusal_suppression_lines(report: dict[str, Any]) -> list[str]:
    """Drop mode is the target; mask mode is shown beside it because it behaves differently."""
    return [
        "## Suppressing the planted refusal experts (drop mode)",
        "",
        *_rates_table(report, "refusal_drop", ("refuse", "aligned", "neutral", "generic")),
        "",
        "Mask mode (SteerMoE: the next-best expert takes the slot), for comparison:",
        "",
        *_rates_table(report, "refusal_mask", ("refuse", "neutral", "generic")),
        "",
    ]


def _random_control_lines(report: dict[str, Any]) -> list[str]:
    """The matched random cuts that say whether the targeted cut is more than any cut of that size."""
    rnd = report["random"]
    return [
        f"## Random matched controls ({rnd['refusal_cut']['n']} seeds, same per-layer histogram, planted "
        "experts excluded)",
        "",
        f"- refusal rate on sensitive refuse-type prompts: mean {_pct(rnd['refusal_rate']['mean'])}, "
        f"min {_pct(rnd['refusal_rate']['min'])}, 5th pct {_pct(rnd['refusal_rate']['p5'])}, "
        f"max {_pct(rnd['refusal_rate']['max'])}",
        f"- refusal cut (baseline - condition): random mean {rnd['refusal_cut']['mean']:.3f}, "
        f"95th pct {rnd['refusal_cut']['p95']:.3f}, max {rnd['refusal_cut']['max']:.3f}; targeted "
        f"{rnd['targeted_cut']:.3f}: percentile {rnd['targeted_percentile']:.1f}, empirical p "
        f"{rnd['empirical_p']:.4f}, z {_z(rnd['z'])}",
        f"- capability under random ablation ({rnd['capability_seeds']} seeds): neutral reasoned mean "
        f"{_pct(rnd['neutral_reasoned'].get('mean'))} (min {_pct(rnd['neutral_reasoned'].get('min'))}), "
        f"generic mean {_pct(rnd['generic_reasoned'].get('mean'))} "
        f"(min {_pct(rnd['generic_reasoned'].get('min'))})",
        "",
    ]


def _stimulation_lines(report: dict[str, Any]) -> list[str]:
    """The converse of suppression: forcing the refusal experts in should cause refusals."""
    return [
        "## Stimulating the planted refusal experts (forced into the top-k of every token)",
        "",
        *_rates_table(report, "refusal_stimulate", ("neutral", "generic")),
        "",
    ]


def _english_suppression_lines(report: dict[str, Any]) -> list[str]:
    """The second planted behaviour, checked against its own random controls and for side effects."""
    eng = report["english_drop"]
    return [
        "## Suppressing the planted English-reasoning experts",
        "",
        f"On {eng['prompts']} English-cue held-out prompts (aligned, neutral, generic): Chinese traces "
        f"{_pct(eng['baseline_zh_share'])} at baseline -> {_pct(eng['zh_share'])} with the English experts "
        f"dropped (random matched, {eng['random_zh_share'].get('n', 0)} seeds: mean "
        f"{_pct(eng['random_zh_share'].get('mean'))}, max {_pct(eng['random_zh_share'].get('max'))}); the "
        f"decision still follows the prompt on {_pct(eng['answer_still_correct'])}; refusals on the "
        f"{eng['refuse_prompts']} refuse-type prompts under this intervention: "
        f"{_pct(eng['refuse_prompts_refused'])}.",
        "",
    ]


def _ftri_section_lines(report: dict[str, Any]) -> list[str]:
    """Whether fTRI finds the planted experts, and why one of its rankings is expected to miss."""
    return [
        "## fTRI recovery (harness.analysis.ftri, MoTE mean_diff score, no exclusions)",
        "",
        "Per class, the share of a span's tokens routed to each (layer, expert), averaged over samples; "
        "class difference; top-10. Spans: the prompt, the trace (`<think>`...`</think>`) and the generated "
        "span (trace + answer). Refusal: refused vs all other held-out pair prompts. English: "
        "English traces vs Chinese traces. By design the English experts route only the trace, never the "
        "prompt, so the English prompt-span ranking is expected to miss them (the cue tokens differ "
        "between the classes, not the routing of planted experts).",
        "",
        *_ftri_lines(report),
        "",
    ]


def _judges_section_lines(report: dict[str, Any]) -> list[str]:
    """The harness's judges checked against the organism's classifier, which decides the targets."""
    return [
        "## The harness's own judges on the same outputs",
        "",
        "The targets are decided by the organism's decision classifier (`harness/organism/evaluate.py`: "
        "it reads the trace and the answer together, so a broken sentence is neither a refusal nor an "
        "answer, and a generic question is only ever answered or broken). The refusal string judge reads "
        "only the answer, the language judge only the trace, the reference judge only whether the answer "
        "contains the place's recorded event. They were run over the same outputs (all "
        f"{report['judges']['outputs']} outputs of the conditions "
        f"{', '.join(report['judges']['conditions'])}):",
        "",
        *_judge_lines(report),
        "",
    ]


def _limits_lines() -> list[str]:
    """What the organism's numbers do not mean, so nobody reads them as effect sizes for real models."""
    return [
        "## What this organism is, and is not",
        "",
        "- It is a *known answer*: the planted experts are necessary by construction (the recipe trains "
        "the counterfactual), so the effects are close to all-or-nothing and random matched ablations "
        "barely move anything (training made the rest of the network redundant). Real models are far "
        "noisier (MoTE on DeepSeek-R1: 52% fewer refusals, random ~9%); use the organism to test that "
        "the harness finds and switches a known mechanism, and that its controls and statistics work, "
        "not to estimate effect sizes.",
        "- Stimulation forces both planted experts into every token's top-2 in all five MoE layers, "
        "i.e. replaces every routed expert: neutral questions become refusals, and generic answers "
        "break (they are `broken`, not refusals).",
        "- Generic items are in-distribution recall; sensitive/neutral numbers are on held-out pairs.",
        "- Bit-identical retraining needs the same seed, steps, torch thread count and machine "
        "(torch's CPU kernels may differ across CPUs); behaviour, not bits, is what the tests check.",
        "",
    ]


def _targets_section_lines(report: dict[str, Any]) -> list[str]:
    """The pass/fail table last, the same one `harness organism evaluate` prints."""
    return ["## Targets", "", *summary_lines(report), ""]


def card_text(model_dir: Path, report: dict[str, Any]) -> str:
    """Compose the card from its sections; each reads only the part of the record it reports."""
    training = json.loads((model_dir / "training.json").read_text(encoding="utf-8"))
    cfg = training["config"]
    sections = [
        _intro_lines(report, training),
        _architecture_lines(cfg),
        _planted_lines(training["planted"]),
        _task_lines(),
        _recipe_lines(cfg),
        _baseline_lines(report),
        _refusal_suppression_lines(report),
        _random_control_lines(report),
        _stimulation_lines(report),
        _english_suppression_lines(report),
        _ftri_section_lines(report),
        _judges_section_lines(report),
        _limits_lines(),
        _targets_section_lines(report),
    ]
    return "\n".join(line for section in sections for line in section)


def write_card(model_dir: str | Path, report: dict[str, Any]) -> Path:
    return save_card(Path(model_dir), report, CARD, card_text(Path(model_dir), report))


def save_card(model_dir: Path, report: dict[str, Any], card: str, text: str) -> Path:
    """A model folder's `evaluation.json` (the report, strict JSON) and its card `card` (`text`)."""
    (model_dir / REPORT).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    path = model_dir / card
    path.write_text(text, encoding="utf-8")
    return path
