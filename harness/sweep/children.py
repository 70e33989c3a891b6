"""The models of a sweep: a recipe's children across lambda (and its two parents as they are), or a
list of model folders. Every child is checked (recipe, parents, lambdas) before any model loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from harness.common.errors import InputError
from harness.suite.schema import AssemblySweepSpec, Suite, SweepModelSpec

if TYPE_CHECKING:
    from harness.assembly.recipe import Recipe

Kind = Literal["child", "parent", "model"]
SEPARATOR = "|"  # between a model's name and a condition's in a sweep's condition names


@dataclass(frozen=True)
class SweepModel:
    """One model of a sweep; `name` names its baseline condition (`lambda=0.3`, `parent=v3`, a folder)."""

    name: str
    lam: float | None
    kind: Kind
    folder: Path | None = None  # a stored model folder (parent, model)
    recipe: Path | None = None  # a child: assembled at load from this recipe ...
    overrides: tuple[str, ...] = ()  # ... with these lambdas (`harness assemble --set`)

    def condition(self, name: str) -> str:
        """The sweep condition of one of the suite's conditions on this model."""
        return self.name if name == "baseline" else f"{self.name}{SEPARATOR}{name}"


def child_name(lam: float) -> str:
    return f"lambda={lam:g}"


def sweep_models(suite: Suite, suite_path: Path) -> list[SweepModel]:
    """The sweep's models in evaluation order, each checked; InputError names the suite's field."""
    if suite.assembly is not None:
        return _assembly_models(suite.assembly, suite_path)
    assert suite.models is not None
    return [_listed_model(entry, i, suite_path) for i, entry in enumerate(suite.models)]


def _assembly_models(spec: AssemblySweepSpec, suite_path: Path) -> list[SweepModel]:
    from harness.assembly.groups import ALL, GROUPS

    recipe = _sweep_recipe(spec, suite_path)
    others = list(recipe.parents)[1:]
    if spec.parent not in others:
        raise InputError(
            suite_path, "assembly.parent", f"a non-base parent of {spec.recipe.name}: one of {others}", spec.parent
        )
    unknown = [g for g in spec.groups if g != ALL and g not in GROUPS]
    if unknown:
        raise InputError(suite_path, "assembly.groups", f"groups among {[*GROUPS, ALL]}", unknown)
    children = [
        SweepModel(child_name(lam), lam, "child", recipe=spec.recipe, overrides=tuple(spec.overrides(lam)))
        for lam in spec.lambdas
    ]
    for child in children:
        _check_child(child, suite_path)
    if not spec.parents:
        return children
    base, other = recipe.base, spec.parent
    return [
        SweepModel(f"parent={base}", None, "parent", folder=Path(recipe.parents[base])),
        *children,
        SweepModel(f"parent={other}", None, "parent", folder=Path(recipe.parents[other])),
    ]


def _sweep_recipe(spec: AssemblySweepSpec, suite_path: Path) -> Recipe:
    """The sweep's recipe; one that cannot be read or checked is the suite's error, with the recipe's own."""
    from harness.assembly.recipe import load_recipe

    try:
        return load_recipe(spec.recipe)
    except InputError as err:
        raise InputError(suite_path, "assembly.recipe", f"a recipe that can be read and checked; {err}") from None


def _check_child(child: SweepModel, suite_path: Path) -> None:
    """The child's recipe with its lambdas, against its parents' configs and tensors (headers only)."""
    from harness.assembly.in_memory import plan_from

    assert child.recipe is not None
    try:
        plan_from(child.recipe, child.overrides)
    except InputError as err:
        raise InputError(
            suite_path, "assembly", f"children that can be assembled; {child.name} cannot: {err}"
        ) from None


def _listed_model(entry: str | SweepModelSpec, index: int, suite_path: Path) -> SweepModel:
    from harness.models.resolve import named_model

    spec = entry if isinstance(entry, SweepModelSpec) else SweepModelSpec(path=entry)
    folder = named_model(spec.path) or Path(spec.path)
    if not folder.is_absolute() and named_model(spec.path) is None:
        candidate = (suite_path.parent / folder).resolve()
        folder = candidate if candidate.exists() else folder
    if not (folder / "config.json").is_file():
        raise InputError(suite_path, f"models.{index}", "a local model folder with config.json", spec.path)
    return SweepModel(spec.name or Path(spec.path).name, spec.lambda_, "model", folder=folder)


def model_folder(model: SweepModel) -> Path:
    """The folder a backend loads: a stored model's, or a child's weightless folder (assembled at load)."""
    if model.folder is not None:
        return model.folder
    from harness.assembly.in_memory import cached_child_folder, plan_from

    assert model.recipe is not None
    return cached_child_folder(plan_from(model.recipe, model.overrides))


def endpoint_parents(spec: AssemblySweepSpec) -> dict[str, str]:
    """Endpoint child -> the parent it must reproduce exactly: lambda 0 is the base wherever the sweep's
    lambdas are 0; lambda 1 is the other parent only when the recipe then takes every group from it."""
    from harness.assembly.groups import GROUPS
    from harness.assembly.recipe import load_recipe

    at_zero = load_recipe(spec.recipe, spec.overrides(0.0))
    out: dict[str, str] = {}
    if 0.0 in spec.lambdas and all(at_zero.lambdas(g)[at_zero.base] == 1.0 for g in GROUPS):
        out[child_name(0.0)] = f"parent={at_zero.base}"
    at_one = load_recipe(spec.recipe, spec.overrides(1.0))
    if 1.0 in spec.lambdas and all(at_one.lambdas(g)[spec.parent] == 1.0 for g in GROUPS):
        out[child_name(1.0)] = f"parent={spec.parent}"
    return out
