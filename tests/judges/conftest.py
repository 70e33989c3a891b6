"""Judge-test fixtures. `fake_openai`: a real HTTP server on 127.0.0.1 speaking the OpenAI chat JSON.

The behaviour for each request is picked by a `MODE=<name>` tag in the last user message, so one
batch can mix healthy and faulty items: ok, 429, 500, timeout (sleeps past the client timeout),
garbage (a 200 whose body is not JSON), noverdict (a valid completion that carries no verdict).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_openai import FakeOpenAI


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A fresh local OpenAI-compatible server per test, stopped when the test ends."""
    server = FakeOpenAI().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def judge_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """Name of an env var holding a throwaway key (the client reads keys only from the environment)."""
    monkeypatch.setenv("MOTE_TEST_JUDGE_KEY", "sk-test-secret-123")
    return "MOTE_TEST_JUDGE_KEY"
