"""The replica pool's own logic (which replica gets a request, going down, rejoining, the start check) with
statuses given directly; tests/vllm/test_replicas.py runs it against real servers, killed mid-run."""

from __future__ import annotations

import pytest

from harness.backends import replicas
from harness.backends.replicas import Replica, ReplicaError, ReplicaPool
from harness.common.errors import InputError, ReplicasUnavailableError
from harness.suite.schema import ServerSpec

STATUS = {
    "weights": {"name": "organism", "sha256": "abc"},
    "plugin_version": "0.1.0",
    "vllm_version": "0.32.0",
    "model_type": "qwen2_moe",
    "moe_layers": {"1": 64},
    "top_k": 2,
    "global_intervention": "none",
    "record_all": False,
}
URLS = ["http://a:1", "http://b:1", "http://c:1"]


def pool_with(monkeypatch, statuses, concurrency=2, rejoin_s=10.0):
    def status(self, timeout_s=None):
        answer = statuses[self.url]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(Replica, "status", status)
    return ReplicaPool(list(statuses), "unused", concurrency, 60.0, rejoin_s)


def test_server_takes_one_url_or_a_list_of_distinct_replicas():
    assert ServerSpec(base_url="http://a:1/", model="m").urls == ["http://a:1"]
    assert ServerSpec(base_urls=URLS, model="m").urls == URLS
    for bad in ({}, {"base_url": "http://a:1", "base_urls": URLS}, {"base_urls": []},
                {"base_urls": ["http://a:1", "http://a:1/"]}):  # fmt: skip
        with pytest.raises(ValueError):
            ServerSpec(model="m", **bad)


def test_start_check_names_the_replica_that_serves_other_weights(monkeypatch):
    other = {**STATUS, "weights": {"name": "organism", "sha256": "def"}}
    pool = pool_with(monkeypatch, {URLS[0]: STATUS, URLS[1]: STATUS, URLS[2]: other})
    with pytest.raises(InputError, match="http://c:1") as err:
        pool.check()
    assert "weights" in str(err.value) and "def" in str(err.value)


def test_start_check_names_a_replica_that_does_not_answer(monkeypatch):
    pool = pool_with(monkeypatch, {URLS[0]: STATUS, URLS[1]: ReplicaError(URLS[1], "connection refused")})
    with pytest.raises(InputError, match="http://b:1"):
        pool.check()


def test_requests_go_to_the_least_busy_live_replica_and_avoid_one_that_failed(monkeypatch):
    pool = pool_with(monkeypatch, dict.fromkeys(URLS, STATUS))
    pool.check()
    first, second, third = pool.acquire(), pool.acquire(), pool.acquire()
    assert [r.url for r in (first, second, third)] == URLS  # one each before any gets a second
    pool.release(second, tokens=3)
    assert pool.acquire().url == URLS[1]
    assert pool.acquire(frozenset({URLS[0]})).url != URLS[0]


def test_a_failed_call_on_a_healthy_server_costs_a_probe_not_the_run(monkeypatch):
    statuses = {URLS[0]: STATUS}
    pool = pool_with(monkeypatch, statuses, rejoin_s=3600)
    pool.check()
    pool.release(pool.acquire(), error=ReplicaError(URLS[0], "answered 500"))
    assert pool.acquire().url == URLS[0]  # none up: probed at once, and back
    assert pool.summary()[0]["down"] == 1 and pool.summary()[0]["rejoined"] == 1


def test_with_every_replica_down_and_failing_its_probe_the_run_stops(monkeypatch):
    statuses = dict.fromkeys(URLS[:2], STATUS)
    pool = pool_with(monkeypatch, statuses, rejoin_s=3600)
    pool.check()
    for url in URLS[:2]:
        statuses[url] = ReplicaError(url, "connection refused")
        pool.release(pool.acquire(), error=ReplicaError(url, "connection reset"))
    with pytest.raises(ReplicasUnavailableError, match="--resume") as err:
        pool.acquire()
    assert "connection refused" in str(err.value)
    assert [r["down"] for r in pool.summary()] == [1, 1]


def test_a_replica_back_with_the_same_model_rejoins_and_one_with_another_does_not(monkeypatch):
    monkeypatch.setattr(replicas, "MIN_PROBE_INTERVAL_S", 0.0)
    statuses = dict.fromkeys(URLS[:2], STATUS)
    pool = pool_with(monkeypatch, statuses, rejoin_s=0)
    pool.check()
    b = pool.replicas[1]
    pool.mark_down(b, ReplicaError(b.url, "gone"))
    statuses[b.url] = {**STATUS, "plugin_version": "9"}
    pool.acquire()  # probes b: another plugin version, still down
    assert not b.alive and "another model" in b.last_error
    statuses[b.url] = STATUS
    assert pool.acquire().url == b.url  # probed again: back, and the least busy
    assert b.stats.rejoined == 1
    assert "req/s" in pool.progress()


def test_a_probe_that_gets_an_odd_answer_leaves_the_replica_down(monkeypatch):
    statuses = dict.fromkeys(URLS[:2], STATUS)
    pool = pool_with(monkeypatch, statuses, rejoin_s=0)
    pool.check()
    b = pool.replicas[1]
    pool.mark_down(b, ReplicaError(b.url, "gone"))
    statuses[b.url] = KeyError("results")  # a 200 without the RPC's results
    assert pool.acquire().url == URLS[0]
    assert not b.alive and not b.probing and "probe" in b.last_error


class _ResettingServer:
    """A real HTTP/1.1 server on 127.0.0.1 that answers each request on a kept-alive connection, then
    resets the connection after `answers_per_connection` answers (SO_LINGER 0: an RST, as a server
    closing an idle connection under load can), and counts the requests it read."""

    def __init__(self, answers_per_connection: int) -> None:
        import socket
        import threading

        self.per_connection = answers_per_connection
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import socket
        import struct

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                reader = conn.makefile("rb")
                for _ in range(self.per_connection):
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = reader.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    fields = dict(h.split(b":", 1) for h in head.split(b"\r\n")[1:] if b":" in h)
                    length = int({k.lower(): v for k, v in fields.items()}[b"content-length"])
                    reader.read(length)
                    self.requests += 1
                    body = b'{"results": ["ok"]}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
                reader.close()  # else the file keeps the socket open past `with`
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        self.sock.close()


def test_a_kept_alive_connection_the_server_reset_is_replaced_and_the_request_read_once():
    import time

    server = _ResettingServer(answers_per_connection=1)
    try:
        replica = Replica(server.url, "key", timeout_s=5)
        assert replica.rpc("mote_status") == ["ok"]
        time.sleep(0.3)  # the reset reaches us; the connection is still within its reuse window
        body = {"method": "mote_status", "args": ["x" * 200_000]}  # sent in several writes
        assert replica.post("/collective_rpc", body)["results"] == ["ok"]
        assert server.requests == 2  # each request read once: the failed send reached no one
    finally:
        server.close()
