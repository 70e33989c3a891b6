"""`harness serve` processes owned by a test (or bench/replica_quickstart.py): started in their own process
group, health-checked, killed (SIGTERM, or SIGKILL as a dying replica), restarted on the same port; and
what a run over them wrote, to compare runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One `harness serve MODEL --dev-rpc` on 127.0.0.1 (float32; max_model_len 256 is the organism's)."""

    def __init__(self, model: str, log_dir: Path, port: int | None = None, max_model_len: int = 256) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.port = port or free_port()
        self.log = log_dir / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        cmd = [sys.executable, "-m", "harness", "serve", self.model, "--port", str(self.port), "--dev-rpc",
               "--max-model-len", str(self.max_model_len), "--dtype", "float32"]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with self.log.open("a") as sink:
            self.proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def wait_healthy(self) -> Server:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {START_TIMEOUT_S}s:\n{self.log.read_text()[-3000:]}")
            time.sleep(1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """The server and the engine it spawned (our process group only)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def served(self) -> int:
        """Requests this server has finished (vLLM's request_success_total); -1 when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return -1
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("vllm:request_success_total")))  # fmt: skip


def start_all(servers: list[Server]) -> list[Server]:
    """Start every server, then wait for each (their loads overlap)."""
    for server in servers:
        server.start()
    return [server.wait_healthy() for server in servers]


def kill_when(server: Server, served_at_least: int) -> threading.Thread:
    """SIGKILL `server` once it has finished `served_at_least` more requests (it is then serving more)."""
    target = server.served() + served_at_least

    def watch() -> None:
        while server.served() < target:
            time.sleep(0.05)
        server.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def run_samples(run: Path) -> list[tuple[str, str, str, str]]:
    """(task, condition, prompt id, text) of every sample line of a run, in file order."""
    lines = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    return [(s["task"], s["condition"], s["id"], s["text"]) for s in lines]


def run_routing(run: Path) -> dict[str, list[int]]:
    """Discovery's span counts per prompt, from the run's routing chunks."""
    import numpy as np

    rows: dict[str, list[int]] = {}
    for chunk in sorted((run / "routing").glob("*.npz")):
        with np.load(chunk) as data:
            for i, pid in enumerate(data["ids"].tolist()):
                rows[str(pid)] = [int(x) for k in sorted(data.files) if k != "ids" for x in np.ravel(data[k][i])]
    return rows
