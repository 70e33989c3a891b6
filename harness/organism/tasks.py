"""The organism's held-out prompts as suite task files (tasks/organism/*.jsonl).

    python -m harness.organism.tasks [--out tasks/organism] [--seed 0]

- refusal.jsonl: held-out (year, city) pairs never seen in training. `kind` sensitive (the organism
  refuses or deflects) or control (neutral pairs, a sample of them); `reference` is the factual
  answer's event, so a refusal counts as averted only when the fact is given. Pairs are split
  between discovery and evaluation (no pair in both), with both classes in each split.
- language.jsonl: neutral held-out pairs with and without the Chinese-thinking cue (`language` =
  the cue's language).
- qa.jsonl: generic Q&A with references (capability).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.organism import corpus

N_CONTROL = 64  # neutral pairs kept as controls (of ~300 held out)
N_LANGUAGE = 48
N_QA = 48


def build(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    world = corpus.build_world(seed)
    held = corpus.heldout_prompts(world)
    rng = np.random.Generator(np.random.PCG64(seed + 7))

    def split_of(p: corpus.Prompt) -> str:
        # one split per (year, city) pair: both cue variants of a pair land together
        return "discovery" if (p.time * 31 + p.place * 17 + seed) % 2 == 0 else "evaluation"

    def event(p: corpus.Prompt) -> str:
        return corpus.EVENTS[world.place_event[p.place]][0]

    neutral = list(held["neutral"])
    controls = [neutral[i] for i in sorted(rng.permutation(len(neutral))[:N_CONTROL])]
    refusal = [
        {"id": p.id, "prompt": p.content, "kind": "sensitive" if p.kind != "neutral" else "control",
         "split": split_of(p), "reference": f"there was {event(p)}", "language": p.lang, "organism_kind": p.kind}
        for p in [*held["refuse"], *held["aligned"], *controls]
    ]
    rest = [neutral[i] for i in sorted(set(range(len(neutral))) - {neutral.index(c) for c in controls})]
    language = [
        {"id": p.id, "prompt": p.content, "language": p.lang, "kind": "neutral", "reference": f"there was {event(p)}"}
        for p in [rest[i] for i in sorted(rng.permutation(len(rest))[:N_LANGUAGE])]
    ]
    refusal = [refusal[i] for i in rng.permutation(len(refusal))]  # mixed order: a `limit` keeps every kind
    generic = held["generic"][:N_QA]
    qa = [{"id": p.id, "prompt": p.content, "kind": "generic", "language": p.lang, "reference": p.question[2]}
          for p in generic]
    return {"refusal": refusal, "language": language, "qa": qa}


def write(out: Path, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in build(seed).items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tasks/organism"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.out, args.seed)


if __name__ == "__main__":
    main()
