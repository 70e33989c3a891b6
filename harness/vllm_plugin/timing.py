"""Where a MoTE step's time goes, measured inside the worker when `MOTE_VLLM_TIMING=1`.

Wall-clock ratios on a small shared machine swing more than the plugin costs (docs/vllm.md,
Benchmark), so the benchmark also reads what the plugin itself spent: per step, `begin_step` (the
request scan, tables, buckets), `end_step` (records kept) and the time inside the route hooks (edits,
counts, captures), next to the model forward they sit in. Off by default: then nothing is timed.
What it cannot see: the dispatch of the route hook op itself, about 2-3 us per MoE layer per step
(docs/vllm.md), and the RPCs that fetch records (the client times those).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

TIMING_ENV = "MOTE_VLLM_TIMING"


def timing_on() -> bool:
    return os.environ.get(TIMING_ENV, "").strip().lower() in ("1", "on", "true", "yes")


@dataclass
class StepTiming:
    steps: int = 0
    hooked_steps: int = 0  # steps that opened a step context
    forward_s: float = 0.0  # the model forward, route hooks included
    begin_s: float = 0.0
    end_s: float = 0.0
    hooks_s: float = 0.0  # inside the route hooks
    hook_calls: int = 0

    def as_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}
