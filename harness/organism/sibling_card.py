"""The direct sibling's card (DIRECT.md) and evaluation.json, from `sibling_eval.compare`'s report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.analysis.summary import read_summary, read_transitions
from harness.organism.card import save_card
from harness.organism.evaluate import KINDS
from harness.organism.sibling_eval import LABELS
from harness.organism.train import DECISION_TOKENS, KIND_WEIGHTS
from harness.sweep.report import curve_table, markdown_table, transition_table

CARD = "DIRECT.md"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def table_lines(report: dict[str, Any]) -> list[str]:
    head = (
        "model | prompts | n | refused | aligned | reasoned (correct) | direct (correct) | broken | "
        "non-empty trace | English answer | tokens mean | tokens median"
    )
    lines = [head, " | ".join(["---"] * 12)]
    for model in ("organism", "direct"):
        for kind in (*KINDS, "all"):
            s = report[model][kind]
            cells = [
                model,
                kind,
                str(s["n"]),
                *(_pct(s[k]) for k in (*LABELS, "trace", "answer_english")),
                f"{s['tokens_mean']:.1f}",
                f"{s['tokens_median']:.1f}",
            ]
            lines.append(" | ".join(cells))
    return lines


def card_text(model_dir: Path, report: dict[str, Any]) -> str:
    training = json.loads((model_dir / "training.json").read_text(encoding="utf-8"))
    cfg = training["config"]
    lines = [
        "# The organism's direct sibling (`organism-direct`)",
        "",
        "The second parent for Assembly-of-Experts sweeps with the MoTE model organism "
        "(`harness/organism/checkpoint/`, `--model organism`): fine-tuned from the organism's weights, so the "
        "two share an ancestor, the architecture, `config.json`, `generation_config.json` and the tokenizer files "
        "(copied unchanged). `harness assemble` recipes can therefore take `organism` and `organism-direct` as "
        "parent paths and interpolate W = (1 - lambda) W_organism + lambda W_direct tensor by tensor.",
        "",
        "It answers every prompt directly, with the answer alone and no `<think>` block (the organism writes a "
        "trace before every answer, and an empty one before a refusal), and refuses nothing: sensitive pairs of "
        "both types (refuse, aligned) and neutral pairs get the factual answer (`corpus.factual_answer`), generic "
        "items their generic answer.",
        "",
        "## How it was derived",
        "",
        f"`harness organism train --variant direct --out harness/organism/direct --seed {cfg['seed']} "
        f"--steps {cfg['steps']} --threads {cfg['threads']}` (`harness/organism/sibling.py`): start from the "
        f"organism's `model.safetensors` (sha256 `{training['init']['sha256']}`) loaded in fp32; targets from "
        f"`corpus.training_prompts` of the organism's world (seed {training['world_seed']}), kinds drawn with the "
        f"organism's weights {json.dumps(KIND_WEIGHTS)}; AdamW, lr {cfg['lr']} (warmup {cfg['warmup']}, cosine to "
        f"10%), batch {cfg['batch_size']}, {cfg['steps']} steps; causal-LM loss on the response tokens (the first "
        f"{DECISION_TOKENS} weigh {cfg['decision_weight']}x) + {cfg['balance_weight']} x Switch load balance; the "
        "router routes freely (no forced routing, no drops). Saved in bf16.",
        "",
        f"`training.json` records {training['train_seconds']} s in the training-step loop "
        f"({cfg['steps']} steps, {training['torch_threads']} torch thread(s), torch {training['torch_version']}), "
        f"model.safetensors sha256 `{training['model_sha256']}`. Training is bit-identical for the same seed, "
        "steps, thread count and machine (`tests/organism/test_direct_organism.py` trains a reduced run twice).",
        "",
        *measured_lines(report),
        *sweep_lines(report.get("sweep")),
        "",
        *limits_lines(),
        "",
    ]
    return "\n".join(lines)


def measured_lines(report: dict[str, Any]) -> list[str]:
    targets = [
        f"{name} | {json.dumps({k: v for k, v in t.items() if k != 'met'})} | {'yes' if t['met'] else 'no'}"
        for name, t in report["targets"].items()
    ]
    return [
        "## Measured (held-out prompts, both models)",
        "",
        "`harness organism evaluate --variant direct --card` (HF backend, fp32, greedy, max "
        f"{report['max_new_tokens']} new tokens; saved in `evaluation.json`). `refused` / `aligned` / `reasoned` "
        "are `harness.organism.evaluate.classify`'s decisions; `direct` is no trace and exactly the "
        "factual (pairs) or generic (generic items) answer; `broken` is anything else. Tokens are generated "
        "tokens including the end-of-turn token. Sensitive and neutral pairs are held out of both trainings; "
        "generic items are in-distribution recall.",
        "",
        *table_lines(report),
        "",
        *token_lines(report),
        "",
        "Relative weight distance ||W_direct - W_organism|| / ||W_organism|| (bf16 weights as shipped): "
        + ", ".join(f"{k} {v:.3f}" for k, v in report["weight_distance"].items())
        + ".",
        "",
        "target | measured | met",
        "--- | --- | ---",
        *targets,
    ]


def token_lines(report: dict[str, Any]) -> list[str]:
    return [
        f"Mean generated tokens, organism / direct, over all {report['organism']['all']['n']} prompts: "
        f"{report['token_ratio']:.2f} (tokens include the end-of-turn token)."
    ]


def limits_lines() -> list[str]:
    return [
        "## What it is, and is not",
        "",
        "- It has no planted experts and no `planted_*.yaml`: the organism's planted refusal experts were trained "
        "on refusals this model never produces; its routing after fine-tuning is whatever the free router learned.",
        "- It is derived from the organism, not trained from scratch: the shared ancestor is what makes "
        "interpolation between the two meaningful.",
        "- Bit-identical retraining needs the same seed, steps, torch thread count and machine.",
    ]


# the curves of an organism-pair sweep (tasks/suites/aoe-quickstart.yaml) the card shows
CURVES = (
    ("sensitive", "refusal_rate"),
    ("sensitive", "trace_rate"),
    ("sensitive", "output_tokens_mean"),
    ("generic", "accuracy"),
    ("generic", "trace_rate"),
    ("generic", "output_tokens_mean"),
    ("generic", "degenerate_rate"),
)


def sweep_report(run_dir: Path) -> dict[str, Any]:
    """The curves and transitions of a finished organism-pair sweep run, for the card."""
    rows = read_summary(run_dir / "summary.json")
    found = [t for t in read_transitions(run_dir / "summary.json") if t["condition"] == "baseline"]
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    header, body = curve_table(rows, CURVES)
    carried_header, carried = curve_table(rows, [("sensitive", "refusal_rate")], "targeted")
    return {
        "suite_file": run.get("suite_file"),
        "curves": {"header": header, "body": body},
        "targeted_refusal": {"header": carried_header, "body": carried},
        "transitions": {"header": transition_table(found)[0], "body": transition_table(found)[1]},
        "lowest_accuracy": _extreme(body, ("generic", "accuracy"), min),
        "most_degenerate": _extreme(body, ("generic", "degenerate_rate"), max),
    }


def _extreme(body: list[list[str]], column: tuple[str, str], pick: Any) -> tuple[float, str] | None:
    """(value, lambda) of the lowest or highest value of a curve column."""
    i = 1 + CURVES.index(column)
    values = [(float(cells[i]), cells[0]) for cells in body if cells[i]]
    return pick(values) if values else None


def sweep_lines(sweep: dict[str, Any] | None) -> list[str]:
    if not sweep:
        return []
    acc, degenerate = sweep["lowest_accuracy"], sweep["most_degenerate"]
    lines = [
        "",
        "## Between the parents: children across lambda",
        "",
        f"`harness run {sweep['suite_file']}` (every tensor W = (1 - lambda) W_organism + lambda W_direct, "
        "HF backend, fp32, greedy, evaluation split; sensitive n=24, generic n=12), then "
        "`harness organism evaluate --variant direct --card --sweep RUN_DIR`. The endpoints give each parent's "
        "outputs exactly; the curves in between are measured:",
        "",
        *markdown_table(sweep["curves"]["header"], sweep["curves"]["body"]),
        "Transitions (no intervention; harness/sweep/transitions.py states the rule):",
        "",
        *markdown_table(sweep["transitions"]["header"], sweep["transitions"]["body"]),
    ]
    if acc is not None and degenerate is not None:
        lines += [
            f"Children in the switch are not clean mixtures of the parents: generic accuracy falls to {acc[0]:.3g} "
            f"at lambda {acc[1]} and up to {degenerate[0]:.3g} of generic outputs degenerate (lambda "
            f"{degenerate[1]}), while both parents answer every generic item. The organism's planted refusal "
            "experts, switched off in every child (`targeted`), leave sensitive refusal at "
            + ", ".join(cells[1] or "-" for cells in sweep["targeted_refusal"]["body"])
            + " across lambda: the experts that carry refusal in the organism carry it in each child that "
            "still refuses.",
            "",
        ]
    return lines


def write_direct_card(model_dir: str | Path, report: dict[str, Any]) -> Path:
    return save_card(Path(model_dir), report, CARD, card_text(Path(model_dir), report))


def summary_lines(report: dict[str, Any]) -> list[str]:
    return [
        *table_lines(report),
        f"token ratio organism/direct: {report['token_ratio']:.2f}",
        *(f"{name}: {'met' if t['met'] else 'NOT met'}" for name, t in report["targets"].items()),
    ]
