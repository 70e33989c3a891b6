"""FP8 block quantisation as DeepSeek-V3/R1 store it: a float8_e4m3fn weight [out, in] and a float32
`weight_scale_inv` [ceil(out/b), ceil(in/b)]; the weight is the fp8 value times its b x b block's scale."""

from __future__ import annotations

from pathlib import Path

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def _expand(scale: torch.Tensor, rows: int, cols: int, block: tuple[int, int]) -> torch.Tensor:
    return scale.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """float32 values of rows of a block-quantised weight (the rows start on a block boundary)."""
    rows, cols = weight.shape
    return weight.to(torch.float32) * _expand(scale_inv.to(torch.float32), rows, cols, block)


def quantize(
    values: torch.Tensor, block: tuple[int, int], scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, scale_inv) of float32 rows starting on a block boundary: each block scaled so that its
    largest magnitude maps to the format's largest value, as DeepSeek's own quantiser does."""
    rows, cols = values.shape
    br, bc = block
    pad_r, pad_c = (-rows) % br, (-cols) % bc
    padded = torch.nn.functional.pad(values, (0, pad_c, 0, pad_r))
    blocks = padded.reshape((rows + pad_r) // br, br, (cols + pad_c) // bc, bc)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=torch.finfo(torch.float32).tiny)
    scale = (amax / FP8_MAX).to(scale_dtype)
    weight = (values / _expand(scale.to(torch.float32), rows, cols, block)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return weight, scale


def quantize_folder(source: Path, target: Path, block: tuple[int, int] = (128, 128)) -> Path:
    """A copy of a (small) model folder in DeepSeek's FP8 layout: every 2-D linear weight of the attention,
    dense and expert MLPs in float8_e4m3fn with its `weight_scale_inv`, everything else (embeddings,
    lm_head, norms, routers) as it was, and `quantization_config` in config.json. For tests and the
    benchmark: the hub releases of DeepSeek-V3/R1 are stored this way."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from harness.assembly.groups import group_of

    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors") and path.name != "model.safetensors.index.json":
            shutil.copy2(path, target / path.name)
    scales: dict[str, str] = {}
    for shard in sorted(source.glob("*.safetensors")):
        tensors = {}
        for name, tensor in load_file(str(shard)).items():
            quantised = tensor.dim() == 2 and name.endswith(".weight")
            if quantised and group_of(name) in ("routed_experts", "shared_experts", "attention", "dense_mlp"):
                weight, scale = quantize(tensor.to(torch.float32), block, torch.float32)
                tensors[name], tensors[f"{name}_scale_inv"] = weight, scale
                scales[f"{name}_scale_inv"] = shard.name
            else:
                tensors[name] = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        save_file(tensors, str(target / shard.name), metadata={"format": "pt"})
    index = source / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"].update(scales)
        (target / index.name).write_text(json.dumps(data))
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": list(block),
    }
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target
