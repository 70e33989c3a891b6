"""Throughput of the MoTE vLLM path against stock vLLM (not a test).

    python bench/vllm_bench.py [--model DIR] [--prompts 16] [--max-tokens 64] [--stock-mode compiled]

One run, same model and prompts, generated tokens/s of:
  stock         vLLM in its default configuration (compiled; CUDA graphs on GPU), MoTE plugin off;
  eager_none    the MoTE engine (eager, hooks installed), no intervention;
  intervention  every request under one suppress/mask intervention;
  recording     every request recorded (per-token top-k fetched back);
  sweep_batch   12 conditions (baseline + targeted + 10 random) x prompts as ONE batch of
                per-request interventions;
  sweep_passes  the same 12 conditions as 12 passes.
Writes results/bench/vllm_<utc time>.json with the machine, versions and the ratios
(goals: intervention >= 0.97x stock, recording >= 0.90x stock, sweep_batch >= 3x sweep_passes).
Without --model a tiny random Qwen3-MoE is built (numbers then measure overheads, not kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What happened in the city last year?",
    "Explain how a mixture of experts routes tokens to experts in each layer.",
    "Let me think about it step by step. The answer is",
    "The weather was fine and people went to work.",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="local model folder (default: a tiny random qwen3_moe)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--stock-mode", choices=("compiled", "eager"), default="compiled")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per condition (best is kept)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    return p.parse_args()


def timed(llm: Any, prompts: list[Any], params: list[Any], repeats: int) -> dict[str, float]:
    best = float("inf")
    tokens = 0
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        best = min(best, elapsed)
    return {"seconds": best, "tokens": tokens, "tokens_per_s": tokens / best}


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from harness.backends.vllm import shutdown_engine
    from harness.mote import Intervention, random_intervention_like
    from harness.vllm_plugin import WORKER_EXTENSION
    from harness.vllm_plugin.protocol import INTERVENTION_KEY, RECORD_KEY, RPC_FETCH, RPC_STATUS

    model = args.model
    if model is None:
        from harness.models.tiny import save_tiny_model

        model = save_tiny_model("qwen3_moe", Path(tempfile.mkdtemp(prefix="mote-bench-")))
    tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + f" ({i})"}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for i in range(args.prompts)
    ]
    prompts = [TokensPrompt(prompt_token_ids=tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]

    def params(extra: dict[str, Any] | None = None) -> Any:
        return SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True, extra_args=extra)

    common = {"model": str(model), "dtype": args.dtype, "max_model_len": args.max_model_len, "seed": 0}
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}

    # 1. stock vLLM, default configuration, MoTE plugin off in every engine process
    os.environ["MOTE_VLLM_PLUGIN"] = "off"
    start = time.perf_counter()
    stock = LLM(**common, enforce_eager=args.stock_mode == "eager")
    timings["stock_load_s"] = time.perf_counter() - start
    timed(stock, prompts, [params()] * len(prompts), 1)  # warm-up
    results["stock"] = timed(stock, prompts, [params()] * len(prompts), args.repeats)
    shutdown_engine(stock)
    del stock
    os.environ.pop("MOTE_VLLM_PLUGIN")

    # 2. the MoTE engine
    start = time.perf_counter()
    llm = LLM(**common, enforce_eager=True, enable_prefix_caching=False, worker_extension_cls=WORKER_EXTENSION)
    timings["mote_load_s"] = time.perf_counter() - start
    status = llm.collective_rpc(RPC_STATUS)[0]
    layers = sorted(int(k) for k in status["moe_layers"])
    n_experts = int(status["moe_layers"][str(layers[0])])
    targeted = Intervention.suppress({layers[0]: [0, 1], layers[-1]: [2]}, mode="mask")
    conditions = [Intervention.none(), targeted] + [
        random_intervention_like(targeted, seed=s, n_experts={lay: n_experts for lay in layers}) for s in range(10)
    ]
    timed(llm, prompts, [params()] * len(prompts), 1)  # warm-up
    results["eager_none"] = timed(llm, prompts, [params()] * len(prompts), args.repeats)
    mote = {INTERVENTION_KEY: targeted.to_json()}
    results["intervention"] = timed(llm, prompts, [params(mote)] * len(prompts), args.repeats)

    best = float("inf")
    for repeat in range(args.repeats):
        keys = [f"bench-{repeat}-{i}" for i in range(len(prompts))]
        start = time.perf_counter()
        outputs = llm.generate(prompts, [params({RECORD_KEY: k}) for k in keys], use_tqdm=False)
        llm.collective_rpc(RPC_FETCH, args=(json.dumps(keys),))
        best = min(best, time.perf_counter() - start)
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    results["recording"] = {"seconds": best, "tokens": tokens, "tokens_per_s": tokens / best}

    sweep_params = [params(None if c.is_none else {INTERVENTION_KEY: c.to_json()}) for c in conditions]
    batch_prompts = [p for _ in conditions for p in prompts]
    batch_params = [sp for sp in sweep_params for _ in prompts]
    results["sweep_batch"] = timed(llm, batch_prompts, batch_params, 1)
    start = time.perf_counter()
    tokens = 0
    for sp in sweep_params:
        outputs = llm.generate(prompts, [sp] * len(prompts), use_tqdm=False)
        tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
    elapsed = time.perf_counter() - start
    results["sweep_passes"] = {"seconds": elapsed, "tokens": tokens, "tokens_per_s": tokens / elapsed}
    shutdown_engine(llm)

    stock_tps = results["stock"]["tokens_per_s"]
    ratios = {
        "intervention_vs_stock": results["intervention"]["tokens_per_s"] / stock_tps,
        "recording_vs_stock": results["recording"]["tokens_per_s"] / stock_tps,
        "eager_none_vs_stock": results["eager_none"]["tokens_per_s"] / stock_tps,
        "intervention_vs_eager_none": results["intervention"]["tokens_per_s"] / results["eager_none"]["tokens_per_s"],
        "recording_vs_eager_none": results["recording"]["tokens_per_s"] / results["eager_none"]["tokens_per_s"],
        "sweep_batch_speedup": results["sweep_passes"]["seconds"] / results["sweep_batch"]["seconds"],
    }
    import torch
    import vllm

    report = {
        "schema_version": 1,
        "when": datetime.now(timezone.utc).isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "versions": {"vllm": vllm.__version__, "torch": torch.__version__, "python": sys.version.split()[0]},
        "model": str(args.model) if args.model else "tiny random qwen3_moe (harness.models.tiny)",
        "settings": {
            "prompts": args.prompts,
            "max_tokens": args.max_tokens,
            "dtype": args.dtype,
            "stock_mode": args.stock_mode,
            "conditions": len(conditions),
            "repeats": args.repeats,
        },
        "timings": timings,
        "results": results,
        "ratios": ratios,
        "goals": {"intervention_vs_stock": 0.97, "recording_vs_stock": 0.90, "sweep_batch_speedup": 3.0},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"vllm_{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
