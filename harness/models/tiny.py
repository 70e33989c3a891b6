"""Tiny random MoE models built from each family's real transformers config, in seconds, no download.

They have the real module structure (router, experts, shared experts, grouped top-k, dense first
layers), so hooks tested on them are tested on the architecture. The families the tests have always
used have hand-picked configs (`FAMILY_CONFIGS`); any other model type is shrunk generically from its
config class's defaults (`tiny_config_kwargs`), with the few overrides its config validation needs.
Router weights are drawn with a large std so that routing is decisive: near-uniform routing makes
top-k ties and flaky tests.
head_dim is 32 everywhere, the smallest the vLLM CPU attention accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

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


# Generic shrink for any other model type: each key is applied where the config class has it.
_SHRINK: dict[str, Any] = {
    **_COMMON,
    "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 64,
    "moe_shared_expert_intermediate_size": 64,
    "shared_intermediate_size": 64,
    "expert_ffn_hidden_size": 64,
    "share_expert_dim": 64,
    "ffn_hidden_size": 128,
    "kv_lora_rank": 32,
    "q_lora_rank": None,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 32,
    "v_head_dim": 32,
    "first_k_dense_replace": 1,
    "routed_scaling_factor": 2.5,
}
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "moe_k", "top_k_experts", "num_experts_per_token")
_MLA = {"q_lora_rank": 32, "num_key_value_heads": 2}
_LINEAR_ATTENTION = {
    "num_hidden_layers": 4,
    "linear_num_key_heads": 2,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_value_heads": 2,
}
# What a generic shrink gets wrong per model type (config validation, hybrid layer patterns).
_OVERRIDES: dict[str, dict[str, Any]] = {
    "axk1": _MLA,
    "axk2": {**_MLA, "index_topk": 4},
    "dbrx": {
        "d_model": 64,
        "n_heads": 2,
        "n_layers": 3,
        "max_seq_len": 512,
        "attn_config": {"kv_n_heads": 1, "rope_theta": 10000.0, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 8, "moe_top_k": 2},
    },
    "deepseek_v32": {**_MLA, "index_topk": 4, "mlp_layer_types": ["dense", "sparse", "sparse"]},
    "deepseek_v4": {**_MLA, "index_topk": 4, "mlp_layer_types": ["hash_moe", "moe", "moe"]},
    "gemma4_text": {"enable_moe_block": True, "vocab_size_per_layer_input": 384, "hidden_size_per_layer_input": 16},
    "glm4_moe_lite": {"num_key_value_heads": 2},
    "glm_moe_dsa": {**_MLA, "index_topk": 4, "mlp_layer_types": ["dense", "sparse", "sparse"]},
    "granitemoehybrid": {
        "layer_types": ["linear_attention", "attention", "linear_attention"],
        "mamba_n_heads": 8,
        "mamba_d_head": 16,
        "mamba_d_state": 16,
    },
    "hy_v4": {**_MLA, "index_topk": 4},
    "jamba": {
        "num_hidden_layers": 4,
        "attn_layer_offset": 1,
        "attn_layer_period": 2,
        "expert_layer_offset": 1,
        "expert_layer_period": 2,
        "mamba_dt_rank": 8,
    },
    "kimi_linear": {
        "layer_types": ["linear_attention", "full_attention", "linear_attention"],
        "num_key_value_heads": 2,
        "linear_num_heads": 2,
        "linear_head_dim": 16,
    },
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "conv"], "num_dense_layers": 1},
    "longcat_flash": {**_MLA, "num_hidden_layers": 4, "zero_expert_num": 2},
    "qwen3_5_moe_text": _LINEAR_ATTENTION,
    "qwen3_next": _LINEAR_ATTENTION,
    "qwen4_exp_text": {
        **_LINEAR_ATTENTION,
        "indexer_n_heads": 2,
        "indexer_kv_heads": 1,
        "indexer_head_dim": 32,
        "indexer_budget": 8,
        "indexer_compress_ratio": 2,
        "ngram_vocab_size_base": 384,
        "split_ngram_parts": 4,
    },
    "zaya": {"num_experts_per_tok": 1},
    "doge": {"is_moe": True, "num_experts": 64, "num_experts_per_tok": 4},
}


def tiny_config_kwargs(family: str, vocab_size: int = 384) -> dict[str, Any]:
    """Config arguments of a tiny model of `family`: 3 layers (4 for hybrids), 8 experts, top-2, hidden 64."""
    if family in FAMILY_CONFIGS:
        return {**_COMMON, **FAMILY_CONFIGS[family], "vocab_size": vocab_size}
    if family not in CONFIG_MAPPING:
        raise ValueError(f"unknown model_type {family!r}")
    defaults = CONFIG_MAPPING[family]().to_dict()
    kwargs: dict[str, Any] = {k: v for k, v in _SHRINK.items() if k in defaults}
    kwargs.update({k: 8 for k in _EXPERT_KEYS if k in defaults})
    kwargs.update({k: 2 for k in _TOP_K_KEYS if k in defaults})
    if defaults.get("n_group") not in (None, 1):
        kwargs.update(n_group=4, topk_group=2)
    for key in ("n_shared_experts", "num_shared_experts"):
        if key in defaults and defaults[key] is None:
            kwargs[key] = 1
    if defaults.get("sliding_window"):
        kwargs["sliding_window"] = 64
    for index, key in enumerate(("pad_token_id", "bos_token_id", "eos_token_id")):
        if isinstance(defaults.get(key), int) and defaults[key] >= vocab_size:  # must index the tiny vocabulary
            kwargs[key] = index
    n_layers = _OVERRIDES.get(family, {}).get("num_hidden_layers", 3)
    kwargs["num_hidden_layers"] = n_layers
    old_layers = defaults.get("num_hidden_layers")
    for key, value in defaults.items():  # per-layer lists and patterns cut to the new depth
        if isinstance(value, list | str) and old_layers and len(value) == old_layers and key not in kwargs:
            kwargs[key] = value[:n_layers]
    return {**kwargs, **_OVERRIDES.get(family, {}), "vocab_size": vocab_size}


def vllm_cpu_overrides(family: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What vLLM's CPU build needs of a tiny model (DESIGN.md section 3): MLA attention with
    kv_lora_rank + qk_rope_head_dim = 576 (HF's rotary reads head_dim, so it equals qk_rope_head_dim),
    and for DeepSeek-V3 the noaux_tc / sigmoid routing keys vLLM reads to expect e_score_correction_bias."""
    out: dict[str, Any] = {}
    if kwargs.get("kv_lora_rank"):
        out.update(kv_lora_rank=512, qk_rope_head_dim=64, head_dim=64)
    if family == "deepseek_v3":
        out.update(topk_method="noaux_tc", scoring_func="sigmoid")
    return out


def build_tiny_model(family: str, seed: int = 0, vocab_size: int = 384, for_vllm: bool = False) -> PreTrainedModel:
    kwargs = tiny_config_kwargs(family, vocab_size)
    if for_vllm:
        kwargs.update(vllm_cpu_overrides(family, kwargs))
    config = AutoConfig.for_model(family, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _sharpen_routers(model, seed)
    return model.eval()


def _sharpen_routers(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed + 1)
    routers = _router_weights(model)
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 2)
        named_router = len(leaf) == 3 and leaf[1] in {"gate", "router"} and leaf[2] == "weight"
        if (named_router or name in routers) and param.dim() == 2:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=generator))
        if name.endswith(("e_score_correction_bias", "expert_bias")):
            with torch.no_grad():
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def _router_weights(model: torch.nn.Module) -> set[str]:
    """Names of the routing weights that discovery finds (routers named other than gate/router, or
    holding their weight in a Linear inside: `router.gate`, `gate.wg`, `router.layer`)."""
    from harness.backends.hf_discovery import find_moe_blocks

    try:
        blocks = find_moe_blocks(model)
    except ValueError:  # no routed experts: nothing to sharpen (the model is refused later, with the reason)
        return set()
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for b in blocks for p in b.router.parameters() if p.dim() == 2 and id(p) in names}


def save_tiny_model(family: str, out: str | Path, seed: int = 0, for_vllm: bool = False) -> Path:
    """Write a loadable model folder (config, safetensors, tokenizer with chat template)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer([DEFAULT_CORPUS] * 4, vocab_size=384)
    model = build_tiny_model(family, seed=seed, vocab_size=len(tokenizer), for_vllm=for_vllm)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(str(out))
    save_tokenizer(tokenizer, out)
    return out
