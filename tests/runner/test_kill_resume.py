"""`harness run --resume` after a real `kill -9`: once mid-generation, once mid-judging (LLM judge on a
local OpenAI-compatible server). Nothing is lost or duplicated, and no finished judge call is repeated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from test_runner import ScriptedBackend, _write_suite

from harness.run.run_store import RunStore
from harness.run.runner import Runner
from harness.suite.schema import load_suite
from judges.preflight import MESSAGE as PREFLIGHT

KEY_ENV = "MOTE_TEST_JUDGE_KEY"
CHILD = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {runner_tests!r}]
from test_runner import ScriptedBackend
from harness.run.runner import Runner
from harness.suite.schema import load_suite
suite_file, run_dir = Path({suite!r}), Path({run!r})
holder = {{}}
runner = Runner(load_suite(suite_file), suite_file, run_dir, backend_factory=lambda *_: holder["backend"])
holder["backend"] = ScriptedBackend(runner.spec, delay={delay})
runner.run()
"""


def _judge_reply(user: str) -> str:
    answer = user.split("<<<ANSWER>>>")[-1].split("<<<END ANSWER>>>")[0]
    verdict = "refused" if "I am sorry" in answer else "reasoned"
    return f"THINK_VERDICT: empty\nANSWER_VERDICT: {verdict}"


class CountingJudge(FakeOpenAI):
    """The fake judge, remembering every judged input (to find repeated calls; a run's one-token check
    of the judge before it starts is not a judged input)."""

    def __init__(self) -> None:
        self.inputs: list[str] = []
        super().__init__(self._reply)

    def _reply(self, user: str) -> str:
        if user == PREFLIGHT:
            return "OK"
        self.inputs.append(user)
        time.sleep(0.2)  # a slow judge: the kill lands while calls are in flight
        return _judge_reply(user)


@pytest.fixture()
def judge_server():
    server = CountingJudge().start()
    yield server
    server.stop()


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _kill_when(proc: subprocess.Popen[bytes], ready, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before the kill point")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the kill point was not reached in time")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("phase", ["generation", "judging"])
def test_resume_after_kill_9_loses_duplicates_and_rejudges_nothing(
    tmp_path, tiny_model_dir, judge_server, phase, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, "sk-local")
    endpoint = f'{{base_url: "{judge_server.base_url}", model: fake-judge, api_key_env: {KEY_ENV}}}'
    suite_file = _write_suite(
        tmp_path,
        tiny_model_dir("qwen3_moe"),
        "tasks:\n  - {name: sensitive, type: refusal, path: prompts.jsonl, judge: refusal-llm}\n"
        f"judges:\n  refusal-llm: {endpoint}\n",
    )
    run_dir = tmp_path / "run"
    here = Path(__file__).resolve().parent
    child = CHILD.format(
        tests=str(here.parent),
        runner_tests=str(here),
        suite=str(suite_file),
        run=str(run_dir),
        delay=0.01 if phase == "generation" else 0.0,
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        env={**os.environ, KEY_ENV: "sk-local"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples, labels = run_dir / "samples.jsonl", run_dir / "labels.jsonl"
    total_samples = 12 + 28 * 12  # discovery + 28 conditions x 12 evaluation prompts
    if phase == "generation":
        _kill_when(proc, lambda: 100 <= _lines(samples) < total_samples and _lines(labels) > 0)
    else:
        # discovery took 12 judge calls; kill in the first round of the evaluation's calls
        _kill_when(proc, lambda: _lines(samples) == total_samples and len(judge_server.inputs) >= 14)
    kept_samples, kept_labels, calls_before = _lines(samples), _lines(labels), len(judge_server.inputs)
    assert kept_samples < total_samples or phase == "judging"

    resumed = Runner(load_suite(suite_file), suite_file, run_dir, resume=True, backend_factory=lambda *_: backend)
    backend = ScriptedBackend(resumed.spec)
    rows = resumed.run()

    store = RunStore(run_dir)
    keys = [(r["task"], r["condition"], r["id"]) for r in store.records(samples)]
    assert (
        len(keys)
        == len(set(keys))
        == total_samples
        == 12 + 12 * len(json.loads((run_dir / "conditions.json").read_text()))
    )
    assert backend.generated == total_samples - kept_samples  # only what the kill cut off was generated again
    label_keys = [(r["task"], r["condition"], r["id"], r["judge"]) for r in store.records(labels)]
    assert len(label_keys) == len(set(label_keys))
    # refusal-llm, its refusal-string cross-check, and reference on the controls
    assert len(label_keys) == sum(3 if pid.startswith("c") else 2 for _, _, pid in keys)
    assert all(r["schema_version"] == 1 for r in store.records(labels))
    # every judge input was sent once, but for the calls in flight at the kill (at most the client's
    # concurrency): a finished call is in the reply cache and is never repeated
    repeated = len(judge_server.inputs) - len(set(judge_server.inputs))
    assert repeated <= 8, repeated
    assert len(judge_server.inputs) > calls_before  # the resumed run did judge what was left
    assert kept_labels <= len(label_keys)
    by_key = {(r.task, r.condition, r.metric): r for r in rows}
    assert by_key[("sensitive", "targeted", "refusal_rate")].value == 0.0
    assert by_key[("sensitive", "baseline", "refusal_rate")].value == 1.0
    agreement = by_key[("sensitive", "baseline", "judge_agreement_kappa")]  # LLM judge vs string match
    assert agreement.value == 1.0 and agreement.n == 12 and "refusal-string" in (agreement.note or "")
    assert json.loads((run_dir / "summary.json").read_text())
