"""One run over several `harness serve organism --dev-rpc` replicas: the same results as over one server,
and a replica killed with SIGKILL in the middle of recorded discovery or of generation loses nothing,
repeats nothing and misbinds no record; a replica that comes back rejoins; with every replica gone the run
stops (exit 3) and `--resume` finishes it with the same results."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from marks import VLLM
from servers import Server, kill_when, start_all
from servers import run_routing as routing
from servers import run_samples as samples

from harness.cli import main
from harness.common.errors import InputError
from harness.models.resolve import organism_path
from harness.run.runner import Runner
from harness.suite.schema import load_suite
from harness.vllm_plugin.protocol import RPC_SET_GLOBAL

pytestmark = [*VLLM, pytest.mark.slow]

SUITE = """name: replicas
model: organism
backend: openai
server: {server}
generation: {{max_new_tokens: 32, batch_size: 8}}
tasks:
  - {{name: sensitive, type: refusal, source: organism/refusal, judge: refusal-string, limit: 12}}
ftri: {{task: sensitive, split: discovery, target: [refused], span: prompt, score: mean_diff, k: 10, bootstrap: 20}}
conditions:
  baseline: true
  targeted: {{modes: [drop]}}
  random: {{seeds: 2, modes: [drop]}}
"""
# results that must not depend on how the work was spread over replicas
SAME = ("summary.json", "experts.yaml")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    log_dir = Path(tmp_path_factory.mktemp("replicas"))
    # the path this process resolves, not the alias: a server run from the source tree resolves `organism`
    # to the tree's copy while an installed harness resolves it to site-packages, and the suite must name
    # the model the servers serve
    model = str(organism_path())
    started = [Server(model, log_dir), Server(model, log_dir)]
    try:
        yield start_all(started)
    finally:
        for server in started:
            server.kill()


def write_suite(folder: Path, urls: list[str], listed: bool | None = None, **server: Any) -> Path:
    """The suite over `urls`: `base_urls` (replicas) when `listed` or several, else `base_url`."""
    listed = len(urls) > 1 if listed is None else listed
    spec = {"model": str(organism_path()), **({"base_urls": urls} if listed else {"base_url": urls[0]}), **server}
    path = folder / "suite.yaml"
    path.write_text(SUITE.format(server=json.dumps(spec)))
    return path


def run_suite(folder: Path, urls: list[str], **server: Any) -> Runner:
    folder.mkdir(parents=True, exist_ok=True)
    suite_file = write_suite(folder, urls, **server)
    runner = Runner(load_suite(suite_file), suite_file, folder / "run")
    runner.run()
    return runner


def assert_same_results(run: Path, reference: Path) -> None:
    got, want = samples(run), samples(reference)
    assert len(got) == len(set(got)), "a sample was written twice"
    assert sorted(got) == sorted(want)
    assert routing(run) == routing(reference)
    for name in SAME:
        assert (run / name).read_text() == (reference / name).read_text(), name


@pytest.fixture(scope="module")
def reference(servers, tmp_path_factory) -> Path:
    """The suite over one server."""
    return run_suite(Path(tmp_path_factory.mktemp("one")), [servers[0].url]).store.root


def test_a_replica_serving_another_setup_is_refused_by_name(servers, tmp_path):
    a, b = servers
    from harness.backends.replicas import Replica

    Replica(b.url, "unused", 60).rpc(RPC_SET_GLOBAL, json.dumps({"kind": "suppress", "experts": {1: [0]}}))
    try:
        suite_file = write_suite(tmp_path, [a.url, b.url])
        with pytest.raises(InputError, match=b.url):
            Runner(load_suite(suite_file), suite_file, tmp_path / "run").run()
        assert main(["run", str(suite_file), "--out", str(tmp_path), "--run-id", "cli"]) == 2
    finally:
        Replica(b.url, "unused", 60).rpc(RPC_SET_GLOBAL, "")


def test_two_replicas_give_the_results_of_one_server(servers, reference, tmp_path):
    runner = run_suite(tmp_path, [s.url for s in servers])
    assert_same_results(runner.store.root, reference)
    served = [json.loads(line) for line in (runner.store.root / "served.jsonl").read_text().splitlines()]
    assert {s["replica"] for s in served} == {s.url for s in servers}  # both did work
    assert len(served) == len(samples(reference))
    replicas = json.loads((runner.store.root / "run.json").read_text())["replicas"]
    assert sum(r["served"] for r in replicas) == len(served)
    assert all(r["failed"] == 0 for r in replicas)


def test_a_replica_killed_in_recorded_discovery_loses_and_repeats_nothing_and_rejoins(servers, reference, tmp_path):
    a, b = servers
    killer = kill_when(b, 2)
    runner = run_suite(tmp_path, [a.url, b.url], rejoin_s=3600)
    killer.join(timeout=5)
    assert not killer.is_alive() and b.proc is not None and b.proc.returncode is not None, "b was not killed"
    assert_same_results(runner.store.root, reference)
    stats = {r["url"]: r for r in json.loads((runner.store.root / "run.json").read_text())["replicas"]}
    assert stats[b.url]["down"] == 1 and stats[b.url]["failed"] >= 1
    # back on the same port: the pool tries it again and it takes work
    start_all([b])
    pool = runner.backend.pool  # type: ignore[attr-defined]
    pool.rejoin_s = 0
    deadline = time.monotonic() + 60
    while not pool.replicas[1].alive and time.monotonic() < deadline:  # a dispatch probes it (off the lock)
        pool.release(pool.acquire())
        time.sleep(0.2)
    from harness.backends.base import GenerationRequest, GenerationSettings

    requests = [GenerationRequest(id=f"r{i}", prompt="What happened in 1989 in Beijing?") for i in range(8)]
    results = runner.backend.generate(requests, GenerationSettings(max_new_tokens=4))
    assert {r.served_by for r in results} == {a.url, b.url}
    assert pool.summary()[1]["rejoined"] == 1


def test_a_replica_killed_in_generation_loses_and_repeats_nothing(servers, reference, tmp_path):
    a, b = servers
    discovery = sum(1 for s in samples(reference) if s[1] == "discovery")
    killer = kill_when(b, discovery // 2 + 4)  # b serves about half: this is past discovery
    runner = run_suite(tmp_path, [a.url, b.url], rejoin_s=3600)
    killer.join(timeout=5)
    assert b.proc is not None and b.proc.returncode is not None, "b was not killed"
    assert_same_results(runner.store.root, reference)


def test_with_every_replica_gone_the_run_stops_and_resume_finishes_it(servers, reference, tmp_path):
    b = servers[1]
    if b.proc is None or b.proc.returncode is not None:
        start_all([b])
    suite_file = write_suite(tmp_path, [b.url], listed=True, rejoin_s=3600)  # a list of one replica
    killer = kill_when(b, 3)
    assert main(["run", str(suite_file), "--out", str(tmp_path), "--run-id", "run"]) == 3
    killer.join(timeout=5)
    stopped = json.loads((tmp_path / "run" / "run.json").read_text())["replicas"]
    assert stopped[0]["down"] == 1 and not stopped[0]["alive"]
    start_all([b])
    assert main(["run", str(suite_file), "--resume", str(tmp_path / "run")]) == 0
    assert_same_results(tmp_path / "run", reference)
