"""Parents for assembly tests: tiny real models of one family (seeds 0 and 1), written once a session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def parents(tmp_path_factory: pytest.TempPathFactory):
    """Factory: (family, fp8, block) -> (parent a, parent b), tiny models of `family` with different seeds;
    fp8=True gives them in DeepSeek's FP8 layout with block x block scales (128 as released; smaller
    blocks make a tiny weight span several)."""
    from harness.assembly.fp8 import quantize_folder
    from harness.models.tiny import save_tiny_model

    built: dict[tuple[str, bool, int], tuple[Path, Path]] = {}

    def make(family: str, fp8: bool = False, block: int = 128) -> tuple[Path, Path]:
        key = (family, fp8, block)
        if key not in built:
            root = tmp_path_factory.mktemp(f"{family}-parents")
            pair = tuple(save_tiny_model(family, root / name, seed=seed) for name, seed in (("a", 0), ("b", 1)))
            if fp8:
                pair = tuple(quantize_folder(p, root / f"{p.name}-fp8-{block}", (block, block)) for p in pair)
            built[key] = (pair[0], pair[1])
        return built[key]

    return make
