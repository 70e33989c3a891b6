"""Which dtype a vLLM engine can run a model in, decided before the engine starts.

vLLM's CPU build runs DeepSeek-style MLA attention (configs with `kv_lora_rank`) only in bfloat16: its
MLA kernel rejects float32 weights, and the engine dies at start-up with a raw traceback. `auto` picks
bfloat16 there and float32 elsewhere (the parity reference); an explicit float32 for such a model is
refused with the reason before the engine loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.common.errors import InputError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def uses_mla(model_path: Path) -> bool:
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    return bool(config.get("kv_lora_rank") or text.get("kv_lora_rank"))


def on_cpu_build() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def vllm_dtype(model_path: Path, requested: str, field: str = "--dtype") -> tuple[str, str | None]:
    """(dtype to start the engine with, a note saying why when it was chosen for the user)."""
    if requested not in DTYPES:
        raise InputError(field, "dtype", f"one of {list(DTYPES)}", requested)
    mla_on_cpu = uses_mla(model_path) and on_cpu_build()
    if requested == "auto":
        if mla_on_cpu:
            return "bfloat16", "dtype auto -> bfloat16: vLLM's CPU MLA kernel takes no float32 weights"
        return "float32", None
    if requested == "float32" and mla_on_cpu:
        raise InputError(
            field,
            "dtype",
            "bfloat16 (or auto) for this MLA model (kv_lora_rank in config.json) on vLLM's CPU build, whose MLA "
            "kernel rejects float32 weights",
            requested,
        )
    return requested, None
