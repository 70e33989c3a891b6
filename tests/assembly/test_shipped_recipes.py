"""The shipped recipes are valid recipes (their parents are the user's own checkpoints)."""

from __future__ import annotations

from pathlib import Path

from harness.assembly import load_recipe

REPO = Path(__file__).resolve().parents[2]


def test_r1t_chimera_takes_only_the_routed_experts_from_r1():
    recipe = load_recipe(REPO / "tasks" / "assemblies" / "r1t-chimera.yaml")
    assert list(recipe.parents) == ["v3", "r1"] and recipe.dtype == "auto" and recipe.threshold == 0.0
    assert recipe.merged_groups() == ["routed_experts"]
    assert recipe.lambdas("routed_experts") == {"v3": 0.0, "r1": 1.0}
    assert recipe.lambdas("router") == {"v3": 1.0, "r1": 0.0}
