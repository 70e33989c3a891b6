"""What to do to the router: nothing, suppress experts (drop or mask), or stimulate them.

The intervention file (YAML or JSON) is the one users write and `harness ftri` emits:

    kind: suppress        # none | suppress | stimulate
    mode: drop            # drop | mask (suppress only; default drop, the MoTE paper's method)
    experts: {3: [5, 17], 7: [2]}   # absolute layer index -> expert ids

Optional keys: `name` (a label for tables), `seed` (for random baselines), `provenance` (free-form
mapping, e.g. which fTRI run or targeted set it came from). None of them enters the fingerprint,
which depends only on what changes the model's routing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from harness.common.errors import InputError
from harness.mote.experts import ExpertSet

Kind = Literal["none", "suppress", "stimulate"]
Mode = Literal["drop", "mask"]


class Intervention(BaseModel):
    """One routing intervention.

    - `suppress` / `drop` (MoTE): the expert is still selected by top-k, then its weight is zeroed and
      the remaining selected weights are rescaled to the token's original weight sum; the slot stays
      empty, so the token uses k-1 routed experts.
    - `suppress` / `mask` (SteerMoE): the expert is excluded before top-k; the next-best expert takes
      the slot, so the token still uses k experts.
    - `stimulate`: the expert is forced into the top-k of every token, replacing the weakest
      selected expert. The forced expert gets the weight the model's own weighting code gives its
      *own* router score (softmax share, sigmoid score, renormalised and scaled as the family does).
      We edit only what the router selects, never the weights it computes: a made-up weight (the
      displaced expert's, or 1/k) would be a new hyper-parameter that no model was trained with and
      that each backend would have to re-implement, whereas the router's own score is what the
      model itself would have used had it picked the expert, in HF and vLLM alike.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    kind: Kind = "none"
    mode: Mode | None = None
    experts: ExpertSet = Field(default_factory=ExpertSet, validate_default=True)
    name: str | None = None
    seed: int | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("experts", mode="before")
    @classmethod
    def _coerce_experts(cls, value: object) -> ExpertSet:
        if isinstance(value, ExpertSet):
            return value
        if value is None:
            return ExpertSet()
        if not isinstance(value, Mapping):
            raise ValueError("a mapping {layer: [expert ids]}")
        pairs: list[tuple[int, int]] = []
        for layer, ids in value.items():
            layer_id = _as_int(layer, "layer index")
            if isinstance(ids, int):
                ids = [ids]
            if not isinstance(ids, list | tuple) or not ids:
                raise ValueError(f"layer {layer}: a non-empty list of expert ids")
            pairs.extend((layer_id, _as_int(e, f"expert id in layer {layer}")) for e in ids)
        return ExpertSet(tuple(pairs))

    @model_validator(mode="before")
    @classmethod
    def _default_mode(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("kind") == "suppress" and data.get("mode") is None:
            return {**data, "mode": "drop"}
        return data

    @field_validator("mode")
    @classmethod
    def _mode_fits_kind(cls, mode: Mode | None, info: ValidationInfo) -> Mode | None:
        kind = info.data.get("kind")
        if mode is not None and kind != "suppress":
            raise ValueError(f"no mode for kind '{kind}' (mode applies to kind 'suppress' only)")
        return mode

    @field_validator("experts", mode="after")
    @classmethod
    def _experts_fit_kind(cls, experts: ExpertSet, info: ValidationInfo) -> ExpertSet:
        kind = info.data.get("kind")
        if kind == "none" and experts:
            raise ValueError("no experts for kind 'none'")
        if kind in ("suppress", "stimulate") and not experts:
            raise ValueError(f"at least one expert for kind '{kind}'")
        return experts

    @classmethod
    def none(cls) -> Intervention:
        return cls()

    @classmethod
    def suppress(cls, experts: ExpertSet | Mapping[int, list[int]], mode: Mode = "drop") -> Intervention:
        return cls(kind="suppress", mode=mode, experts=_to_set(experts))

    @classmethod
    def stimulate(cls, experts: ExpertSet | Mapping[int, list[int]]) -> Intervention:
        return cls(kind="stimulate", experts=_to_set(experts))

    @property
    def is_none(self) -> bool:
        return self.kind == "none"

    def routing_dict(self) -> dict[str, Any]:
        """The part that changes routing, in canonical form."""
        return {
            "kind": self.kind,
            "mode": self.mode,
            "experts": {str(k): v for k, v in self.experts.to_mapping().items()},
        }

    def fingerprint(self) -> str:
        """Stable id of the routing change, used in every record and cache key.

        `none`, or `<kind>[-<mode>]-<12 hex of sha256(canonical JSON)>`; name, seed and provenance
        are labels and do not enter it.
        """
        if self.is_none:
            return "none"
        canonical = json.dumps(self.routing_dict(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
        prefix = self.kind if self.mode is None else f"{self.kind}-{self.mode}"
        return f"{prefix}-{digest}"

    def to_file_dict(self) -> dict[str, Any]:
        """The intervention file's content (YAML/JSON), layers as integer keys."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.mode is not None:
            out["mode"] = self.mode
        out["experts"] = self.experts.to_mapping()
        if self.name is not None:
            out["name"] = self.name
        if self.seed is not None:
            out["seed"] = self.seed
        if self.provenance:
            out["provenance"] = self.provenance
        return out

    def to_json(self) -> str:
        """Compact JSON (string layer keys), e.g. for vLLM's `extra_args` / `vllm_xargs`."""
        data = self.to_file_dict()
        data["experts"] = {str(k): v for k, v in data["experts"].items()}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_data(cls, data: object, source: str | Path = "<intervention>") -> Intervention:
        """Validate parsed YAML/JSON; errors name the source, the field and what was expected."""
        if not isinstance(data, Mapping):
            raise InputError(source, "<top level>", "a mapping with keys kind, mode, experts", data)
        try:
            return cls.model_validate(dict(data))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "<top level>"
            expected = _expected_text(first)
            got = first.get("input") if first["type"] != "missing" else None
            raise InputError(source, field, expected, got) from None


def _expected_text(error: Mapping[str, Any]) -> str:
    msg = str(error.get("msg", "a valid value"))
    if error["type"] == "literal_error":
        ctx = error.get("ctx", {})
        return f"one of {ctx.get('expected', msg)}"
    if error["type"] == "extra_forbidden":
        return "no such key (allowed: kind, mode, experts, name, seed, provenance)"
    return msg.removeprefix("Value error, ")


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what}: an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{what}: an integer, got {value!r}")


def _to_set(experts: ExpertSet | Mapping[int, list[int]]) -> ExpertSet:
    return experts if isinstance(experts, ExpertSet) else ExpertSet.from_mapping(experts)


def load_intervention(path: str | Path) -> Intervention:
    """Read an intervention file (.yaml/.yml/.json)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(path, "<file>", "a readable intervention file", str(err)) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise InputError(path, "<file>", "valid YAML or JSON", str(err).splitlines()[0]) from None
    return Intervention.from_data(data, path)


def save_intervention(intervention: Intervention, path: str | Path) -> Path:
    path = Path(path)
    data = intervention.to_file_dict()
    if path.suffix == ".json":
        data["experts"] = {str(k): v for k, v in data["experts"].items()}
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None), encoding="utf-8")
    return path
