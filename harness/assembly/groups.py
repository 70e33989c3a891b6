"""Which group of the recipe a stored tensor belongs to, by its name as written on disk.

Rules are tried in order; the first that matches places the tensor, and a tensor no rule places is an
error naming it (a new family's layout must be placed on purpose, not by a catch-all). They cover the
per-expert layout of hub releases (`mlp.experts.17.gate_proj.weight`) and fused ones
(`mlp.experts.gate_up_proj`), for every family the harness supports (tests/assembly checks each against
where the HF backend finds the family's router and experts). Quantisation scales (`weight_scale_inv`,
`*_scale`) go with their weight.

`residual` extends the issue's eight groups: the residual stream's own weights that are none of the
others (hyper-connections, Gemma's per-layer inputs and layer scalars).
"""

from __future__ import annotations

import re

GROUPS: tuple[str, ...] = (
    "routed_experts",
    "shared_experts",
    "router",
    "attention",
    "dense_mlp",
    "embeddings",
    "lm_head",
    "norms",
    "residual",
)
ALL = "all"

_NORM = re.compile(r"^([a-z_0-9]*norm[a-z_0-9]*|ln_f?\d*)$", re.IGNORECASE)
_NORM_PART = re.compile(r"^(\d+|W_down|W_up|norm)$")  # modules inside a composite norm
_SCALE = re.compile(r"\.(weight_scale_inv|weight_scale|input_scale)$")
_MOE = r"(mlp|block_sparse_moe|feed_forward|ffn|mixer|moe)"

# (group, pattern) in order: earlier rules win
RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (group, re.compile(pattern))
    for group, pattern in (
        ("shared_experts", r"\.(shared_experts?|shared_mlp|shared_expert_gate)(\.|$)"),
        ("router", r"(e_score_correction_bias|expert_bias)$|\.moe_statics\."),
        ("router", rf"\.{_MOE}\.(gate|router)\.|(^|\.)layers\.\d+\.router\.|\.ffn\.router\."),
        ("routed_experts", r"\.experts(\.|$)|\.block_sparse_moe\.(input_linear|output_linear)\."),  # GraniteMoE
        ("attention", r"\.(self_attn|attn|attention|linear_attn|mamba|conv|attn_sconv|mlp_sconv)\."),
        ("attention", r"\.mixer\.(?!(up_proj|down_proj|gate_proj)\.)"),
        (
            "dense_mlp",
            rf"\.{_MOE}\.(gate_proj|linear_gate|up_proj|down_proj|gate_up_proj|w1|w2|w3|fc1|fc2|c_fc|c_proj)"
            r"\.|\.mlps\.\d+\.",
        ),
        ("embeddings", r"(^|\.)(embed_tokens|embed_tokens_per_layer|wte|embeddings|word_embeddings)\."),
        ("lm_head", r"^(lm_head|output)\."),
        (
            "residual",
            r"(hyper_connection|hc_pre|hc_head)|\.layer_scalar$|per_layer_(input_gate|projection|model_projection)",
        ),
    )
)


def weight_of(name: str) -> str | None:
    """The weight a quantisation scale belongs to (`x.weight_scale_inv` -> `x.weight`), else None."""
    match = _SCALE.search(name)
    return None if match is None else name[: match.start()] + ".weight"


def is_norm(name: str) -> bool:
    """The module holding the tensor is a norm (`input_layernorm.weight`, `self_attn.q_norm.weight`), or
    a part of a composite norm (`post_attention_layernorm.W_up.weight`); not `norm_attn_norm.attn.Wqkv`."""
    modules = name.split(".")[:-1]
    while modules and _NORM_PART.match(modules[-1]) and len(modules) > 1 and _NORM.match(modules[-2]):
        modules.pop()
    return bool(modules) and bool(_NORM.match(modules[-1]))


def group_of(name: str) -> str | None:
    """The group of one stored tensor, or None when no rule places it."""
    owner = weight_of(name) or name
    if is_norm(owner):
        return "norms"
    for group, pattern in RULES:
        if pattern.search(owner):
            return group
    return None
