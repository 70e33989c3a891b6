"""Throughput of the MoTE vLLM path against stock vLLM (not a test).

    python bench/vllm_bench.py [--model DIR] [--prompts 16] [--max-tokens 64] [--stock-mode compiled]
                               [--mote-mode compiled]

One run, same model and prompts, generated tokens/s of:
  stock         vLLM in its default configuration (compiled; CUDA graphs on GPU), MoTE plugin off;
  mote_none     the MoTE engine (compiled by default: torch.compile with the MoE layer in vLLM's
                opaque moe_forward op, on GPU piecewise CUDA graphs split at that op; --mote-mode
                eager for enforce_eager), no intervention;
  intervention  every request under one suppress/mask intervention;
  recording     every request recorded (per-token top-k fetched back);
  sweep_batch   12 conditions (baseline + targeted + 10 random) x prompts as ONE batch of
                per-request interventions;
  sweep_passes  the same 12 conditions as 12 passes.
Both engines stay loaded and the timed runs of stock / mote_none / intervention / recording
alternate, round after round (--repeats), so load from other jobs on a shared machine hits each
alike; the best run of each is compared (medians are reported too).
Writes results/bench/vllm_<utc time>.json with the machine, versions and the ratios
(goals: intervention >= 0.97x stock, recording >= 0.90x stock, sweep_batch >= 3x sweep_passes).
Without --model a tiny random Qwen3-MoE is built (numbers then measure overheads, not kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
    p.add_argument("--mote-mode", choices=("compiled", "eager"), default="compiled")
    p.add_argument(
        "--stock-no-prefix-caching",
        action="store_true",
        help="stock without prefix caching, like the MoTE engine (default: stock's own default, on)",
    )
    p.add_argument("--repeats", type=int, default=10, help="timed rounds over all conditions (best is kept)")
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


PAIRS = [
    ("intervention", "stock"),
    ("recording", "stock"),
    ("mote_none", "stock"),
    ("intervention", "mote_none"),
    ("recording", "mote_none"),
]


def paired(base: list[float], other: list[float]) -> float:
    """Median over rounds of base seconds / other seconds (same token count): throughput ratio."""
    return statistics.median(b / o for b, o in zip(base, other, strict=True))


def summary(times: list[float], tokens: int) -> dict[str, Any]:
    """Best (the run least disturbed by other jobs) and median of the timed runs."""
    best = min(times)
    median = statistics.median(times)
    return {
        "seconds": best,
        "tokens": tokens,
        "tokens_per_s": tokens / best,
        "median_tokens_per_s": tokens / median,
        "runs_s": [round(t, 4) for t in times],
    }


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from harness.backends.vllm import shutdown_engine
    from harness.mote import Intervention, random_intervention_like
    from harness.vllm_plugin import WORKER_EXTENSION
    from harness.vllm_plugin.compiled import safe_compilation_config
    from harness.vllm_plugin.protocol import INTERVENTION_KEY, RECORD_KEY, RPC_FETCH, RPC_STATUS
    from harness.vllm_plugin.ranks import merge_status

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

    # both engines stay loaded and the timed runs alternate between them, so a change in the load of
    # a shared machine hits every condition alike. An idle engine busy-polls for 1 s after its last
    # message (vllm shm_broadcast busy_loop_s), so each switch of engine waits that out first.
    # 1. stock vLLM, default configuration, MoTE plugin off in every engine process
    os.environ["MOTE_VLLM_PLUGIN"] = "off"
    start = time.perf_counter()
    stock_args: dict[str, Any] = {"enforce_eager": args.stock_mode == "eager"}
    if args.stock_no_prefix_caching:
        stock_args["enable_prefix_caching"] = False
    stock = LLM(**common, **stock_args)
    timings["stock_load_s"] = time.perf_counter() - start
    os.environ.pop("MOTE_VLLM_PLUGIN")

    # 2. the MoTE engine
    start = time.perf_counter()
    mote_args: dict[str, Any] = {"enforce_eager": args.mote_mode == "eager"}
    if args.mote_mode == "compiled" and safe_compilation_config():
        mote_args["compilation_config"] = safe_compilation_config()
    llm = LLM(**common, **mote_args, enable_prefix_caching=False, worker_extension_cls=WORKER_EXTENSION)
    timings["mote_load_s"] = time.perf_counter() - start
    status = merge_status(llm.collective_rpc(RPC_STATUS))
    if status["hook_problem"] is not None:
        raise SystemExit(f"the MoTE engine refuses interventions: {status['hook_problem']}")
    layers = sorted(int(k) for k in status["moe_layers"])
    n_experts = int(status["moe_layers"][str(layers[0])])
    targeted = Intervention.suppress({layers[0]: [0, 1], layers[-1]: [2]}, mode="mask")
    conditions = [Intervention.none(), targeted] + [
        random_intervention_like(targeted, seed=s, n_experts={lay: n_experts for lay in layers}) for s in range(10)
    ]
    mote = {INTERVENTION_KEY: targeted.to_json()}

    def run(name: str, repeat: int) -> tuple[float, int]:
        engine = stock if name == "stock" else llm
        keys = [f"bench-{repeat}-{i}" for i in range(len(prompts))]
        if name == "recording":
            batch = [params({RECORD_KEY: k}) for k in keys]
        elif name == "intervention":
            batch = [params(mote)] * len(prompts)
        else:
            batch = [params()] * len(prompts)
        start = time.perf_counter()
        outputs = engine.generate(prompts, batch, use_tqdm=False)
        if name == "recording":
            fetched = llm.collective_rpc(RPC_FETCH, args=(json.dumps(keys),))[0]
            assert all(fetched[k] is not None for k in keys), "recording returned no record"
        elapsed = time.perf_counter() - start
        return elapsed, sum(len(o.outputs[0].token_ids) for o in outputs)

    names = ["stock", "mote_none", "intervention", "recording"]
    runs: dict[str, list[float]] = {name: [] for name in names}
    tokens: dict[str, int] = {}
    current = None
    for repeat in range(-1, args.repeats):  # repeat -1: warm-up
        for name in names if repeat % 2 == 0 else names[::-1]:  # alternate the order: no condition always first
            engine = "stock" if name == "stock" else "mote"
            if engine != current:
                time.sleep(1.2)
                current = engine
            elapsed, tokens[name] = run(name, repeat)
            if repeat >= 0:
                runs[name].append(elapsed)
    for name in names:
        results[name] = summary(runs[name], tokens[name])
    shutdown_engine(stock)
    time.sleep(1.2)

    sweep_params = [params(None if c.is_none else {INTERVENTION_KEY: c.to_json()}) for c in conditions]
    batch_prompts = [p for _ in conditions for p in prompts]
    batch_params = [sp for sp in sweep_params for _ in prompts]
    results["sweep_batch"] = timed(llm, batch_prompts, batch_params, 1)
    start = time.perf_counter()
    sweep_tokens = 0
    for sp in sweep_params:
        outputs = llm.generate(prompts, [sp] * len(prompts), use_tqdm=False)
        sweep_tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
    elapsed = time.perf_counter() - start
    results["sweep_passes"] = {"seconds": elapsed, "tokens": sweep_tokens, "tokens_per_s": sweep_tokens / elapsed}
    shutdown_engine(llm)

    stock_tps = results["stock"]["tokens_per_s"]
    ratios = {
        "intervention_vs_stock": results["intervention"]["tokens_per_s"] / stock_tps,
        "recording_vs_stock": results["recording"]["tokens_per_s"] / stock_tps,
        "mote_none_vs_stock": results["mote_none"]["tokens_per_s"] / stock_tps,
        "intervention_vs_mote_none": results["intervention"]["tokens_per_s"] / results["mote_none"]["tokens_per_s"],
        "recording_vs_mote_none": results["recording"]["tokens_per_s"] / results["mote_none"]["tokens_per_s"],
        "sweep_batch_speedup": results["sweep_passes"]["seconds"] / results["sweep_batch"]["seconds"],
        # the same ratios from median runs (less optimistic when the machine is shared)
        "median_intervention_vs_stock": results["intervention"]["median_tokens_per_s"]
        / results["stock"]["median_tokens_per_s"],
        "median_recording_vs_stock": results["recording"]["median_tokens_per_s"]
        / results["stock"]["median_tokens_per_s"],
        # median over rounds of the within-round ratio (each round runs every condition back to back)
        **{f"paired_{name}_vs_{base}": paired(runs[base], runs[name]) for name, base in PAIRS},
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
            "stock_prefix_caching": not args.stock_no_prefix_caching,
            "mote_mode": args.mote_mode,
            "mote_compiled": bool(status["compiled"]),
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
