"""Recipes and parents written for a test; a child read back with safetensors' own reader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is no mapping)
                out[name] = handle.get_tensor(name)
    return out


def raw(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assembly(folder: Path) -> dict:
    return json.loads((folder / "assembly.json").read_text())


def write_recipe(folder: Path, text: str) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def copy_parent(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
