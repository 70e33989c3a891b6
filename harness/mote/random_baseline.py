"""Matched random baselines: the control that gives a targeted effect its meaning.

A random set is matched to the targeted one in count and in per-layer histogram (the same layers,
the same number of experts in each), never contains a targeted expert, can exclude more (e.g.
always-on experts), and is a pure function of the seed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from harness.mote.experts import ExpertSet
from harness.mote.intervention import Intervention


def random_like(
    targeted: ExpertSet,
    seed: int,
    n_experts: int | Mapping[int, int],
    exclude: ExpertSet | None = None,
) -> ExpertSet:
    """Draw len(targeted) experts with targeted's per-layer histogram, deterministically per seed.

    `n_experts` is the routed-expert count per MoE layer (one int for all layers, or per layer).
    Raises ValueError when a layer has too few eligible experts.
    """
    excluded = targeted.union(exclude or ExpertSet())
    rng = np.random.Generator(np.random.PCG64(seed))
    pairs: list[tuple[int, int]] = []
    for layer, count in sorted(targeted.histogram().items()):
        total = n_experts if isinstance(n_experts, int) else n_experts[layer]
        blocked = set(excluded.in_layer(layer))
        eligible = np.array([e for e in range(total) if e not in blocked], dtype=np.int64)
        if len(eligible) < count:
            raise ValueError(
                f"layer {layer}: {count} random experts needed, only {len(eligible)} of {total} are eligible"
            )
        chosen = rng.choice(eligible, size=count, replace=False)
        pairs.extend((layer, int(e)) for e in chosen)
    return ExpertSet(tuple(pairs))


def random_intervention_like(
    targeted: Intervention,
    seed: int,
    n_experts: int | Mapping[int, int],
    exclude: ExpertSet | None = None,
) -> Intervention:
    """The same kind and mode as `targeted`, on a matched random expert set."""
    if targeted.is_none:
        raise ValueError("a random baseline needs a targeted intervention with experts")
    experts = random_like(targeted.experts, seed, n_experts, exclude)
    return Intervention(
        kind=targeted.kind,
        mode=targeted.mode,
        experts=experts,
        name=f"random-{seed}",
        seed=seed,
        provenance={"random_like": targeted.fingerprint(), "seed": seed},
    )
