"""Assembly of Experts (arXiv 2506.14794): a child of MoE parents of one architecture, each weight tensor
interpolated on its own with lambdas chosen per group of tensors, streamed from the parents' safetensors.

recipe (what to build) -> groups (where each stored tensor belongs) -> plan (checked against every
parent's headers before anything is written) -> build (one tensor at a time, in row chunks, into a
temporary folder renamed at the end). Backends see the child as any model folder.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.assembly.build import AssemblyResult, assemble
    from harness.assembly.groups import GROUPS, group_of
    from harness.assembly.recipe import Recipe, load_recipe

__all__ = ["GROUPS", "AssemblyResult", "Recipe", "assemble", "group_of", "load_recipe"]
_HOMES = {
    "AssemblyResult": "build",
    "assemble": "build",
    "GROUPS": "groups",
    "group_of": "groups",
    "Recipe": "recipe",
    "load_recipe": "recipe",
}


def __getattr__(name: str) -> Any:
    """The package's names, imported when first used: the vLLM plugin imports the loader module in every
    vLLM process and every `harness` command, and the build would bring torch with it."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"harness.assembly.{_HOMES[name]}"), name)
