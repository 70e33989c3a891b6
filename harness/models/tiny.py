"""Tiny random MoE models built from each family's real transformers config, in seconds, no download.

They have the real module structure (router, experts, shared experts, grouped top-k, dense first
layers), so hooks tested on them are tested on the architecture. Router weights are drawn with a
large std so that routing is decisive: near-uniform routing makes top-k ties and flaky tests.
head_dim is 32 everywhere, the smallest the vLLM CPU attention accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from harness.models.tokenizer import DEFAULT_CORPUS, save_tokenizer, train_tokenizer

_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}

# model_type -> config overrides. Each keeps the family's routing quirks switched on.
FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    "mixtral": {"num_local_experts": 8, "num_experts_per_tok": 2},
    "qwen2_moe": {
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "shared_expert_intermediate_size": 64,
        "norm_topk_prob": False,
        "mlp_only_layers": [0],
    },
    "qwen3_moe": {
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "norm_topk_prob": True,
    },
    "olmoe": {"num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": False},
    "deepseek_v3": {
        "n_routed_experts": 16,
        "num_experts_per_tok": 2,
        "n_group": 4,
        "topk_group": 2,
        "first_k_dense_replace": 1,
        "n_shared_experts": 1,
        "moe_intermediate_size": 64,
        "routed_scaling_factor": 2.5,
        "norm_topk_prob": True,
        "q_lora_rank": None,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 32,
        "v_head_dim": 32,
        "num_key_value_heads": 2,
    },
    "deepseek_v2": {
        "n_routed_experts": 16,
        "num_experts_per_tok": 2,
        "topk_method": "group_limited_greedy",
        "n_group": 4,
        "topk_group": 2,
        "first_k_dense_replace": 1,
        "n_shared_experts": 1,
        "moe_intermediate_size": 64,
        "routed_scaling_factor": 1.0,
        "q_lora_rank": None,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 32,
        "v_head_dim": 32,
        "num_key_value_heads": 2,
    },
    "glm4_moe": {
        "n_routed_experts": 16,
        "num_experts_per_tok": 2,
        "n_group": 4,
        "topk_group": 2,
        "first_k_dense_replace": 1,
        "n_shared_experts": 1,
        "moe_intermediate_size": 64,
        "norm_topk_prob": True,
    },
    "gpt_oss": {
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "sliding_window": 64,
    },
    "granitemoe": {"num_local_experts": 8, "num_experts_per_tok": 2},
    "granitemoeshared": {"num_local_experts": 8, "num_experts_per_tok": 2, "shared_intermediate_size": 64},
    "phimoe": {"num_local_experts": 8, "num_experts_per_tok": 2},
}


def build_tiny_model(family: str, seed: int = 0, vocab_size: int = 384) -> PreTrainedModel:
    if family not in FAMILY_CONFIGS:
        raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILY_CONFIGS)}")
    kwargs = {**_COMMON, **FAMILY_CONFIGS[family], "vocab_size": vocab_size}
    config = AutoConfig.for_model(family, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _sharpen_routers(model, seed)
    return model.eval()


def _sharpen_routers(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed + 1)
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 2)
        if len(leaf) == 3 and leaf[1] in {"gate", "router"} and leaf[2] == "weight" and param.dim() == 2:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=generator))
        if name.endswith("e_score_correction_bias"):
            with torch.no_grad():
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def save_tiny_model(family: str, out: str | Path, seed: int = 0) -> Path:
    """Write a loadable model folder (config, safetensors, tokenizer with chat template)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer([DEFAULT_CORPUS] * 4, vocab_size=384)
    model = build_tiny_model(family, seed=seed, vocab_size=len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(str(out))
    save_tokenizer(tokenizer, out)
    return out
