"""The replica pool's own logic (which replica gets a request, going down, rejoining, the start check) with
statuses given directly; tests/vllm/test_replicas.py runs it against real servers, killed mid-run."""

from __future__ import annotations

import pytest

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


def test_a_failed_replica_goes_down_and_with_none_left_the_run_stops(monkeypatch):
    pool = pool_with(monkeypatch, dict.fromkeys(URLS[:2], STATUS), rejoin_s=3600)
    pool.check()
    for url in URLS[:2]:
        replica = pool.acquire()
        pool.release(replica, error=ReplicaError(url, "connection reset"))
    assert [r["down"] for r in pool.summary()] == [1, 1]
    with pytest.raises(ReplicasUnavailableError, match="--resume"):
        pool.acquire()


def test_a_replica_back_with_the_same_model_rejoins_and_one_with_another_does_not(monkeypatch):
    statuses = dict.fromkeys(URLS[:2], STATUS)
    pool = pool_with(monkeypatch, statuses, rejoin_s=0)
    pool.check()
    b = pool.replicas[1]
    pool.mark_down(b, ReplicaError(b.url, "gone"))
    statuses[b.url] = {**STATUS, "plugin_version": "9"}
    pool.acquire()  # probes b: another plugin version, still down
    assert not b.alive
    statuses[b.url] = STATUS
    assert pool.acquire().url == b.url  # probed again: back, and the least busy
    assert b.stats.rejoined == 1
    assert "req/s" in pool.progress()
