"""How far two recordings of the same prompt agree on routing, counted only where they can agree.

Two generations of one prompt feed the model the same tokens up to the first generated token where
they differ; from there on every row routes a different input, so comparing it measures the sampled
text, not the routing. Engines that are not reproducible run to run (vLLM-CPU in bf16, some fp32
families with shared experts) flip an occasional greedy token, and a whole-generation comparison then
falls by however much of the generation is left. These functions compare the rows fed alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.mote.records import RoutingRecord


def rows_fed_alike(n_prompt_tokens: int, generated_a: Sequence[int], generated_b: Sequence[int]) -> int:
    """Routed rows that saw the same input in both runs: the prompt, then each generated token fed back
    while the two generations still match (row n_prompt + i is generated token i fed back)."""
    same = 0
    for x, y in zip(generated_a, generated_b, strict=False):
        if x != y:
            break
        same += 1
    return n_prompt_tokens + same


def topk_disagreements(a: RoutingRecord, b: RoutingRecord, rows: int) -> tuple[int, int]:
    """(token x layer pairs whose top-k sets differ, pairs compared) over the first `rows` rows."""
    if list(a.layers) != list(b.layers):
        raise ValueError(f"records cover different MoE layers: {list(a.layers)} and {list(b.layers)}")
    n = min(rows, a.n_tokens, b.n_tokens)
    same = (np.sort(a.topk_ids[:n], -1) == np.sort(b.topk_ids[:n], -1)).all(-1)
    return int((~same).sum()), int(same.size)
