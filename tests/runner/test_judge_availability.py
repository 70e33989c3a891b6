"""`harness run` calls every LLM judge the suite uses once before any model loads: a judge URL where
nothing listens, a refused key or an unserved model exits 2 naming the judge, the URL and what the
server answered, with the real `openai` client against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest
from fake_openai import FakeOpenAI
from test_runner import _write_suite

from harness.cli import main

KEY_ENV = "MOTE_TEST_PREFLIGHT_KEY"


@pytest.fixture
def server():
    fake = FakeOpenAI(_verdict, key="sk-right", models={"judge-model"}).start()
    try:
        yield fake
    finally:
        fake.stop()


def _verdict(user: str) -> str:
    """The scripted backend's refusals judged refused, its answers reasoned."""
    answer = user.split("<<<ANSWER>>>")[-1].split("<<<END ANSWER>>>")[0]
    return f"THINK_VERDICT: empty\nANSWER_VERDICT: {'refused' if 'I am sorry' in answer else 'reasoned'}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _suite(tmp_path, tiny_model_dir, base_url: str, model: str = "judge-model"):
    endpoint = f'{{base_url: "{base_url}", model: {model}, api_key_env: {KEY_ENV}}}'
    return _write_suite(
        tmp_path,
        tiny_model_dir("qwen3_moe"),
        "tasks:\n  - {name: sensitive, type: refusal, path: prompts.jsonl, judge: refusal-llm}\n"
        f"judges:\n  refusal-llm: {endpoint}\n",
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("nothing listens", "cannot connect"),
        ("wrong key", "http 401"),
        ("unserved model", "http 404"),
    ],
)
def test_a_judge_that_cannot_answer_stops_the_run_before_any_model_loads(
    tmp_path, tiny_model_dir, server, monkeypatch, capsys, case, expected
):
    monkeypatch.setenv(KEY_ENV, "sk-wrong" if case == "wrong key" else "sk-right")
    url = f"http://127.0.0.1:{_free_port()}/v1" if case == "nothing listens" else server.base_url
    suite = _suite(tmp_path, tiny_model_dir, url, "other-model" if case == "unserved model" else "judge-model")
    assert main(["run", str(suite), "--out", str(tmp_path / "runs"), "--run-id", "r"]) == 2
    err = capsys.readouterr().err
    assert "judges.refusal-llm" in err and url in err and expected in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_judge_that_answers_passes_with_one_call(tmp_path, tiny_model_dir, server, monkeypatch):
    from harness.run.runner import Runner
    from harness.suite.schema import load_suite

    monkeypatch.setenv(KEY_ENV, "sk-right")
    suite = _suite(tmp_path, tiny_model_dir, server.base_url)
    Runner(load_suite(suite), suite, tmp_path / "run", backend_factory=lambda *_: None)  # type: ignore[arg-type]
    assert server.total == 1
    Runner(load_suite(suite), suite, tmp_path / "run", check_judges=False)
    assert server.total == 1  # --skip-judge-check makes no call


def test_a_judge_that_fails_mid_run_stops_it_and_resume_finishes_it(tmp_path, tiny_model_dir, server, monkeypatch):
    from test_runner import ScriptedBackend

    from harness.run.runner import Runner
    from harness.suite.schema import load_suite
    from judges.health import JudgeUnavailableError

    monkeypatch.setenv(KEY_ENV, "sk-right")
    suite = _suite(tmp_path, tiny_model_dir, server.base_url)
    run_dir = tmp_path / "run"
    runner = Runner(load_suite(suite), suite, run_dir, backend_factory=lambda *_: backend)
    backend = ScriptedBackend(runner.spec)
    server.force_mode = "500"  # the judge goes down after the check before the run
    with pytest.raises(JudgeUnavailableError, match=r"judge refusal-llm at .*: 12 of 12 calls failed") as info:
        runner.run()
    assert "--resume" in str(info.value) and "500" in str(info.value)
    labels = run_dir / "labels.jsonl"
    stored = labels.read_text() if labels.exists() else ""
    assert '"refusal-llm"' not in stored  # nothing of the failed batch was labelled
    server.force_mode = None
    again = Runner(
        load_suite(suite), suite, run_dir, resume=True, backend_factory=lambda *_: ScriptedBackend(runner.spec)
    )
    rows = again.run()
    assert '"refusal-llm"' in labels.read_text()
    assert any(r.metric == "refusal_rate" for r in rows)


def test_the_cli_says_stopped_and_exits_3_when_the_judge_keeps_failing(
    tmp_path, tiny_model_dir, server, monkeypatch, capsys
):
    from harness.run import runner as runner_module

    monkeypatch.setenv(KEY_ENV, "sk-right")
    suite = _suite(tmp_path, tiny_model_dir, server.base_url)
    original = runner_module.Runner._check_judges

    def check_then_fail(self):
        original(self)
        server.force_mode = "500"

    monkeypatch.setattr(runner_module.Runner, "_check_judges", check_then_fail)
    code = main(["run", str(suite), "--out", str(tmp_path / "runs"), "--run-id", "r"])
    err = capsys.readouterr().err
    assert code == 3 and "stopped: judge refusal-llm" in err and "Traceback" not in err
