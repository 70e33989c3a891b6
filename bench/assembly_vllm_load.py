"""vLLM-CPU start-up with a child assembled at load against the same engine loading one parent (not a test).

    python bench/assembly_vllm_load.py [--hidden 1024] [--layers 4] [--experts 32] [--rounds 3]

Run in an environment with vLLM's CPU build (the `vllm` tox env). Builds two random Qwen3-MoE parents of
the given shape (float32; the defaults give about 1.3 GB each), a recipe mixing every group at lambda 0.5
and its child folder without weights (`harness assemble --at-load`), then times, in fresh processes,
alternating: VLLMBackend on parent A (vLLM's own safetensors loader), and on the child (the MoTE loader
reads both parents and interpolates every tensor as vLLM asks for it). Seconds are the backend's whole
construction (engine start-up included) and vLLM's own "Loading weights took" figure. Goal: the child
within 2.5x of the parent. Writes results/bench/assembly_vllm_<utc time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOAD = """
import sys, time
from harness.backends.vllm import VLLMBackend
started = time.perf_counter()
engine = VLLMBackend(sys.argv[1], dtype="float32", max_model_len=256)
print("MOTE_SECONDS", time.perf_counter() - started, flush=True)
engine.close()
"""


def parents(root: Path, hidden: int, layers: int, experts: int) -> tuple[Path, Path]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.models.tokenizer import DEFAULT_CORPUS, save_tokenizer, train_tokenizer

    tokenizer = train_tokenizer([DEFAULT_CORPUS] * 4, vocab_size=384)
    folders = []
    for name, seed in (("a", 0), ("b", 1)):
        config = AutoConfig.for_model(
            "qwen3_moe",
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            moe_intermediate_size=3 * hidden // 4,
            num_hidden_layers=layers,
            num_experts=experts,
            num_experts_per_tok=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=128,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(str(root / name))
        save_tokenizer(tokenizer, root / name)
        folders.append(root / name)
    return folders[0], folders[1]


def timed_load(folder: Path) -> tuple[float, float]:
    """(backend construction seconds, vLLM's 'Loading weights took' seconds) in a fresh process."""
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(folder)], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    text = out.stdout + out.stderr
    total = float(re.search(r"MOTE_SECONDS ([0-9.]+)", text).group(1))  # type: ignore[union-attr]
    weights = re.search(r"Loading weights took ([0-9.]+) seconds", text)
    return total, float(weights.group(1)) if weights else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "results" / "bench" / "assembly-vllm-work")
    args = parser.parse_args()
    import shutil

    from harness.cli import main as harness_main

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    a, b = parents(args.work, args.hidden, args.layers, args.experts)
    recipe = args.work / "mix.yaml"
    recipe.write_text(f"parents: {{a: {a}, b: {b}}}\ngroups: {{all: {{b: 0.5}}}}\n")
    child = args.work / "child"
    assert harness_main(["assemble", str(recipe), "--out", str(child), "--at-load"]) == 0
    runs: dict[str, list[tuple[float, float]]] = {"parent": [], "child": []}
    for _ in range(args.rounds):
        for name, folder in (("parent", a), ("child", child)):
            runs[name].append(timed_load(folder))
    median = {k: statistics.median(t for t, _ in v) for k, v in runs.items()}
    weights = {k: statistics.median(w for _, w in v) for k, v in runs.items()}
    report = {
        "schema": 1,
        "when": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        "parent_bytes": sum(p.stat().st_size for p in a.glob("*.safetensors")),
        "shape": {"hidden": args.hidden, "layers": args.layers, "experts": args.experts},
        "runs": runs,
        "median_seconds": median,
        "median_weight_loading_seconds": weights,
        "ratio_child_to_parent": round(median["child"] / median["parent"], 3),
        "weight_loading_ratio": round(weights["child"] / weights["parent"], 3),
        "goal": "ratio_child_to_parent <= 2.5",
    }
    out = REPO / "results" / "bench" / f"assembly_vllm_{report['when']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
