"""fTRI throughput at DeepSeek-R1 shape (58 MoE layers x 256 experts, top-8), on one core.

Measures token-layer routing events per second for (a) aggregating per-token top-k ids into count
maps and (b) ranking from per-prompt count maps. Goal: >= 10M token-layer events/s.
Writes results/bench/ftri.json.

    python bench/ftri_bench.py [--prompts 400] [--tokens 256] [--bootstrap 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from harness.analysis import ftri
from harness.mote.records import count_map

LAYERS, EXPERTS, TOP_K = 58, 256, 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples for the stability timing")
    parser.add_argument("--out", type=Path, default=Path("results/bench/ftri.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ids = [rng.integers(0, EXPERTS, (args.tokens, LAYERS, TOP_K), dtype=np.int32) for _ in range(args.prompts)]
    events = args.prompts * args.tokens * LAYERS

    start = time.perf_counter()
    maps = [count_map(x, EXPERTS) for x in ids]
    aggregate_s = time.perf_counter() - start

    prompts = [ftri.PromptCounts(m, args.tokens, "a" if i % 2 else "b") for i, m in enumerate(maps)]
    layers = list(range(3, 3 + LAYERS))
    timings = {}
    for score in ftri.SCORES:
        start = time.perf_counter()
        ftri.rank(prompts, layers, "a", "b", score=score)
        timings[score] = time.perf_counter() - start

    start = time.perf_counter()
    stability = ftri.bootstrap_stability(prompts, layers, "a", "b", k=10, n_resamples=args.bootstrap)
    bootstrap_s = time.perf_counter() - start

    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "shape": {"moe_layers": LAYERS, "experts": EXPERTS, "top_k": TOP_K},
        "prompts": args.prompts,
        "tokens_per_prompt": args.tokens,
        "token_layer_events": events,
        "aggregate_events_per_s": events / aggregate_s,
        "rank_events_per_s": {k: events / v for k, v in timings.items()},
        "goal_events_per_s": 10_000_000,
        # the stability figure re-ranks every resample (mean_diff, top 10)
        "bootstrap": {"resamples": args.bootstrap, "seconds": bootstrap_s, "jaccard_mean": stability["jaccard_mean"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
