"""MT-Bench inside `harness run`: two turns per question (turn 2 with the condition's own turn-1
answer), per-category temperature, graded by the published judge prompts over a real local HTTP
server that speaks the OpenAI API."""

from __future__ import annotations

import json

import pytest
from fake_openai import FakeOpenAI
from test_runner import ScriptedBackend

from harness.run.runner import Runner
from harness.suite.schema import load_suite


@pytest.fixture()
def grader():
    # A multi-turn judge prompt shows the whole conversation; rate it 6, single turns 8, one garbage reply.
    def reply(user: str) -> str:
        if "Can you rephrase your previous answer" in user:
            return "I cannot decide."
        return "Rating: [[6]]" if "Conversation with User" in user else "Rating: [[8]]"

    server = FakeOpenAI(reply).start()
    yield server
    server.stop()


def test_mt_bench_scores_both_turns_under_every_condition(tmp_path, tiny_model_dir, shared_data, grader, monkeypatch):
    monkeypatch.setenv("MOTE_TEST_KEY", "sk-local")
    (tmp_path / "p.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "id": f"s{i}",
                    "prompt": f"What happened in the secret place {i}?",
                    "kind": "sensitive",
                    "split": "evaluation",
                }
            )
            + "\n"
            for i in range(4)
        )
    )
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(f"""
name: mtb
model: {tiny_model_dir("qwen3_moe")}
generation: {{max_new_tokens: 8, batch_size: 8}}
tasks:
  - {{name: sensitive, type: refusal, path: p.jsonl}}
  - {{name: mtbench, type: mt_bench, path: {shared_data / "mt_bench"}, limit: 1}}
judges:
  mt-bench: {{base_url: "{grader.base_url}", model: grader, api_key_env: MOTE_TEST_KEY}}
conditions:
  targeted: {{intervention: iv.yaml}}
  random: {{seeds: 3}}
""")
    (tmp_path / "iv.yaml").write_text("kind: suppress\nexperts: {1: [3]}\n")
    runner = Runner(load_suite(suite_file), suite_file, tmp_path / "run", backend_factory=lambda *_: backend)
    backend = ScriptedBackend(runner.spec)
    rows = runner.run()
    get = {(r.task, r.condition, r.metric): r for r in rows}
    base = get[("mtbench", "baseline", "mt_bench_score")]
    assert base.n + base.unscored == 16  # 8 categories x 1 question x 2 turns
    assert 6.0 <= base.value <= 8.0
    assert get[("mtbench", "targeted", "mt_bench_score_delta")].value == pytest.approx(0.0)
    assert ("mtbench", "baseline", "mt_bench_score:writing") in get
    assert get[("mtbench", "random", "mt_bench_score_delta")].n == 3
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    turn2 = [s for s in samples if s["task"] == "mtbench" and s["id"].endswith("/turn2")]
    assert len(turn2) == 8 * 5  # every question under every condition
    again = Runner(
        load_suite(suite_file),
        suite_file,
        tmp_path / "run",
        resume=True,
        backend_factory=lambda *_: ScriptedBackend(runner.spec),
    )
    calls = grader.total  # after the resumed runner's one-token check of the judge
    again.run()
    assert grader.total == calls  # nothing judged twice
