"""What a backend knows about a model's MoE layout, read before any weights load.

Used to check an intervention against the model (layer and expert ranges, how many experts can be
forced) with an error that names the file and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError
from harness.mote.intervention import Intervention


@dataclass(frozen=True)
class ModelSpec:
    family: str  # config.model_type
    n_layers: int  # len(model.layers)
    moe_layers: tuple[int, ...]  # absolute indices of the layers with routed experts
    n_experts: dict[int, int]  # routed experts per MoE layer
    top_k: int

    def check(self, intervention: Intervention, source: str | Path = "<intervention>") -> None:
        """Raise InputError if the intervention does not fit this model."""
        for layer, experts in intervention.experts.to_mapping().items():
            field = f"experts.{layer}"
            if layer not in self.n_experts:
                raise InputError(
                    source,
                    field,
                    f"an MoE layer index of this {self.family} model, one of {list(self.moe_layers)}",
                    layer,
                )
            bad = [e for e in experts if e >= self.n_experts[layer]]
            if bad:
                raise InputError(source, field, f"expert ids in 0..{self.n_experts[layer] - 1}", bad)
            if intervention.kind == "stimulate" and len(experts) > self.top_k:
                raise InputError(
                    source, field, f"at most top_k={self.top_k} experts to force in one layer", len(experts)
                )
