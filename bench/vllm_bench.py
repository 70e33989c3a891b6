"""Throughput of the MoTE vLLM path against stock vLLM, in one run (not a test).

    python bench/vllm_bench.py [--model DIR] [--sizes 16x64,16x256,64x64,64x256] [--rounds 10]
                               [--sweep-prompts 32,128] [--sweep-max-num-seqs 256,1024]
    python bench/vllm_bench.py --prompts 32 --max-tokens 64 --repeats 4     (one size)
    python bench/vllm_bench.py --table results/bench/vllm_<time>.json       (markdown of a run)
    python bench/vllm_bench.py --table docs/bench/vllm_cpu.json --write-docs (into README, docs/vllm.md)

Two engines stay loaded, built with the same arguments (prefix caching off in both: the MoTE engine
needs it off to record, and the same setting keeps the comparison about the plugin alone;
`--stock-prefix-caching` gives stock vLLM's default instead):
  stock         vLLM with the MoTE plugin off in every engine process;
  mote_none     the MoTE engine (compiled by default), no request carrying an intervention or a record;
  intervention  every request under one mask-mode suppression;
  recording     every request recorded, its per-token record fetched and decoded inside the timed
                window (`mote_fetch_arrays`, as VLLMBackend does);
  counts_host   every request recorded per token and fetched as count maps (`mote_counts`: counted
                on the host, the path before device-side counts);
  counts_device every request counted on the device (`mote_count`) and fetched with `mote_counts`.
Each round runs every size's six conditions back to back (order alternating round by round, so load
from other jobs hits each alike) on prompts no earlier round used (nothing a prefix cache could
reuse). Per size, the within-round ratios to stock are reported as median and range over rounds.

The sweep: 12 conditions (baseline, targeted, 10 random) x N prompts as ONE batch of per-request
interventions against 12 passes of N prompts, per `--sweep-max-num-seqs` (the engine's sequence limit:
one batch of 12 x N requests runs in ceil(12 N / limit) waves), median and range over rounds.

Writes results/bench/vllm_<utc time>.json (schema 2) with the machine, versions, settings, every
timed run, the ratios and the goals (idle >= 0.99x stock, intervention >= 0.97x, recording >= 0.95x,
sweep >= 3x). Without --model a tiny random Qwen3-MoE is built (numbers then measure overheads, not
kernels: the worst case for a per-step cost).
"""

from __future__ import annotations

import argparse
import json
import math
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
CONDITIONS = ["stock", "mote_none", "intervention", "recording", "counts_host", "counts_device"]
RATIOS = {
    "idle": "mote_none",
    "intervention": "intervention",
    "recording": "recording",
    "counts_host": "counts_host",
    "counts_device": "counts_device",
}
KV_CACHE_GIB = 2  # per engine on vLLM-CPU, unless VLLM_CPU_KVCACHE_SPACE is set
GOALS = {"idle": 0.99, "intervention": 0.97, "recording": 0.95, "counts_device": 0.95, "sweep_speedup": 3.0}
SWEEP_CONDITIONS = 12
# an idle engine busy-polls for 1 s after its last message (vllm shm_broadcast busy_loop_s): each
# switch of engine waits that out, so the other engine's poller does not share the cores
ENGINE_SWITCH_S = 1.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="local model folder (default: a tiny random qwen3_moe)")
    p.add_argument("--sizes", default="16x64,16x256,64x64,64x256", help="PROMPTSxTOKENS,... timed each round")
    p.add_argument("--prompts", type=int, help="one size: this many prompts (with --max-tokens; overrides --sizes)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request with --prompts")
    p.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=10, help="timed rounds")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--stock-mode", choices=("compiled", "eager"), default="compiled")
    p.add_argument("--mote-mode", choices=("compiled", "eager"), default="compiled")
    p.add_argument("--stock-prefix-caching", action="store_true", help="stock with vLLM's default (on)")
    p.add_argument("--stock-no-prefix-caching", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument("--sweep-prompts", default="32,128", help="prompts per condition in the sweep ('' = no sweep)")
    p.add_argument("--sweep-max-num-seqs", default="256,1024", help="engine sequence limits the sweep runs under")
    p.add_argument("--sweep-tokens", type=int, default=64)
    p.add_argument("--sweep-rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    p.add_argument("--table", type=Path, help="print the markdown tables of this result JSON and exit")
    p.add_argument("--write-docs", action="store_true", help="with --table: write them into README.md, docs/vllm.md")
    args = p.parse_args(argv)
    if args.prompts is not None:
        args.sizes = f"{args.prompts}x{args.max_tokens}"
    args.size_list = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    args.sweep_prompt_list = [int(s) for s in args.sweep_prompts.split(",") if s.strip()]
    args.sweep_seq_list = [int(s) for s in args.sweep_max_num_seqs.split(",") if s.strip()]
    return args


def parse_size(text: str) -> tuple[int, int]:
    prompts, _, tokens = text.strip().partition("x")
    if not (prompts.isdigit() and tokens.isdigit()):
        raise SystemExit(f"--sizes: {text!r} is not PROMPTSxTOKENS (e.g. 16x64)")
    return int(prompts), int(tokens)


def spread(values: list[float]) -> dict[str, Any]:
    """Median and range of per-round values."""
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "rounds": len(values),
    }


def size_summary(
    prompts: int,
    max_tokens: int,
    runs: dict[str, list[float]],
    tokens: dict[str, int],
    plugin: dict[str, list[dict[str, float]]] | None = None,
) -> dict[str, Any]:
    """Per-round throughput ratios to stock (same prompts count and tokens, so a ratio of seconds), and
    the plugin's own share of each MoTE run (seconds it spent / the run's seconds)."""
    ratios = {
        name: spread([s / c for s, c in zip(runs["stock"], runs[cond], strict=True)]) for name, cond in RATIOS.items()
    }
    # recording on vs off on the same engine (issue 14's measure): counted on the device vs idle
    ratios["counts_device_vs_idle"] = spread(
        [i / c for i, c in zip(runs["mote_none"], runs["counts_device"], strict=True)]
    )
    shares: dict[str, Any] = {}
    per_step: dict[str, Any] = {}
    if plugin is not None:
        for name, cond in RATIOS.items():
            own = [p["begin_s"] + p["end_s"] + p["hooks_s"] + p["fetch_s"] for p in plugin[cond]]
            shares[name] = spread([o / total for o, total in zip(own, runs[cond], strict=True)])
            # median microseconds per step of each part (fetch: per run, in ms)
            per_step[name] = {
                **{
                    part: round(statistics.median(1e6 * p[part] / max(p["steps"], 1) for p in plugin[cond]), 1)
                    for part in ("begin_s", "end_s", "hooks_s")
                },
                "fetch_ms": round(statistics.median(1e3 * p["fetch_s"] for p in plugin[cond]), 2),
                "steps": statistics.median(p["steps"] for p in plugin[cond]),
            }
    return {
        "prompts": prompts,
        "max_tokens": max_tokens,
        "tokens": tokens,
        "median_tokens_per_s": {c: round(tokens[c] / statistics.median(runs[c]), 1) for c in CONDITIONS},
        "runs_s": {c: [round(t, 4) for t in runs[c]] for c in CONDITIONS},
        "ratios_vs_stock": ratios,
        "plugin_share": shares,
        "plugin_us_per_step": per_step,
        "goals_met": {name: ratios[name]["median"] >= goal for name, goal in GOALS.items() if name in ratios},
        # the same goals read from the plugin's own share (1 - share), which this machine's noise spares
        "goals_met_by_share": {
            name: 1 - shares[name]["median"] >= goal for name, goal in GOALS.items() if name in shares
        },
    }


class Bench:
    """The two engines, the prompts and the timed runs."""

    def __init__(self, args: argparse.Namespace) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # vLLM-CPU otherwise gives each engine's KV cache most of the machine's memory, and the bench holds
        # two or three engines at once: the second one's worker is then killed for memory
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(KV_CACHE_GIB))
        from transformers import AutoTokenizer

        self.args = args
        model = args.model
        if model is None:
            from harness.models.tiny import save_tiny_model

            model = save_tiny_model("qwen3_moe", Path(tempfile.mkdtemp(prefix="mote-bench-")))
        self.model = model
        self.tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
        self.common = {"model": str(model), "dtype": args.dtype, "max_model_len": args.max_model_len, "seed": 0}
        self.timings: dict[str, float] = {}
        self.current: str | None = None

    def prompts(self, n: int, tag: str) -> list[Any]:
        """n chat prompts that start with `tag` (a round's prompts share no cached prefix with another's)."""
        from vllm.inputs import TokensPrompt

        out = []
        for i in range(n):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": f"[{tag}.{i}] {PROMPTS[i % len(PROMPTS)]}"}],
                add_generation_prompt=True,
                tokenize=False,
            )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(TokensPrompt(prompt_token_ids=ids))
        return out

    def params(self, max_tokens: int, extra: dict[str, Any] | None = None) -> Any:
        from vllm import SamplingParams

        return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, extra_args=extra)

    def load(self, name: str, plugin: bool, **engine_args: Any) -> Any:
        from vllm import LLM

        from harness.vllm_plugin import WORKER_EXTENSION

        if not plugin:
            os.environ["MOTE_VLLM_PLUGIN"] = "off"  # read in every engine process at plugin registration
        else:
            os.environ["MOTE_VLLM_TIMING"] = "1"  # the worker times its own steps (harness/vllm_plugin/timing.py)
        start = time.perf_counter()
        try:
            extension = {"worker_extension_cls": WORKER_EXTENSION} if plugin else {}
            llm = LLM(**self.common, **extension, **engine_args)
        finally:
            os.environ.pop("MOTE_VLLM_PLUGIN", None)
        self.timings[f"{name}_load_s"] = round(time.perf_counter() - start, 2)
        return llm

    def switch_to(self, engine: str) -> None:
        if engine != self.current:
            time.sleep(ENGINE_SWITCH_S)
            self.current = engine


def mote_engine_args(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    from harness.vllm_plugin.compiled import safe_compilation_config

    engine: dict[str, Any] = {"enforce_eager": args.mote_mode == "eager", "enable_prefix_caching": False}
    if args.mote_mode == "compiled" and safe_compilation_config():
        engine["compilation_config"] = safe_compilation_config()
    return {**engine, **extra}


def engine_layout(llm: Any) -> tuple[list[int], int, bool]:
    """(MoE layers, experts per layer, compiled) of a MoTE engine; exits if it refuses interventions."""
    from harness.vllm_plugin.protocol import RPC_STATUS
    from harness.vllm_plugin.ranks import merge_status

    status = merge_status(llm.collective_rpc(RPC_STATUS))
    if status["hook_problem"] is not None:
        raise SystemExit(f"the MoTE engine refuses interventions: {status['hook_problem']}")
    layers = sorted(int(k) for k in status["moe_layers"])
    return layers, int(status["moe_layers"][str(layers[0])]), bool(status["compiled"])


def conditions_for(layers: list[int], n_experts: int) -> list[Any]:
    """Baseline, a targeted mask-mode suppression, and 10 random ones like it."""
    from harness.mote import Intervention, random_intervention_like

    targeted = Intervention.suppress({layers[0]: [0, 1], layers[-1]: [2]}, mode="mask")
    sizes = {layer: n_experts for layer in layers}
    randoms = [random_intervention_like(targeted, seed=s, n_experts=sizes) for s in range(SWEEP_CONDITIONS - 2)]
    return [Intervention.none(), targeted, *randoms]


def worker_timing(llm: Any) -> dict[str, float]:
    """Rank 0's cumulative step timing (harness/vllm_plugin/timing.py; MOTE_VLLM_TIMING=1)."""
    from harness.vllm_plugin.protocol import RPC_STATUS

    timing = llm.collective_rpc(RPC_STATUS)[0].get("timing")
    if timing is None:
        raise SystemExit("the MoTE engine's worker does not time its steps (MOTE_VLLM_TIMING=1 not seen)")
    return {key: float(value) for key, value in timing.items()}


def time_sizes(bench: Bench, stock: Any, llm: Any, targeted: Any) -> list[dict[str, Any]]:
    """Every size's six conditions, round after round; per size the ratios over rounds, and for the MoTE
    conditions the plugin's own share of each run (its step work, and the fetch RPC)."""
    from harness.vllm_plugin.protocol import (
        COUNT_KEY,
        INTERVENTION_KEY,
        RECORD_KEY,
        RPC_COUNTS,
        RPC_FETCH_ARRAYS,
        WorkerRecord,
    )

    args = bench.args
    mote = {INTERVENTION_KEY: targeted.to_json()}

    def run(name: str, prompts: list[Any], max_tokens: int, tag: str) -> tuple[float, int, dict[str, float]]:
        """(seconds, generated tokens, the plugin's seconds in it by part)."""
        n = len(prompts)
        keys = [f"bench-{tag}-{i}" for i in range(n)]
        recorded = name in ("recording", "counts_host", "counts_device")
        if recorded:
            batch = [bench.params(max_tokens, {COUNT_KEY if name == "counts_device" else RECORD_KEY: k}) for k in keys]
        else:
            batch = [bench.params(max_tokens, mote if name == "intervention" else None)] * n
        engine = stock if name == "stock" else llm
        bench.switch_to("stock" if name == "stock" else "mote")
        before = worker_timing(llm) if engine is llm else {}
        start = time.perf_counter()
        outputs = engine.generate(prompts, batch, use_tqdm=False)
        fetch_start = time.perf_counter()
        if recorded:
            # the fetch VLLMBackend makes, the records decoded as it decodes them
            rpc = RPC_FETCH_ARRAYS if name == "recording" else RPC_COUNTS
            fetched = llm.collective_rpc(rpc, args=(json.dumps(keys),))[0]
            if any(fetched.get(k) is None for k in keys):
                raise SystemExit(f"{name}: no record / counts came back for some requests")
            if name == "recording":
                [WorkerRecord.decode(fetched[k]) for k in keys]
        end = time.perf_counter()
        parts = {"begin_s": 0.0, "end_s": 0.0, "hooks_s": 0.0, "fetch_s": end - fetch_start, "steps": 0.0}
        if engine is llm:
            after = worker_timing(llm)
            parts |= {k: after[k] - before[k] for k in ("begin_s", "end_s", "hooks_s", "steps")}
        return end - start, sum(len(o.outputs[0].token_ids) for o in outputs), parts

    sizes = args.size_list
    runs: dict[tuple[int, int], dict[str, list[float]]] = {size: {c: [] for c in CONDITIONS} for size in sizes}
    plugin: dict[tuple[int, int], dict[str, list[dict[str, float]]]] = {
        size: {c: [] for c in CONDITIONS} for size in sizes
    }
    tokens: dict[tuple[int, int], dict[str, int]] = {size: {} for size in sizes}
    for round_ in range(-1, args.rounds):  # round -1: warm-up, not kept
        order = CONDITIONS if round_ % 2 == 0 else CONDITIONS[::-1]
        for size in sizes:
            for name in order:
                tag = f"{round_}-{size[0]}x{size[1]}-{name}"
                elapsed, count, own = run(name, bench.prompts(size[0], tag), size[1], tag)
                if round_ >= 0:
                    runs[size][name].append(elapsed)
                    plugin[size][name].append(own)
                    tokens[size][name] = count
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    return [size_summary(n, t, runs[(n, t)], tokens[(n, t)], plugin[(n, t)]) for n, t in sizes]


def time_sweep(bench: Bench, llm: Any, conditions: list[Any], max_num_seqs: int) -> list[dict[str, Any]]:
    """One batch of 12 conditions x N prompts against 12 passes, per N, over rounds."""
    from harness.vllm_plugin.protocol import INTERVENTION_KEY

    args = bench.args
    out = []
    for n in args.sweep_prompt_list:
        per_condition = [
            bench.params(args.sweep_tokens, None if c.is_none else {INTERVENTION_KEY: c.to_json()}) for c in conditions
        ]
        batch_s: list[float] = []
        passes_s: list[float] = []
        for round_ in range(-1, args.sweep_rounds):  # round -1: warm-up, not kept
            prompts = bench.prompts(n, f"sweep-{max_num_seqs}-{round_}")
            batch = ([p for _ in conditions for p in prompts], [sp for sp in per_condition for _ in prompts])
            if round_ % 2 == 0:  # alternate which goes first
                t_batch, t_passes = timed_call(llm, [batch]), timed_call(llm, passes(prompts, per_condition))
            else:
                t_passes, t_batch = timed_call(llm, passes(prompts, per_condition)), timed_call(llm, [batch])
            if round_ >= 0:
                batch_s.append(t_batch)
                passes_s.append(t_passes)
        requests = len(conditions) * n
        out.append(
            {
                "prompts": n,
                "conditions": len(conditions),
                "requests": requests,
                "max_num_seqs": max_num_seqs,
                "waves": math.ceil(requests / max_num_seqs),
                "batch_s": [round(t, 3) for t in batch_s],
                "passes_s": [round(t, 3) for t in passes_s],
                "speedup": spread([p / b for p, b in zip(passes_s, batch_s, strict=True)]),
            }
        )
        print(f"sweep {n} prompts, max_num_seqs {max_num_seqs} done", file=sys.stderr)
    return out


def passes(prompts: list[Any], per_condition: list[Any]) -> list[tuple[list[Any], list[Any]]]:
    return [(prompts, [sp] * len(prompts)) for sp in per_condition]


def timed_call(llm: Any, calls: list[tuple[list[Any], list[Any]]]) -> float:
    """Seconds to run `llm.generate` on each (prompts, params) in turn."""
    start = time.perf_counter()
    for prompts, params in calls:
        llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start


def machine() -> dict[str, Any]:
    import torch
    import vllm

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {"vllm": vllm.__version__, "torch": torch.__version__, "python": sys.version.split()[0]},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table is not None:
        table = markdown(json.loads(args.table.read_text()))
        if args.write_docs:
            for doc in DOCS:
                doc.write_text(with_block(doc.read_text(), table, doc))
        print(table)
        return 0
    from harness.backends.vllm import shutdown_engine

    bench = Bench(args)
    # stock: the same engine arguments as the MoTE engine's, plugin off (vLLM's own compilation default)
    stock_args = {"enforce_eager": args.stock_mode == "eager", "enable_prefix_caching": bool(args.stock_prefix_caching)}
    stock = bench.load("stock", plugin=False, **stock_args)
    llm = bench.load("mote", plugin=True, **mote_engine_args(args))
    layers, n_experts, compiled = engine_layout(llm)
    conditions = conditions_for(layers, n_experts)
    sizes = time_sizes(bench, stock, llm, conditions[1])
    shutdown_engine(stock)
    sweeps = []
    default_seqs = int(llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)
    for max_num_seqs in args.sweep_seq_list if args.sweep_prompt_list else []:
        if max_num_seqs == default_seqs:
            sweeps += time_sweep(bench, llm, conditions, max_num_seqs)
            continue
        shutdown_engine(llm)
        llm = bench.load(f"mote_seqs{max_num_seqs}", plugin=True, **mote_engine_args(args, max_num_seqs=max_num_seqs))
        sweeps += time_sweep(bench, llm, conditions, max_num_seqs)
    shutdown_engine(llm)
    report = {
        "schema_version": 2,
        "when": datetime.now(timezone.utc).isoformat(),
        "machine": machine(),
        "model": str(args.model) if args.model else "tiny random qwen3_moe (harness.models.tiny)",
        "settings": {
            "dtype": args.dtype,
            "stock_mode": args.stock_mode,
            "stock_prefix_caching": bool(args.stock_prefix_caching),
            "mote_mode": args.mote_mode,
            "mote_compiled": compiled,
            "rounds": args.rounds,
            "default_max_num_seqs": default_seqs,
            "vllm_cpu_kvcache_space_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
            "sweep_tokens": args.sweep_tokens,
            "sweep_rounds": args.sweep_rounds,
        },
        "timings": bench.timings,
        "sizes": sizes,
        "sweep": sweeps,
        "goals": GOALS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"vllm_{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"wrote {path}")
    return 0


DOCS = (REPO / "README.md", REPO / "docs" / "vllm.md")
BLOCK_START, BLOCK_END = "<!-- vllm-bench:start", "<!-- vllm-bench:end -->"


def with_block(text: str, table: str, where: Path) -> str:
    """`text` with the lines between its vllm-bench markers replaced by `table`."""
    start = text.find(BLOCK_START)
    end = text.find(BLOCK_END)
    if start < 0 or end < start:
        raise SystemExit(f"{where}: no '{BLOCK_START} ... -->' / '{BLOCK_END}' markers")
    head = text.index("\n", start) + 1
    return text[:head] + table + "\n" + text[end:]


def block_of(text: str) -> str:
    """The table between the vllm-bench markers of `text`."""
    start = text.find(BLOCK_START)
    return text[text.index("\n", start) + 1 : text.find(BLOCK_END)].rstrip("\n")


def _cell(ratio: dict[str, Any], suffix: str = "x") -> str:
    return f"{ratio['median']:.2f}{suffix} ({ratio['min']:.2f}-{ratio['max']:.2f})"


def _percent(share: dict[str, Any]) -> str:
    return f"{100 * share['median']:.1f}% ({100 * share['min']:.1f}-{100 * share['max']:.1f})"


def markdown(report: dict[str, Any]) -> str:
    """The README / docs tables of one run: medians over rounds with their range."""
    lines = [
        "| prompts x tokens | idle plugin | intervention | recording (per-token) | counts, host | counts, device "
        "| counts, device / idle | stock tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in report["sizes"]:
        r = size["ratios_vs_stock"]
        cells = [_cell(r[name]) for name in (*RATIOS, "counts_device_vs_idle")]
        lines.append(
            f"| {size['prompts']} x {size['max_tokens']} | {' | '.join(cells)} | "
            f"{size['median_tokens_per_s']['stock']:.0f} |"
        )
    if any(size.get("plugin_share") for size in report["sizes"]):
        lines += [
            "",
            "| prompts x tokens | plugin's own share of a run: idle | intervention | recording (per-token) "
            "| counts, host | counts, device |",
            "|---|---|---|---|---|---|",
        ]
        for size in report["sizes"]:
            share = size["plugin_share"]
            cells = [_percent(share[name]) for name in RATIOS]
            lines.append(f"| {size['prompts']} x {size['max_tokens']} | {' | '.join(cells)} |")
    if report.get("sweep"):
        lines += [
            "",
            "| sweep prompts | requests | max_num_seqs | waves | one batch vs 12 passes |",
            "|---|---|---|---|---|",
        ]
        for sweep in report["sweep"]:
            lines.append(
                f"| {sweep['prompts']} | {sweep['requests']} | {sweep['max_num_seqs']} | {sweep['waves']} | "
                f"{_cell(sweep['speedup'])} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
