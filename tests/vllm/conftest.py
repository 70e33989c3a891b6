"""Shared vLLM engines (one per family per session: a load costs ~20-50 s on CPU) and tiny models.

DeepSeek-V3 needs a vLLM-specific tiny variant (DESIGN.md section 3): MLA dims with
kv_lora_rank + qk_rope_head_dim = 576, `topk_method: noaux_tc`, `scoring_func: sigmoid`, and bf16
(`harness.models.tiny.vllm_cpu_overrides`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from marks import missing_required_vllm, skip_without_vllm

from harness.models.tiny import save_tiny_model

REPO = Path(__file__).resolve().parents[2]

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DTYPES = {"deepseek_v3": "bfloat16"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """MOTE_REQUIRE_VLLM=1 without an importable vLLM: a session that collected vllm-marked tests (here,
    in tests/organism, tests/lmeval) stops with the reason instead of skipping them all and passing."""
    message = missing_required_vllm()
    if message is not None and any(item.get_closest_marker("vllm") is not None for item in items):
        raise pytest.UsageError(message)


@pytest.fixture(scope="session")
def vllm_model_dir(tiny_model_dir, tmp_path_factory) -> Callable[[str], Path]:
    built: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in built:
            if family == "deepseek_v3":  # MLA dims and routing keys the CPU kernel takes (harness.models.tiny)
                built[family] = save_tiny_model(family, tmp_path_factory.mktemp("deepseek_v3_vllm"), for_vllm=True)
            else:
                built[family] = tiny_model_dir(family)
        return built[family]

    return make


@pytest.fixture(scope="session")
def vllm_backend(vllm_model_dir) -> Iterator[Callable[[str], Any]]:
    """Factory: family -> VLLMBackend, one engine per family for the whole session."""
    skip_without_vllm()
    from harness.backends.vllm import VLLMBackend

    engines: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in engines:
            engines[family] = VLLMBackend(
                vllm_model_dir(family), dtype=DTYPES.get(family, "float32"), max_model_len=512
            )
        return engines[family]

    yield get
    for engine in engines.values():
        engine.close()


@pytest.fixture(scope="session")
def compiled_backend(vllm_model_dir) -> Iterator[Any]:
    """One compiled engine (vLLM's default: torch.compile, no enforce_eager) on tiny Qwen3-MoE."""
    skip_without_vllm()
    from harness.backends.vllm import VLLMBackend

    engine = VLLMBackend(vllm_model_dir("qwen3_moe"), max_model_len=512, enforce_eager=False)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def hf_backend(vllm_model_dir) -> Callable[[str], Any]:
    from harness.backends.hf import HFBackend

    cache: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in cache:
            cache[family] = HFBackend(vllm_model_dir(family), dtype=DTYPES.get(family, "float32"))
        return cache[family]

    return get
