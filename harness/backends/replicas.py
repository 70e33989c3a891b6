"""Several served replicas of one model behind one backend (`server: {base_urls: [...]}`).

Every intervention travels inside its request, so replicas share no state: a request goes to the live
replica with the least outstanding work, and its routing record or counts are fetched from the replica
that served it. A replica that refuses a connection, times out or answers 5xx is taken out (`down`);
its unfinished requests go to the others, each request at most `attempts` times in all. A replica that
is down is tried again every `rejoin_s` (its status must still show the same model) and rejoins. When
every replica is down, `ReplicasUnavailableError` stops the run cleanly; `harness run --resume`
continues it.

At start every replica's `mote_status` must agree on what it serves (the weights' identity, the plugin
and vLLM versions, the MoE layout, the global intervention): a replica that differs is refused by name
before any request is sent.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.common.errors import InputError, ReplicasUnavailableError
from harness.vllm_plugin import MoteVLLMError
from harness.vllm_plugin.protocol import RPC_STATUS
from harness.vllm_plugin.ranks import merge_status

# mote_status fields on which every replica must agree
IDENTITY_FIELDS = ("weights", "plugin_version", "vllm_version", "model_type", "moe_layers", "top_k",
                   "global_intervention", "record_all")  # fmt: skip
# a status call: a worker's first one hashes its model folder (up to 2 GiB of weights), a few seconds to
# tens of seconds on a slow disk; a replica that does not answer in this time is refused (start) or stays
# down (probe), instead of holding the run for a request's timeout
STATUS_TIMEOUT_S = 60.0
MIN_PROBE_INTERVAL_S = 0.5  # a down replica is probed at most this often, whatever rejoin_s says
IDLE_REUSE_S = 2.0  # a kept-alive connection idle longer is not reused (vLLM's server closes them after 5 s)
REPLICA_COUNTS = ("served", "tokens", "failed", "down", "rejoined")  # ReplicaStats' fields


class ReplicaError(RuntimeError):
    """One replica failed a call (connection, timeout, 5xx): it goes down, the work goes elsewhere."""

    def __init__(self, url: str, error: BaseException | str) -> None:
        super().__init__(f"{url}: {error}")
        self.url = url


@dataclass
class ReplicaStats:
    served: int = 0  # requests answered
    tokens: int = 0  # tokens generated in them
    failed: int = 0  # calls that failed (each sent the work elsewhere)
    down: int = 0  # times taken out
    rejoined: int = 0  # times back after a probe


class Replica:
    """One `harness serve --dev-rpc` endpoint: chat completions and MoTE RPCs over keep-alive HTTP/1.1
    (the standard library's http.client, one connection per thread: about 5x the requests/s of an
    httpx-based client on the same core, bench/replica_dispatch.py), and what the pool knows of it. No
    retries of its own: a failed call goes to another replica, or to this one after a probe."""

    def __init__(self, url: str, api_key: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError("server", "base_url", "an http:// or https:// URL", url)
        self._https = parts.scheme == "https"
        self._host, self._port, self._prefix = parts.hostname, parts.port, parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
        self._local = threading.local()
        self.timeout_s = timeout_s
        self.outstanding = 0
        self.alive = True
        self.probing = False  # a thread is probing it (outside the pool's lock)
        self.probed = True  # probed since it last went down
        self.probed_at = 0.0
        self.last_error = ""
        self.stats = ReplicaStats()
        self.started = time.monotonic()

    @property
    def name(self) -> str:
        return self.url.split("://", 1)[-1]

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        """This thread's connection to the replica; a fresh one after `IDLE_REUSE_S` idle, since the server
        may close a kept-alive connection (uvicorn after 5 s) just as a request goes out on it."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and time.monotonic() - self._local.used > IDLE_REUSE_S:
            conn.close()
            conn = None
        if conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = kind(self._host, self._port, timeout=timeout_s)
            self._local.conn = conn
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        return conn

    def post(self, path: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        """POST JSON, the answer's JSON. Refused, reset, timed out, 5xx or no JSON: ReplicaError; 4xx:
        MoteVLLMError with the server's message (a bad request fails on every replica alike). Never
        processed twice: a request that may have reached the server is re-sent (elsewhere, under a new
        record key) by the caller; only one whose send failed on a kept-alive connection the server had
        closed goes out again here, on a new connection."""
        timeout = timeout_s or self.timeout_s
        conn = self._connection(timeout)
        data = json.dumps(body).encode()
        try:
            try:
                reused = conn.sock is not None
                conn.request("POST", self._prefix + path, body=data, headers=self._headers)
            except (BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # the server had closed this kept-alive connection before the request could reach it
                # (the send itself failed): nothing was processed, so it goes out once more, afresh
                conn.close()
                self._local.conn = None
                conn = self._connection(timeout)
                conn.request("POST", self._prefix + path, body=data, headers=self._headers)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            self._local.conn = None
            raise ReplicaError(self.url, f"{path} failed ({type(err).__name__}: {err})") from err
        self._local.used = time.monotonic()
        if response.status >= 500:
            raise ReplicaError(self.url, f"{path} answered {response.status}: {payload[:300]!r}")
        if response.status >= 400:
            raise MoteVLLMError(f"{self.url}{path} answered {response.status}: {_message(payload)}")
        try:
            return json.loads(payload)
        except ValueError as err:
            raise ReplicaError(self.url, f"{path} answered no JSON ({err})") from err

    def rpc(self, method: str, *args: str, timeout_s: float | None = None) -> list[Any]:
        """Every worker's result of a MoTE RPC over POST /collective_rpc, in rank order."""
        try:
            answer = self.post("/collective_rpc", {"method": method, "args": list(args)}, timeout_s)
        except MoteVLLMError as err:
            raise MoteVLLMError(
                f"{err}; start the server with `harness serve MODEL --dev-rpc` (VLLM_SERVER_DEV_MODE=1)"
            ) from err
        if not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
            raise ReplicaError(self.url, f"/collective_rpc {method} answered no results: {str(answer)[:200]}")
        return list(answer["results"])

    def status(self, timeout_s: float | None = None) -> dict[str, Any]:
        return merge_status(self.rpc(RPC_STATUS, timeout_s=timeout_s))

    def throughput(self) -> float:
        return self.stats.served / max(time.monotonic() - self.started, 1e-9)


def _message(payload: bytes) -> str:
    """The error message of a vLLM / OpenAI-style error body, else the body's start."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload[:300].decode("utf-8", "replace")
    error = data.get("error", data) if isinstance(data, dict) else data
    return str(error.get("message", error) if isinstance(error, dict) else error)[:1000]


def identity(status: dict[str, Any]) -> dict[str, Any]:
    return {field: status.get(field) for field in IDENTITY_FIELDS}


class ReplicaPool:
    """The replicas of one run: which is up, how much each has in flight, who served what."""

    def __init__(
        self, urls: Sequence[str], api_key: str, concurrency: int, timeout_s: float, rejoin_s: float = 10.0
    ) -> None:
        self.replicas = [Replica(url, api_key, timeout_s) for url in urls]
        self.concurrency = concurrency
        self.rejoin_s = rejoin_s
        self._cond = threading.Condition()
        self.identity: dict[str, Any] = {}

    @property
    def capacity(self) -> int:
        return self.concurrency * len(self.replicas)

    def check(self, source: str = "server.base_urls") -> dict[str, Any]:
        """Every replica's merged status; all must serve the same model. Returns the first's status."""
        statuses = []
        for replica in self.replicas:
            try:
                statuses.append(replica.status(timeout_s=min(STATUS_TIMEOUT_S, replica.timeout_s)))
            except (ReplicaError, MoteVLLMError) as err:
                raise InputError(source, replica.url, "a running `harness serve MODEL --dev-rpc`", str(err)) from None
        first = identity(statuses[0])
        for replica, status in zip(self.replicas[1:], statuses[1:], strict=True):
            other = identity(status)
            if other != first:
                differ = [f for f in IDENTITY_FIELDS if other[f] != first[f]]
                raise InputError(
                    source,
                    replica.url,
                    f"the model {self.replicas[0].url} serves ({differ[0]} {first[differ[0]]!r})",
                    f"{differ[0]} {other[differ[0]]!r}" + (f" (and {', '.join(differ[1:])})" if differ[1:] else ""),
                )
        self.identity = first
        return statuses[0]

    # -- dispatch --------------------------------------------------------------------------------
    def acquire(self, avoid: frozenset[str] = frozenset()) -> Replica:
        """The live replica with the least outstanding work (one not in `avoid` if there is one), waiting
        while all are at `concurrency`. Replicas that are down are probed outside the lock: every
        `rejoin_s`, and at once when none is up (a single failed call on a healthy server costs one
        probe, not the run). ReplicasUnavailableError when none is up and each failed its probe."""
        while True:
            with self._cond:
                due = self._due_for_probe()
            for replica in due:
                self._probe(replica)
            with self._cond:
                alive = [r for r in self.replicas if r.alive]
                if not alive and not any(r.probing or not r.probed for r in self.replicas):
                    raise ReplicasUnavailableError(self._all_down())
                free = [r for r in alive if r.outstanding < self.concurrency]
                preferred = [r for r in free if r.url not in avoid] or free
                if preferred:
                    replica = min(preferred, key=lambda r: r.outstanding)
                    replica.outstanding += 1
                    return replica
                self._cond.wait(timeout=0.5)

    def release(self, replica: Replica, tokens: int | None = None, error: BaseException | None = None) -> None:
        """A call to `replica` ended: answered (`tokens` generated), or failed (`error`: it goes down)."""
        with self._cond:
            replica.outstanding -= 1
            if error is None:
                if tokens is not None:
                    replica.stats.served += 1
                    replica.stats.tokens += tokens
            else:
                self._down(replica, error)
            self._cond.notify_all()

    def mark_down(self, replica: Replica, error: BaseException) -> None:
        with self._cond:
            self._down(replica, error)
            self._cond.notify_all()

    def _down(self, replica: Replica, error: BaseException) -> None:
        replica.stats.failed += 1
        replica.last_error = str(error)[:300]
        if replica.alive:
            replica.alive = False
            replica.stats.down += 1
            replica.probed = False  # not probed since it went down

    def _due_for_probe(self) -> list[Replica]:
        """Down replicas to probe now (marked `probing`, so no other thread probes them too): each one not
        probed since it went down while no replica is up, and each one last probed `rejoin_s` ago."""
        now = time.monotonic()
        none_up = not any(r.alive for r in self.replicas)
        due = [
            r
            for r in self.replicas
            if not r.alive
            and not r.probing
            and ((none_up and not r.probed) or now - r.probed_at >= max(self.rejoin_s, MIN_PROBE_INTERVAL_S))
        ]
        for replica in due:
            replica.probing = True
        return due

    def _probe(self, replica: Replica) -> None:
        """One status call (no lock held); back up when it still serves the run's model."""
        try:
            same = identity(replica.status(timeout_s=STATUS_TIMEOUT_S)) == self.identity
            error = "" if same else "its status shows another model or setup"
        except Exception as err:  # refused, timed out, a torn or odd answer: still down
            same, error = False, f"probe: {err}"
        with self._cond:
            replica.probing = False
            replica.probed = True
            replica.probed_at = time.monotonic()
            if same:
                replica.alive = True
                replica.stats.rejoined += 1
            else:
                replica.last_error = error[:300]
            self._cond.notify_all()

    def _all_down(self) -> str:
        last = "; ".join(f"{r.url}: {r.last_error or 'down'}" for r in self.replicas)
        return f"every replica is down ({last}); start them again and continue with `harness run --resume RUN_DIR`"

    # -- what happened ---------------------------------------------------------------------------
    def progress(self) -> str:
        """One line for the progress bar: per replica requests/s and failures, `down` when it is."""
        return " | ".join(
            f"{r.name} {r.throughput():.1f} req/s {r.stats.failed} failed" + ("" if r.alive else " DOWN")
            for r in self.replicas
        )

    def summary(self) -> list[dict[str, Any]]:
        return [
            {"url": r.url, "alive": r.alive, **vars(r.stats), **({"last_error": r.last_error} if r.last_error else {})}
            for r in self.replicas
        ]
