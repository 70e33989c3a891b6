"""Assembly of Experts against plain file copies of the same bytes, in one run (not a test).

    python bench/assembly_bench.py [--gb 4] [--work DIR] [--keep]
    python bench/assembly_bench.py --table docs/bench/assembly_cpu.json [--vllm docs/bench/assembly_vllm_cpu.json]

Writes two synthetic parents of --gb GB each (DeepSeek-V3 tensor names, bf16, 1 GB shards, random
values; the embedding alone is 0.5 GB, larger than a chunk), then times, in the same run:
  copy          the I/O an assembly cannot avoid: parent A's shards copied to a new folder and
                parent B's read once (both parents read, one child written);
  chimera       `harness assemble`: routed experts one-hot from B (R1T's recipe), the rest from A;
  mix           `harness assemble`: every group at lambda 0.5 (every tensor read from both and merged).
Each assembly runs in its own process; its peak RSS is that process's VmHWM, and the JSON also gives
the build alone (the seconds the command reports: no Python start, plan, torch import or exit). The
page cache is dropped before each phase where the machine allows it (root; the JSON says whether it
was), and each timed phase follows --quiet seconds of nothing (default 20) and an untimed copy
(`settle`: what ran before a phase changed its time 3x).
Each of --rounds rounds (default 5) runs the three phases in turn; ratio = copy seconds / assembly
seconds within a round (1.0: the assembly is as fast as copying), median and range over rounds.
Goals: median ratio >= 0.8, peak RSS < 2 GiB. Writes results/bench/assembly_<utc time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARD_BYTES = 1 << 30
EXPERT_SHAPE = (2048, 1024)  # bf16: 4 MiB per expert matrix


def synthetic_parent(folder: Path, gb: float, seed: int) -> int:
    """A DeepSeek-V3-named bf16 checkpoint of about `gb` GB in 1 GB shards; returns its bytes."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    hidden = EXPERT_SHAPE[1]
    config = {"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "hidden_size": hidden}
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {"model.embed_tokens.weight": (131072, 2048), "lm_head.weight": (65536, 2048)}
    target = int(gb * 1e9)
    total = sum(2 * r * c for r, c in tensors.values())
    layer = 0
    while total < target:
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = (hidden,)
        tensors[f"model.layers.{layer}.self_attn.o_proj.weight"] = (hidden, hidden)
        tensors[f"model.layers.{layer}.mlp.gate.weight"] = (64, hidden)
        tensors[f"model.layers.{layer}.mlp.shared_experts.up_proj.weight"] = EXPERT_SHAPE
        for expert in range(64):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                tensors[f"model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"] = EXPERT_SHAPE
        total = sum(2 * _numel(s) for s in tensors.values())
        layer += 1
    shard: dict = {}
    size, index, weight_map = 0, 0, {}
    names = list(tensors)
    for position, name in enumerate(names):
        shard[name] = torch.randn(tensors[name], generator=generator, dtype=torch.float32).to(torch.bfloat16)
        size += shard[name].numel() * 2
        if size >= SHARD_BYTES or position == len(names) - 1:
            index += 1
            file = f"model-{index:05d}.safetensors"
            save_file(shard, str(folder / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
            shard, size = {}, 0
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def copy_phase(a: Path, b: Path, out: Path) -> float:
    started = time.perf_counter()
    out.mkdir()
    for shard in sorted(a.glob("*.safetensors")):
        shutil.copyfile(shard, out / shard.name)
    buffer = bytearray(64 << 20)
    for shard in sorted(b.glob("*.safetensors")):
        with shard.open("rb") as handle:
            while handle.readinto(buffer):
                pass
    os.sync()
    return time.perf_counter() - started


def settle(a: Path, b: Path, work: Path, quiet: float = 0.0) -> None:
    """`quiet` seconds of nothing, an untimed copy, then the page cache dropped: every timed phase
    follows the same work. On a virtual disk, what ran before moved a phase's time 3x: a copy that
    followed an assembly took 10.7-11.4 s, one that followed a copy 3.0-4.1 s (2.4 GB parents). The
    untimed copy did not absorb all of it: with no quiet time, a mixed build's own time was 4.5-4.7 s
    after a mixed build and 6.1-6.4 s after a Chimera build (4 GB parents, the deleted child's discards
    done in the guest within 1 s), and 4.5-4.6 s after a Chimera build and 20 s of quiet."""
    time.sleep(quiet)
    drop_caches()
    copy_phase(a, b, work / "settle")
    shutil.rmtree(work / "settle")
    drop_caches()


BUILT = re.compile(r"^wrote .* in ([0-9.]+) s", re.MULTILINE)  # harness assemble's last line


def assemble_phase(recipe: Path, out: Path) -> tuple[float, int, float]:
    """(seconds, peak RSS bytes, the build's own seconds) of `harness assemble` in its own process. The
    peak is the process's VmHWM, polled: ru_maxrss would count this process's memory at the fork. The
    build's seconds are what the command reports (0.1 s steps): its time less the start (Python, the
    plan, torch's import) and the exit."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "harness", "assemble", str(recipe), "--out", str(out), "--no-progress"]
    with tempfile.TemporaryFile("w+") as stdout:
        process = subprocess.Popen(command, cwd=REPO, stdout=stdout)
        peak = 0
        while process.poll() is None:
            peak = max(peak, _hwm(process.pid))
            time.sleep(0.05)
        if process.returncode:
            raise SystemExit(f"harness assemble exited {process.returncode}")
        os.sync()
        seconds = time.perf_counter() - started
        stdout.seek(0)
        built = BUILT.search(stdout.read())
    if built is None:
        raise SystemExit("harness assemble did not report its build time (its last line changed?)")
    return seconds, peak, float(built.group(1))


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:  # the process ended between poll() and the read
        pass
    return 0


def _quiet(report: dict) -> str:
    quiet = report.get("quiet_seconds", 0)
    return f"{quiet:g} s of quiet before that copy, " if quiet else ""


def table(report: dict, vllm: dict | None = None) -> str:
    """The README's figures of one run (and of one bench/assembly_vllm_load.py run)."""
    gb = sum(report["parent_bytes"]) / 2 / 1e9
    lines = [
        f"Speed, from one run of `python bench/assembly_bench.py` ({report['machine']['cpus']} cores, two synthetic "
        f"bf16 parents of {gb:.2f} GB, page cache dropped before each phase: {report['page_cache_dropped']}, "
        f"{'each phase after an untimed copy, ' if report.get('settled') else ''}"
        f"{_quiet(report)}"
        f"{report['rounds']} rounds): copying the same bytes (parent A copied, parent B read) took "
        f"{min(report['copy_seconds'])}-{max(report['copy_seconds'])} s. Throughput is copy seconds over assembly "
        "seconds within a round, median (min-max); the build alone is the time the command reports, without "
        "its start (Python, the plan, torch's import) and exit.",
        "",
        "| recipe | seconds | throughput vs copy (goal >= 0.8x) | the build alone vs copy | peak RSS (goal < 2 GiB) |",
        "|---|---|---|---|---|",
    ]
    names = {"chimera": "chimera (routed experts one-hot from B)", "mix": "mix (every group at 0.5)"}
    for name, phase in report["assembly"].items():
        rss = phase["peak_rss_bytes"] / 2**20
        seconds = phase["seconds"]
        lines.append(
            f"| {names.get(name, name)} | {min(seconds)}-{max(seconds)} | {_ratio(phase['ratio_to_copy'])} | "
            f"{_ratio(phase.get('build_ratio_to_copy'))} | {rss:.0f} MiB |"
        )
    if vllm is not None:
        median = vllm["median_seconds"]
        lines += [
            "",
            f"vLLM-CPU start-up, `python bench/assembly_vllm_load.py` (Qwen3-MoE parents of "
            f"{vllm['parent_bytes'] / 1e9:.2f} GB, median of {len(vllm['runs']['parent'])} fresh processes each): "
            f"one parent {median['parent']:.1f} s, the child assembled at load {median['child']:.1f} s, "
            f"{vllm['ratio_child_to_parent']}x (goal <= 2.5x); weight loading alone "
            f"{vllm['median_weight_loading_seconds']['parent']:.1f} s against "
            f"{vllm['median_weight_loading_seconds']['child']:.1f} s ({vllm['weight_loading_ratio']}x).",
        ]
    return "\n".join(lines)


def _ratio(spread: dict[str, float] | None) -> str:
    return "not measured" if spread is None else f"{spread['median']}x ({spread['min']}-{spread['max']})"


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=4.0, help="size of each parent")
    parser.add_argument("--table", type=Path, help="print the README figures of a result JSON instead")
    parser.add_argument("--vllm", type=Path, help="with --table: a bench/assembly_vllm_load.py result JSON")
    parser.add_argument("--work", type=Path, default=REPO / "results" / "bench" / "assembly-work")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of copy, chimera, mix")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic parents")
    parser.add_argument(
        "--quiet", type=float, default=20.0, help="seconds of nothing before each phase's untimed copy (default 20)"
    )
    args = parser.parse_args()
    if args.table is not None:
        vllm = json.loads(args.vllm.read_text()) if args.vllm else None
        print(table(json.loads(args.table.read_text()), vllm))
        return 0
    shutil.rmtree(args.work, ignore_errors=True)
    a, b = args.work / "a", args.work / "b"
    sizes = [synthetic_parent(a, args.gb, 0), synthetic_parent(b, args.gb, 1)]
    recipes = {
        "chimera": "groups: {routed_experts: {b: 1.0}}\n",
        "mix": "groups: {all: {b: 0.5}}\n",
    }
    for name, groups in recipes.items():
        (args.work / f"{name}.yaml").write_text(f"parents: {{a: {a}, b: {b}}}\n{groups}")
    cached = drop_caches()
    copies: list[float] = []
    runs: dict[str, list[tuple[float, int, float]]] = {name: [] for name in recipes}
    for _ in range(args.rounds):  # phases alternate within a round: load from elsewhere hits each alike
        settle(a, b, args.work, args.quiet)
        copies.append(copy_phase(a, b, args.work / "copy"))
        shutil.rmtree(args.work / "copy")
        for name in recipes:
            settle(a, b, args.work, args.quiet)
            runs[name].append(assemble_phase(args.work / f"{name}.yaml", args.work / name))
            shutil.rmtree(args.work / name)
    phases = {}
    for name, timed in runs.items():
        ratios = [c / t for c, (t, _, _) in zip(copies, timed, strict=True)]  # within a round
        build_ratios = [c / b for c, (_, _, b) in zip(copies, timed, strict=True)]
        phases[name] = {
            "seconds": [round(t, 2) for t, _, _ in timed],
            "ratio_to_copy": _spread(ratios),
            "peak_rss_bytes": max(peak for _, peak, _ in timed),
            # the build alone, as the command reports it (no Python start, plan, torch import or exit)
            "build_seconds": [b for _, _, b in timed],
            "build_ratio_to_copy": _spread(build_ratios),
        }
        phases[name]["meets_goals"] = phases[name]["ratio_to_copy"]["median"] >= 0.8 and phases[name][
            "peak_rss_bytes"
        ] < (2 << 30)
    report = {
        "schema": 1,
        "when": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "parent_bytes": sizes,
        "page_cache_dropped": cached,
        "settled": True,  # each timed phase followed an untimed copy
        "quiet_seconds": args.quiet,  # and, before that copy, this long with nothing running
        "rounds": args.rounds,
        "copy_seconds": [round(c, 2) for c in copies],
        "copy_bytes_moved": sizes[0] * 2 + sizes[1],
        "assembly": phases,
        "goals": {"ratio_to_copy": ">= 0.8", "peak_rss": "< 2 GiB"},
    }
    out = REPO / "results" / "bench" / f"assembly_{report['when']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
