"""fTRI on synthetic counts with planted experts."""

from __future__ import annotations

import numpy as np
import pytest

from harness.analysis import ftri
from harness.mote import ExpertSet

LAYERS = (2, 3, 5)
N_EXPERTS = 32
PLANTED = {(3, 7), (5, 11), (2, 30)}
ALWAYS_ON = (2, 0)


def _synthetic(seed: int = 0, n_per_class: int = 30, tokens: int = 40):
    """Each token routes to 2 experts per layer; 'refused' prompts route 60% of tokens to the
    planted experts, both classes route every token to the always-on expert of layer 2."""
    rng = np.random.default_rng(seed)
    prompts = []
    for label in ("refused", "answered"):
        for _ in range(n_per_class):
            counts = np.zeros((len(LAYERS), N_EXPERTS), dtype=np.int64)
            for li, layer in enumerate(LAYERS):
                for _ in range(tokens):
                    planted = [e for (lay, e) in PLANTED if lay == layer]
                    if label == "refused" and planted and rng.random() < 0.6:
                        first = planted[0]
                    else:
                        first = int(rng.integers(1, N_EXPERTS))
                        while (layer, first) in PLANTED:
                            first = int(rng.integers(1, N_EXPERTS))
                    second = 0 if layer == ALWAYS_ON[0] else int(rng.integers(1, N_EXPERTS))
                    if second == first or (layer, second) in PLANTED:
                        second = (first + 1) % N_EXPERTS or 1
                    counts[li, first] += 1
                    counts[li, second] += 1
            prompts.append(ftri.PromptCounts(counts, tokens, label))
    return prompts


@pytest.mark.parametrize("score", ftri.SCORES)
def test_every_score_recovers_the_planted_experts_exactly(score):
    result = ftri.rank(_synthetic(), LAYERS, "refused", "answered", score=score)
    assert set(result.top(3)) == PLANTED
    assert result.ranking[0].score >= result.ranking[1].score >= result.ranking[2].score


def test_always_on_experts_are_excluded_and_reported():
    result = ftri.rank(_synthetic(), LAYERS, "refused", "answered")
    assert ALWAYS_ON in result.excluded
    assert ALWAYS_ON not in {(r.layer, r.expert) for r in result.ranking}


def test_given_exclusions_are_never_ranked():
    result = ftri.rank(_synthetic(), LAYERS, "refused", "answered", exclude=ExpertSet(((3, 7),)))
    assert (3, 7) not in set(result.top(3))


def test_ties_are_broken_by_layer_then_expert():
    counts = np.zeros((2, 4), dtype=np.int64)
    prompts = [ftri.PromptCounts(counts, 1, "a"), ftri.PromptCounts(counts, 1, "b")]
    result = ftri.rank(prompts, (4, 9), "a", "b", always_on_threshold=None)
    assert [(r.layer, r.expert) for r in result.ranking[:5]] == [(4, 0), (4, 1), (4, 2), (4, 3), (9, 0)]


def test_bootstrap_stability_is_high_for_a_clear_signal_and_reproducible():
    prompts = _synthetic()
    first = ftri.bootstrap_stability(prompts, LAYERS, "refused", "answered", k=3, n_resamples=30, seed=1)
    assert first == ftri.bootstrap_stability(prompts, LAYERS, "refused", "answered", k=3, n_resamples=30, seed=1)
    assert first["jaccard_mean"] == pytest.approx(1.0)


def test_intervention_from_ranking_is_a_suppression_of_the_top_k_with_provenance():
    result = ftri.rank(_synthetic(), LAYERS, "refused", "answered")
    iv = result.intervention(3, mode="mask")
    assert (iv.kind, iv.mode) == ("suppress", "mask")
    assert set(iv.experts) == PLANTED
    assert iv.provenance["score"] == "mean_diff" and iv.provenance["k"] == 3


def test_a_class_without_prompts_is_an_error():
    with pytest.raises(ValueError, match="no prompt"):
        ftri.rank(_synthetic(), LAYERS, "refused", "missing")
