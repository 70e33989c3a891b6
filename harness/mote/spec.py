"""What a backend knows about a model's MoE layout, read before any weights load.

Used to check an intervention against the model (layer and expert ranges, how many experts can be
forced) with an error that names the file and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.common.errors import InputError
from harness.mote.intervention import Intervention


@dataclass(frozen=True)
class ModelSpec:
    family: str  # config.model_type
    n_layers: int  # len(model.layers)
    moe_layers: tuple[int, ...]  # absolute indices of the layers with routed experts
    n_experts: dict[int, int]  # routed experts per MoE layer
    top_k: int
    # grouped top-k (DeepSeek-V2/V3, GLM-4 MoE): (n_group, topk_group); tokens pick experts only from
    # their topk_group best groups, so at most topk_group groups can hold forced experts
    groups: tuple[int, int] | None = None

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
            if intervention.kind == "suppress" and intervention.mode == "mask":
                room = self.n_experts[layer] - self.top_k
                if len(experts) > room:
                    raise InputError(
                        source,
                        field,
                        f"at most n_experts - top_k = {room} masked experts in one layer (else top-k must "
                        "pick a masked one)",
                        len(experts),
                    )
            if intervention.kind == "stimulate" and self.groups is not None:
                n_group, topk_group = self.groups
                size = self.n_experts[layer] // n_group
                chosen = sorted({e // size for e in experts})
                if len(chosen) > topk_group:
                    raise InputError(
                        source,
                        field,
                        f"forced experts in at most topk_group={topk_group} of the {n_group} expert groups "
                        f"({size} experts each; a token routes within its best {topk_group} groups only)",
                        chosen,
                    )
