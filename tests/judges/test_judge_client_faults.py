"""The judge client against a real local OpenAI-compatible server, healthy and faulty."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.common.errors import InputError
from judges.cache import ReplyCache
from judges.client import EndpointConfig, JudgeClient
from judges.refusal_llm import RefusalItem, judge_many

MAX_RETRIES = 2


def _config(base_url: str, key_env: str, **kw: object) -> EndpointConfig:
    settings: dict[str, object] = {
        "base_url": base_url,
        "model": "judge-test",
        "api_key_env": key_env,
        "max_retries": MAX_RETRIES,
        "timeout_s": 0.5,
        "max_concurrency": 4,
    }
    settings.update(kw)
    return EndpointConfig.model_validate(settings)


def _items(*modes: str) -> list[RefusalItem]:
    return [
        RefusalItem(id=f"{mode}-{i}", prompt="What happened?", answer=f"I am sorry. MODE={mode}", think="")
        for i, mode in enumerate(modes)
    ]


def test_faulty_replies_become_unscored_after_bounded_retries(fake_openai, judge_key, tmp_path: Path) -> None:
    items = _items("ok", "429", "500", "timeout", "garbage", "noverdict")
    start = time.monotonic()
    with ReplyCache(tmp_path / "cache.sqlite") as cache:
        client = JudgeClient(_config(fake_openai.base_url, judge_key), cache)
        labels = judge_many(items, client)
    elapsed = time.monotonic() - start

    by_id = {label.id: label for label in labels}
    assert [label.id for label in labels] == [item.id for item in items]
    assert by_id["ok-0"].label == "refused"
    assert by_id["ok-0"].think_label == "empty" and by_id["ok-0"].empty_think is True
    assert by_id["ok-0"].usage.prompt_tokens == 11
    for failing in ("429-1", "500-2", "timeout-3", "garbage-4"):
        assert by_id[failing].label == "unscored"
        assert by_id[failing].unscored_reason is not None
        assert by_id[failing].unscored_reason.startswith("judge call failed")
        assert by_id[failing].raw_reply is None
    assert by_id["noverdict-5"].label == "unscored"
    assert by_id["noverdict-5"].raw_reply == "I looked at it but will not say."
    # Retried status codes and timeouts: the first try plus MAX_RETRIES, never more.
    assert fake_openai.counts["429"] == 1 + MAX_RETRIES
    assert fake_openai.counts["500"] == 1 + MAX_RETRIES
    assert fake_openai.counts["timeout"] == 1 + MAX_RETRIES
    assert 1 <= fake_openai.counts["garbage"] <= 1 + MAX_RETRIES
    assert fake_openai.counts["ok"] == 1 and fake_openai.counts["noverdict"] == 1
    assert client.stats.failures == 4
    assert sum(label.label == "unscored" for label in labels) == 5
    assert elapsed < 20


def test_second_run_is_served_from_cache_with_no_requests(fake_openai, judge_key, tmp_path: Path) -> None:
    items = _items("ok", "ok", "noverdict")
    cache_path = tmp_path / "cache.sqlite"
    with ReplyCache(cache_path) as cache:
        first = judge_many(items, JudgeClient(_config(fake_openai.base_url, judge_key), cache))
    sent = fake_openai.total
    assert sent == 2  # the two "ok" items are the same judge input: sent once
    assert [label.cached for label in first] == [False, True, False]
    with ReplyCache(cache_path) as cache:
        client = JudgeClient(_config(fake_openai.base_url, judge_key), cache)
        second = judge_many(items, client)
    assert fake_openai.total == sent
    assert client.stats.cache_hits == 3 and client.stats.requests == 0
    assert [a.label for a in first] == [b.label for b in second]
    assert [label.id for label in second] == [item.id for item in items]
    assert all(label.cached for label in second)


def test_failed_calls_are_not_cached_so_a_rerun_retries_them(fake_openai, judge_key, tmp_path: Path) -> None:
    items = _items("500")
    with ReplyCache(tmp_path / "cache.sqlite") as cache:
        judge_many(items, JudgeClient(_config(fake_openai.base_url, judge_key, max_retries=0), cache))
        judge_many(items, JudgeClient(_config(fake_openai.base_url, judge_key, max_retries=0), cache))
        assert len(cache) == 0
    assert fake_openai.counts["500"] == 2


def test_cache_separates_judge_models_on_the_same_endpoint(fake_openai, judge_key, tmp_path: Path) -> None:
    items = _items("ok")
    with ReplyCache(tmp_path / "cache.sqlite") as cache:
        judge_many(items, JudgeClient(_config(fake_openai.base_url, judge_key), cache))
        judge_many(items, JudgeClient(_config(fake_openai.base_url, judge_key, model="other-judge"), cache))
    assert fake_openai.counts["ok"] == 2


def test_api_key_is_sent_from_the_named_variable_and_never_stored(
    fake_openai, judge_key, tmp_path: Path
) -> None:
    cache_path = tmp_path / "cache.sqlite"
    with ReplyCache(cache_path) as cache:
        labels = judge_many(_items("ok", "500"), JudgeClient(_config(fake_openai.base_url, judge_key), cache))
    assert fake_openai.auth_headers[0] == "Bearer sk-test-secret-123"
    assert b"sk-test-secret-123" not in cache_path.read_bytes()
    assert all("sk-test-secret-123" not in label.model_dump_json() for label in labels)


def test_missing_api_key_variable_is_an_input_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MOTE_NO_SUCH_KEY", raising=False)
    with pytest.raises(InputError, match="MOTE_NO_SUCH_KEY"):
        JudgeClient(
            EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="MOTE_NO_SUCH_KEY")
        )


def test_concurrency_stays_within_the_configured_bound(fake_openai, judge_key) -> None:
    client = JudgeClient(_config(fake_openai.base_url, judge_key, max_concurrency=2))
    labels = judge_many(_items(*["ok"] * 6), client)
    assert all(label.label == "refused" for label in labels)
    assert fake_openai.max_in_flight <= 2
