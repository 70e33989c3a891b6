"""The quickstart suite over several `harness serve organism --dev-rpc` replicas, against one server, with
a replica killed (SIGKILL) in recorded discovery and another in generation (not a test; the short form,
a 12-prompt suite, is tests/vllm/test_replicas.py and runs in CI). Needs the vLLM CPU build.

    python bench/replica_quickstart.py [--replicas 2] [--suite tasks/suites/quickstart.yaml]

The suite runs with `backend: openai` over replicas started once, four times:
  one         the first replica alone (`base_url`): the reference;
  spread      every replica (`base_urls`);
  discovery   every replica; the last is killed once it has served --kill-after requests, which falls in
              fTRI's recorded discovery (the run's first requests), then started again;
  generation  every replica; the last is killed once it has served half the discovery requests (as many as
              `one` made) plus --kill-after, which falls in the evaluation's generation.
Each run is compared with `one`: samples lost and written twice, discovery routing records that differ
(a record bound to the wrong request would differ), summary.json and experts.yaml byte for byte. The
runs' seconds and the per-replica counts of run.json go in the JSON; throughput is not the point on a
machine whose cores the replicas share. Writes results/bench/replica_quickstart_<utc time>.json; exits 1
if any comparison fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "vllm"))

from servers import Server, kill_when, run_routing, run_samples, start_all  # noqa: E402

from harness.models.resolve import organism_path  # noqa: E402
from harness.run.runner import Runner  # noqa: E402
from harness.suite.schema import load_suite  # noqa: E402

SAME_FILES = ("summary.json", "experts.yaml")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=2, help="replicas started (at least 2)")
    p.add_argument("--suite", type=Path, default=REPO / "tasks" / "suites" / "quickstart.yaml")
    p.add_argument("--kill-after", type=int, default=4, help="requests a replica serves before it is killed")
    p.add_argument("--work", type=Path, default=REPO / "results" / "bench" / "replica-work")
    p.add_argument("--keep", action="store_true", help="keep the runs and server logs")
    args = p.parse_args()
    if args.replicas < 2:
        p.error("--replicas: at least 2")
    return args


def write_suite(source: Path, folder: Path, urls: list[str], **server: Any) -> Path:
    """The suite, served: backend openai over `urls` (base_url for one, base_urls for several)."""
    suite = yaml.safe_load(source.read_text(encoding="utf-8"))
    model = str(organism_path())  # the path the servers resolve `organism` to, as the runner does
    where = {"base_url": urls[0]} if len(urls) == 1 else {"base_urls": urls}
    suite.update(model=model, backend="openai", server={"model": model, **where, **server})
    folder.mkdir(parents=True)
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    return path


def run(source: Path, folder: Path, urls: list[str], **server: Any) -> tuple[Path, float]:
    suite_file = write_suite(source, folder, urls, **server)
    started = time.perf_counter()
    runner = Runner(load_suite(suite_file), suite_file, folder / "run")
    runner.run()
    return runner.store.root, time.perf_counter() - started


def compare(run_dir: Path, reference: Path) -> dict[str, Any]:
    got, want = run_samples(run_dir), run_samples(reference)
    routing, expected = run_routing(run_dir), run_routing(reference)
    result: dict[str, Any] = {
        "samples": len(got),
        "lost": len(set(want) - set(got)),
        "written_twice": len(got) - len(set(got)),
        "unexpected": len(set(got) - set(want)),
        "records": len(routing),
        "records_differing": sum(routing.get(k) != v for k, v in expected.items()) + len(set(routing) - set(expected)),
        "same_files": {name: (run_dir / name).read_bytes() == (reference / name).read_bytes() for name in SAME_FILES},
        "replicas": json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("replicas", []),
    }
    result["equal"] = not any(result[k] for k in ("lost", "written_twice", "unexpected", "records_differing")) and all(
        result["same_files"].values()
    )
    return result


def main() -> int:
    args = parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    servers = [Server(str(organism_path()), args.work) for _ in range(args.replicas)]
    report: dict[str, Any] = {
        "schema": 1,
        "bench": "replica_quickstart",
        "when": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "suite": str(args.suite.relative_to(REPO) if args.suite.is_relative_to(REPO) else args.suite),
        "replicas": args.replicas,
        "runs": {},
    }
    try:
        started = time.perf_counter()
        start_all(servers)
        report["start_seconds"] = round(time.perf_counter() - started, 1)
        urls = [s.url for s in servers]
        reference, seconds = run(args.suite, args.work / "one", urls[:1])
        report["runs"]["one"] = {"seconds": round(seconds, 1), "samples": len(run_samples(reference))}
        discovery = sum(1 for s in run_samples(reference) if s[1] == "discovery")
        victim = servers[-1]
        plans = {"spread": None, "discovery": args.kill_after, "generation": discovery // 2 + args.kill_after}
        for name, kill_after in plans.items():
            killer = kill_when(victim, kill_after) if kill_after is not None else None
            run_dir, seconds = run(args.suite, args.work / name, urls, rejoin_s=3600)
            entry = {"seconds": round(seconds, 1), **compare(run_dir, reference)}
            if killer is not None:
                killer.join(timeout=5)
                dead = victim.proc is not None and victim.proc.returncode is not None
                entry["killed"] = {"replica": victim.url, "after_served": kill_after, "killed": dead}
                entry["equal"] = entry["equal"] and dead  # a kill that never happened shows nothing
                if dead:
                    start_all([victim])  # back for the next run
            report["runs"][name] = entry
            print(f"{name}: {entry['seconds']} s, equal to one server: {entry['equal']}", flush=True)
    finally:
        for server in servers:
            server.kill()
    report["all_equal"] = all(r.get("equal", True) for r in report["runs"].values())
    out = REPO / "results" / "bench" / f"replica_quickstart_{report['when']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0 if report["all_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
