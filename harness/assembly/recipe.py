"""The recipe: which parents, and per group of tensors each non-base parent's lambda (a contract: users
and outside checks write it).

    parents: {v3: /models/DeepSeek-V3-0324, r1: /models/DeepSeek-R1}   # the first is the base
    groups: {routed_experts: {r1: 1.0}}   # unlisted groups keep the base; `all` names every group
    threshold: 0.0                         # merge a tensor only where the normalised distance exceeds it
    dtype: auto                            # auto | bfloat16 | float32

A parent path is absolute, relative to the recipe's folder, `organism` (the shipped checkpoint) or
`organism-direct` (its shipped sibling).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.assembly.groups import ALL, GROUPS
from harness.common.errors import InputError

Dtype = Literal["auto", "bfloat16", "float32"]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    parents: dict[str, str] = Field(min_length=2)
    groups: dict[str, dict[str, float]] = Field(default_factory=dict)
    threshold: float = Field(default=0.0, ge=0.0)
    dtype: Dtype = "auto"

    @field_validator("groups")
    @classmethod
    def _known_groups(cls, groups: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for group in groups:
            if group != ALL and group not in GROUPS:
                raise ValueError(f"group {group!r} is not one of {[*GROUPS, ALL]}")
        return groups

    @model_validator(mode="after")
    def _lambdas(self) -> Recipe:
        others = list(self.parents)[1:]
        for group, lambdas in self.groups.items():
            for parent, value in lambdas.items():
                if parent == self.base:
                    raise ValueError(
                        f"groups.{group}: {parent!r} is the base (the first parent): its lambda is 1 minus the "
                        "others', name only the other parents"
                    )
                if parent not in others:
                    raise ValueError(f"groups.{group}: parent {parent!r} is not one of {others}")
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"groups.{group}.{parent}: a lambda in [0, 1] (got {value})")
            if sum(lambdas.values()) > 1.0 + 1e-9:
                raise ValueError(f"groups.{group}: lambdas summing to at most 1 (got {sum(lambdas.values())})")
        return self

    @property
    def base(self) -> str:
        return next(iter(self.parents))

    def lambdas(self, group: str) -> dict[str, float]:
        """Every parent's lambda on one group (the base's is 1 minus the others'); a group named
        explicitly wins over `all`."""
        given = self.groups.get(group, self.groups.get(ALL, {}))
        others = {p: float(given.get(p, 0.0)) for p in list(self.parents)[1:]}
        return {self.base: max(0.0, 1.0 - sum(others.values())), **others}

    def merged_groups(self) -> list[str]:
        return [g for g in GROUPS if any(v > 0 for p, v in self.lambdas(g).items() if p != self.base)]

    def fingerprint(self) -> str:
        data = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()[:16]


def parse_override(text: str) -> tuple[str, str, float]:
    """`GROUP.PARENT=LAMBDA` from --set."""
    key, sep, value = text.partition("=")
    group, dot, parent = key.partition(".")
    if not (sep and dot and group and parent):
        raise InputError("--set", "--set", "GROUP.PARENT=LAMBDA, e.g. routed_experts.r1=0.5", text)
    try:
        return group, parent, float(value)
    except ValueError as err:
        raise InputError("--set", f"--set {key}", "a number in [0, 1]", value) from err


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read and check a recipe; parent paths come back absolute. Errors name the file and the field."""
    from harness.models.resolve import named_model

    path = Path(path)
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(path, "<file>", "a readable recipe YAML", str(err)) from err
    except yaml.YAMLError as err:
        raise InputError(path, "<file>", "valid YAML", str(err)) from err
    if not isinstance(data, dict):
        raise InputError(path, "<top level>", "a mapping with parents, groups, threshold, dtype", data)
    groups = (
        {g: dict(v or {}) for g, v in (data.get("groups") or {}).items()}
        if isinstance(data.get("groups"), dict)
        else data.get("groups")
    )
    for text in overrides:
        group, parent, value = parse_override(text)
        if not isinstance(groups, dict):
            groups = {}
        groups.setdefault(group, {})[parent] = value
    if groups is not None:
        data = {**data, "groups": groups}
    parents = data.get("parents")
    if isinstance(parents, dict):
        data = {
            **data,
            "parents": {
                str(name): str(named_model(str(folder)) or (path.parent / str(folder)).resolve())
                for name, folder in parents.items()
            },
        }
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        field = ".".join(str(p) for p in first["loc"])
        if not field and message.startswith("groups."):  # the lambda checks name their field first
            field, _, message = message.partition(": ")
        raise InputError(path, field or "<top level>", message) from err
