"""Device check of the HF hook path at real MoE shapes: speed against stock transformers, and the
intervention contract (not a test; run by check.sh on a GPU machine).

    python bench/gpu/hf_check.py OUT_DIR [--device cuda|cpu] [--small] [--layers 4] [--rounds 3]

Why: the unit tests run tiny CPU models; one short run on a GPU machine must tell whether the
hooks keep their promises with bf16, 64/128 experts and the CUDA experts kernels, and what they cost.
Nothing is downloaded: random-weight models of OLMoE-1B-7B and Qwen3-30B-A3B shape (a few layers,
the real hidden size, expert count, top-k, heads and vocabulary) are built from their config
classes, saved with the harness tokenizer, and loaded through `HFBackend` so the real hook path is
timed. Conditions, each a batch of prompts generated greedily:
  unhooked     plain `model.generate` on a second copy of the same weights, no hooks installed;
  hooked_none  HFBackend, no intervention;  drop / mask / stimulate  every row under it;
  recording    HFBackend, no intervention, record_routing=True.
Rounds alternate (order rotated each round) so load changes hit every condition alike; ratios vs
unhooked are taken within each round, and their median and range reported. Speed never fails the
run; a failed correctness check exits 1. Writes OUT_DIR/gpu_check.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from harness.backends.hf import HFBackend
from harness.contract.hf import interventions, run_backend, run_checks, stock_generate
from harness.models.tokenizer import DEFAULT_CORPUS, save_tokenizer, train_tokenizer
from harness.mote import Intervention

SCHEMA_VERSION = 1
CONDITIONS = ("unhooked", "hooked_none", "drop", "mask", "stimulate", "recording")

# Real shapes (config.json of allenai/OLMoE-1B-7B-0924 and Qwen/Qwen3-30B-A3B), depth cut to --layers.
REAL_SHAPES: dict[str, dict[str, Any]] = {
    "olmoe": {
        "hidden_size": 2048,
        "intermediate_size": 1024,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "num_experts": 64,
        "num_experts_per_tok": 8,
        "norm_topk_prob": False,
        "vocab_size": 50304,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    },
    "qwen3_moe": {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "vocab_size": 151936,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 40960,
        "tie_word_embeddings": False,
    },
}
# --small: the same families and code path, shrunk so that 2 CPU cores finish in seconds.
SMALL_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 512,
    "max_position_embeddings": 512,
}
NAMES = {"olmoe": "OLMoE-1B-7B", "qwen3_moe": "Qwen3-30B-A3B"}


@dataclass(frozen=True)
class Settings:
    device: str
    dtype: str
    small: bool
    layers: int
    batch: int
    prompt_tokens: int
    new_tokens: int
    rounds: int
    timing_budget_s: float
    check_batch: int
    check_new_tokens: int


def parse_args(argv: Sequence[str] | None = None) -> tuple[Path | None, Settings, Path | None]:
    """(OUT_DIR, settings, --table JSON): one of the two paths is given."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", help="folder for gpu_check.json")
    p.add_argument("--table", type=Path, metavar="JSON", help="print a report's ratio table (docs/gpu.md) and exit")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--small", action="store_true", help="tiny shapes: a dry run of the same code path")
    p.add_argument(
        "--dtype", choices=("bfloat16", "float32"), help="default bfloat16 on cuda, float32 on cpu (CPU bf16 is slow)"
    )
    p.add_argument("--layers", type=int, help="decoder layers per model (default 4; 2 with --small)")
    p.add_argument("--batch", type=int, help="rows per generate (default 32; 4 with --small)")
    p.add_argument("--prompt-tokens", type=int, help="tokens per prompt (default 64; 16 with --small)")
    p.add_argument("--new-tokens", type=int, help="greedy tokens per row (default 64; 8 with --small)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds over all conditions (after a warm-up)")
    p.add_argument("--timing-budget-s", type=float, default=90.0, help="per model: fewer rounds if the warm-up says so")
    a = p.parse_args(argv)
    if a.table is None and a.out is None:
        p.error("OUT_DIR is required (or --table JSON)")
    small = bool(a.small)
    settings = Settings(
        device=a.device,
        dtype=a.dtype or ("bfloat16" if a.device == "cuda" else "float32"),
        small=small,
        layers=a.layers or (2 if small else 4),
        batch=a.batch or (4 if small else 32),
        prompt_tokens=a.prompt_tokens or (16 if small else 64),
        new_tokens=a.new_tokens or (8 if small else 64),
        rounds=max(1, a.rounds),
        timing_budget_s=a.timing_budget_s,
        check_batch=4 if small else 8,
        check_new_tokens=4 if small else 8,
    )
    return a.out, settings, a.table


class Stopwatch:
    """Elapsed seconds per stage, printed as they finish: the only way to see where 8 minutes went."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}

    def stage(self, name: str, since: float) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - since, 3)
        print(f"[{self.label}] {name}: {now - since:.1f}s (total {now - self.start:.1f}s)", flush=True)

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def config_kwargs(family: str, settings: Settings) -> dict[str, Any]:
    base = {**SMALL_SHAPE, "norm_topk_prob": REAL_SHAPES[family]["norm_topk_prob"]} if settings.small else {}
    shape = base or dict(REAL_SHAPES[family])
    if family == "olmoe" and settings.small:
        shape.pop("moe_intermediate_size")
    return {**shape, "num_hidden_layers": settings.layers}


def sharpen_routers(model: torch.nn.Module, hidden: int) -> None:
    """Random routers at the default init std (0.02) give near-uniform scores: bf16 ties and no
    decisive top-k. Std 8/sqrt(hidden) gives router logits of std ~8, the scale of the tiny test
    models, whatever the hidden size."""
    from harness.backends.hf_discovery import find_moe_blocks

    generator = torch.Generator(device="cpu").manual_seed(1)
    for block in find_moe_blocks(model):
        for param in block.router.parameters():
            if param.dim() == 2:
                values = torch.randn(param.shape, generator=generator) * (8.0 / hidden**0.5)
                with torch.no_grad():
                    param.copy_(values.to(param.device, param.dtype))


def build_model_dir(family: str, settings: Settings, folder: Path) -> dict[str, Any]:
    """Random weights of the family's shape, built on the device (fast init), saved with the harness
    tokenizer. The model keeps its real vocabulary: prompts use the tokenizer's ids, which it covers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = train_tokenizer([DEFAULT_CORPUS] * 4, vocab_size=384)
    kwargs = config_kwargs(family, settings)
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = AutoConfig.for_model(family, **kwargs, **ids, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    with torch.device(settings.device):
        model: Any = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, settings.dtype))
    sharpen_routers(model, int(kwargs["hidden_size"]))
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(str(folder))
    save_tokenizer(tokenizer, folder)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    free_memory(settings.device)
    shape_keys = ("hidden_size", "num_hidden_layers", "num_experts", "num_experts_per_tok", "vocab_size")
    return {
        **{k: kwargs[k] for k in shape_keys},
        "expert_intermediate_size": kwargs.get("moe_intermediate_size", kwargs["intermediate_size"]),
        "num_attention_heads": kwargs["num_attention_heads"],
        "num_key_value_heads": kwargs["num_key_value_heads"],
        "params": n_params,
        "weights_gib": round(n_params * torch.finfo(getattr(torch, settings.dtype)).bits / 8 / 2**30, 3),
    }


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def make_texts(tokenizer: Any, n: int, n_tokens: int) -> list[str]:
    """n different prompts of about n_tokens tokens, sorted by length: HFBackend sorts its batch by
    text length (stably), so sorted input keeps the same row order as the unhooked model's batch."""
    ids = tokenizer(DEFAULT_CORPUS * (2 + n * 7 // 100 + n_tokens // 100), add_special_tokens=False)["input_ids"]
    texts = [str(tokenizer.decode(ids[7 * i : 7 * i + n_tokens])) for i in range(n)]
    return sorted(texts, key=len)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def condition_runner(
    name: str, backend: HFBackend, stock: Any, texts: Sequence[str], new_tokens: int
) -> Callable[[], int]:
    """A call that generates once under `name` and returns the tokens the engine computed (rows x
    decode steps; random weights rarely stop early, and the batch runs to its longest row anyway)."""
    if name == "unhooked":
        return lambda: int(stock_generate(stock, backend.tokenizer, texts, new_tokens).numel())
    iv = interventions(backend).get(name, Intervention.none())
    record = name == "recording"

    def run() -> int:
        results = run_backend(backend, texts, iv, new_tokens, record=record)
        return len(results) * max(r.n_generated_tokens for r in results)

    return run


def timed(run: Callable[[], int], device: str) -> tuple[float, int]:
    sync(device)
    start = time.perf_counter()
    tokens = run()
    sync(device)
    return time.perf_counter() - start, tokens


def time_conditions(
    backend: HFBackend, stock: Any, texts: Sequence[str], settings: Settings, watch: Stopwatch
) -> tuple[dict[str, list[float]], int]:
    """Tokens/s per condition per round: one untimed warm-up round, then rounds in rotated order,
    as many as `timing_budget_s` allows at the warm-up's pace (at least one)."""
    runners = {name: condition_runner(name, backend, stock, texts, settings.new_tokens) for name in CONDITIONS}
    start = time.perf_counter()
    for name in CONDITIONS:
        timed(runners[name], settings.device)
    warmup = time.perf_counter() - start
    watch.stage("warmup", start)
    rounds = max(1, min(settings.rounds, int(settings.timing_budget_s // max(warmup, 1e-9))))
    tps: dict[str, list[float]] = {name: [] for name in CONDITIONS}
    start = time.perf_counter()
    for r in range(rounds):
        shift = r % len(CONDITIONS)
        for name in CONDITIONS[shift:] + CONDITIONS[:shift]:
            seconds, tokens = timed(runners[name], settings.device)
            tps[name].append(tokens / seconds)
    watch.stage(f"timing ({rounds} rounds)", start)
    return tps, rounds


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def speed_report(tps: dict[str, list[float]]) -> dict[str, Any]:
    """Per condition tokens/s, and the ratio to unhooked taken within each round (same load)."""
    base = tps["unhooked"]
    return {
        "tokens_per_s": {name: spread(values) for name, values in tps.items()},
        "ratios_vs_unhooked": {
            name: spread([v / b for v, b in zip(values, base, strict=True)])
            for name, values in tps.items()
            if name != "unhooked"
        },
        "runs_tokens_per_s": {name: [round(v, 2) for v in values] for name, values in tps.items()},
    }


def load_pair(folder: Path, settings: Settings) -> tuple[HFBackend, Any]:
    """HFBackend (hooks installed) and a plain copy of the same weights (no hooks at all)."""
    from transformers import AutoModelForCausalLM

    backend = HFBackend(folder, dtype=settings.dtype, batch_size=settings.batch, device=settings.device)
    plain: Any = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=getattr(torch, settings.dtype), local_files_only=True
    )
    return backend, plain.to(settings.device).eval()


def check_model(family: str, settings: Settings, scratch: Path) -> dict[str, Any]:
    """Build, load, check and time one model; everything it allocated is freed before returning."""
    watch = Stopwatch(NAMES[family])
    folder = scratch / family
    start = time.perf_counter()
    shape = build_model_dir(family, settings, folder)
    watch.stage("build+save", start)
    start = time.perf_counter()
    backend, stock = load_pair(folder, settings)
    watch.stage("load (hooked + unhooked)", start)
    if settings.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    texts = make_texts(backend.tokenizer, settings.batch, settings.prompt_tokens)
    start = time.perf_counter()
    checks = run_checks(backend, stock, texts[: settings.check_batch], settings.check_new_tokens)
    watch.stage("checks", start)
    for name, check in checks.items():
        print(f"[{NAMES[family]}]   {'PASS' if check.passed else 'FAIL'} {name}: {check.details}", flush=True)
    tps, rounds = time_conditions(backend, stock, texts, settings, watch)
    prompt_lengths = [len(backend.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    report = {
        "name": NAMES[family],
        "model_type": family,
        "shape": shape,
        "experts_implementation": str(getattr(stock.config, "_experts_implementation", None)),
        "prompt_tokens": {"min": min(prompt_lengths), "max": max(prompt_lengths)},
        "rounds": rounds,
        **speed_report(tps),
        "checks": {name: check.as_dict() for name, check in checks.items()},
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if settings.device == "cuda" else None,
    }
    del backend, stock
    free_memory(settings.device)
    shutil.rmtree(folder, ignore_errors=True)
    report["stages_s"] = watch.stages
    report["seconds"] = watch.total()
    return report


def machine(device: str) -> dict[str, Any]:
    import transformers

    return {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "device_type": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


LABELS = {
    "hooked_none": "hooked, none",
    "drop": "drop",
    "mask": "mask",
    "stimulate": "stimulate",
    "recording": "recording",
}


def ratio_table(report: dict[str, Any]) -> str:
    """Ratios vs unhooked, median (min-max) over rounds, one row per model: the tables of docs/gpu.md."""
    conditions = [c for c in report["conditions"] if c != "unhooked"]
    lines = ["| model | " + " | ".join(LABELS[c] for c in conditions) + " |", "|---" * (len(conditions) + 1) + "|"]
    for model in report["models"].values():
        ratios = [model["ratios_vs_unhooked"][c] for c in conditions]
        cells = [f"{r['median']:.3f} ({r['min']:.2f}-{r['max']:.2f})" for r in ratios]
        lines.append(f"| {model['name']} shape | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_summary(report: dict[str, Any]) -> None:
    print(f"\n{report['machine']['device']}  torch {report['machine']['torch']}  ({report['total_seconds']:.0f}s)")
    for model in report["models"].values():
        failed = [name for name, c in model["checks"].items() if not c["passed"]]
        unhooked = model["tokens_per_s"]["unhooked"]["median"]
        verdict = "FAILED: " + ", ".join(failed) if failed else "ok"
        print(f"{model['name']}: unhooked {unhooked:.0f} tok/s; checks {verdict}")
        for name, ratio in model["ratios_vs_unhooked"].items():
            print(f"  {name:<12} {ratio['median']:.3f}x  [{ratio['min']:.3f}, {ratio['max']:.3f}]")


def main(argv: Sequence[str] | None = None) -> int:
    out, settings, table = parse_args(argv)
    if table is not None:
        print(ratio_table(json.loads(table.read_text(encoding="utf-8"))))
        return 0
    assert out is not None  # parse_args requires one of the two
    if settings.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if settings.small and settings.device == "cpu":
        torch.set_num_threads(1)  # tiny matrices gain nothing from threads; spinning ones stall a shared CPU
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mote-gpu-check-") as scratch:
        for family in REAL_SHAPES:
            models[family] = check_model(family, settings, Path(scratch))
    passed = all(c["passed"] for m in models.values() for c in m["checks"].values())
    report = {
        "schema_version": SCHEMA_VERSION,
        "when": datetime.now(timezone.utc).isoformat(),
        "machine": machine(settings.device),
        "settings": asdict(settings),
        "conditions": list(CONDITIONS),
        "models": models,
        "passed": passed,
        "total_seconds": round(time.perf_counter() - start, 3),
    }
    path = out / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_summary(report)
    print(f"wrote {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
