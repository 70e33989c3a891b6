"""Shared fixtures. Nothing here may reach a model hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ.get("MOTE_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        message = f"shared data not found at {path} (set MOTE_SHARED_DATA)"
        if os.environ.get("MOTE_REQUIRE_DATA") == "1":  # tox sets it: CI must not pass by skipping
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """Factory: family -> folder of a tiny random model of that family (built once per session)."""
    from harness.models.tiny import save_tiny_model

    built: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in built:
            built[family] = save_tiny_model(family, tmp_path_factory.mktemp(family))
        return built[family]

    return make
