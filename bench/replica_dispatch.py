"""Dispatch overhead of a run over served replicas (not a unit test): how many requests per second the
harness's replica dispatch (harness/backends/replicas.py, through OpenAIBackend) sends to replicas that
answer at once, against the stock openai client sending the same requests to them.

    python bench/replica_dispatch.py [--replicas 2] [--requests 4000] [--concurrency 32] [--rounds 3]
                                     [--out results/bench/replica_dispatch_<time>.json]

The replicas are this script in `--serve PORT` mode, one process each (so they do not share the
client's interpreter lock): a minimal asyncio HTTP/1.1 server that answers `POST /v1/chat/completions`
with a two-token completion (`return_token_ids` style) and `POST /collective_rpc` `mote_status` with
the organism's MoE layout, at once. Three figures per round, each requests/s:
  stock      the openai client (one per replica, requests dealt round-robin), `concurrency` threads;
  harness    OpenAIBackend.generate over every replica (least outstanding work, failover bookkeeping,
             decoding each reply with the model's tokenizer);
  pool only  ReplicaPool.acquire / release with no HTTP (what the dispatch itself costs).
The ratio harness / stock is the speed figure; the goal is >= 2,000 dispatched requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GOAL_REQUESTS_PER_S = 2000.0
STATUS = {
    "vllm_version": "instant",
    "plugin_version": "instant",
    "weights": {"name": "organism", "sha256": "instant"},
    "model_type": "qwen2_moe",
    "moe_layers": {str(layer): 64 for layer in range(1, 6)},
    "top_k": 2,
    "compiled": False,
    "global_intervention": "none",
    "record_all": False,
}


def instant_answer(body: dict[str, Any], path: str) -> bytes:
    if path.endswith("/collective_rpc"):
        answer: Any = {"results": [STATUS if body.get("method") == "mote_status" else {}]}
    else:
        answer = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "organism"),
            "prompt_token_ids": [1, 2, 3],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "token_ids": [5, 3],
                    "message": {"role": "assistant", "content": "a"},
                }
            ],
        }
    data = json.dumps(answer).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


class InstantReplica(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one answer per request, parsed no further than the body's length: the
    replica costs as little as an HTTP server can, so the figure is the client's."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            sizes = [int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length")]
            length = sizes[0] if sizes else 0
            if len(rest) < length:
                return
            body, self.buffer = rest[:length], rest[length:]
            self.transport.write(instant_answer(json.loads(body or b"{}"), lines[0].split(" ")[1]))


def serve(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(InstantReplica, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_replicas(n: int) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    procs, urls = [], []
    for _ in range(n):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, __file__, "--serve", str(port)], start_new_session=True))
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(f"{url}/collective_rpc", data=b"{}"), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    return procs, urls


def stock(urls: list[str], n: int, concurrency: int) -> float:
    """The openai client, one per replica, requests dealt round-robin."""
    from openai import OpenAI

    clients = [OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) for url in urls]
    messages: Any = [{"role": "user", "content": "What happened in 1989?"}]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(
            pool.map(
                lambda i: clients[i % len(clients)].chat.completions.create(model="organism", messages=messages),
                range(n),
            )
        )
    return n / (time.perf_counter() - start)


def harness(urls: list[str], n: int, concurrency: int) -> tuple[float, list[dict[str, Any]]]:
    from harness.backends.base import GenerationRequest, GenerationSettings
    from harness.backends.openai_backend import OpenAIBackend
    from harness.models.resolve import organism_path

    per_replica = max(1, concurrency // len(urls))
    backend = OpenAIBackend(urls, "organism", organism_path(), concurrency=per_replica)
    requests = [GenerationRequest(id=f"r{i}", prompt="What happened in 1989?") for i in range(n)]
    start = time.perf_counter()
    backend.generate(requests, GenerationSettings(max_new_tokens=2))
    return n / (time.perf_counter() - start), backend.pool.summary()


def pool_only(n: int, replicas: int, concurrency: int) -> float:
    from harness.backends.replicas import ReplicaPool

    pool = ReplicaPool([f"http://127.0.0.1:{9 + i}" for i in range(replicas)], "unused", concurrency, 60.0)
    per_thread = n // concurrency

    def work(_: int) -> None:
        for _ in range(per_thread):
            pool.release(pool.acquire(), tokens=2)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as ex:
        list(ex.map(work, range(concurrency)))
    return per_thread * concurrency / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict[str, Any]:
    procs, urls = start_replicas(args.replicas)
    try:
        rounds = []
        for r in range(args.rounds):
            s = stock(urls, args.requests, args.concurrency)
            h, served = harness(urls, args.requests, args.concurrency)
            p = pool_only(args.requests * 10, args.replicas, args.concurrency)
            rounds.append({"round": r, "stock": s, "harness": h, "pool_only": p, "ratio": h / s, "served": served})
            print(f"round {r}: stock {s:.0f} req/s, harness {h:.0f} req/s ({h / s:.2f}x), pool only {p:.0f}/s")
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    med = {k: statistics.median(x[k] for x in rounds) for k in ("stock", "harness", "pool_only", "ratio")}
    return {
        "schema_version": 1,
        "bench": "replica_dispatch",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {k: getattr(args, k) for k in ("replicas", "requests", "concurrency", "rounds")},
        "median": med,
        "goal": {"harness_requests_per_s": GOAL_REQUESTS_PER_S, "met": med["harness"] >= GOAL_REQUESTS_PER_S},
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight in all")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    result = run(args)
    out = args.out or Path("results/bench") / f"replica_dispatch_{datetime.now():%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median": result["median"], "goal": result["goal"], "out": str(out)}, indent=2))
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda hook: None  # a replica killed at exit may leave a client thread noisy
    raise SystemExit(main())
