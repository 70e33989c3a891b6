from __future__ import annotations

import pytest

from harness.mote import ExpertSet, Intervention, random_intervention_like, random_like

TARGETED = ExpertSet(((3, 5), (3, 17), (7, 2), (9, 0), (9, 1), (9, 2)))


def test_random_set_matches_count_and_per_layer_histogram():
    for seed in range(20):
        drawn = random_like(TARGETED, seed, n_experts=64)
        assert len(drawn) == len(TARGETED)
        assert drawn.histogram() == TARGETED.histogram()


def test_random_set_never_contains_targeted_or_excluded_experts():
    exclude = ExpertSet(tuple((3, e) for e in range(0, 60)))
    for seed in range(50):
        drawn = random_like(TARGETED, seed, n_experts=64, exclude=exclude)
        assert not set(drawn) & set(TARGETED)
        assert not set(drawn) & set(exclude)
        assert set(drawn.in_layer(3)) <= {60, 61, 62, 63}


def test_random_set_is_deterministic_per_seed_and_varies_across_seeds():
    assert random_like(TARGETED, 7, 64) == random_like(TARGETED, 7, 64)
    assert len({random_like(TARGETED, s, 64) for s in range(10)}) > 1


def test_too_few_eligible_experts_is_an_error():
    with pytest.raises(ValueError, match="layer 9"):
        random_like(TARGETED, 0, n_experts={3: 64, 7: 64, 9: 4})


def test_random_intervention_keeps_kind_mode_and_records_provenance():
    targeted = Intervention.suppress(TARGETED.to_mapping(), mode="mask")
    rnd = random_intervention_like(targeted, 3, 64)
    assert (rnd.kind, rnd.mode, rnd.seed) == ("suppress", "mask", 3)
    assert rnd.provenance["random_like"] == targeted.fingerprint()
