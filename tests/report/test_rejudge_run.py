"""`harness judge --run RUN_DIR`: a finished run re-labelled by another judge (its own labels untouched),
resumable, with the agreement of every pair of judges in the run folder and the HTML report; the real
`openai` client against a local server."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from fake_openai import FakeOpenAI

from harness.cli import main

KEY_ENV = "MOTE_REJUDGE_KEY"


def _always_reasoned(user: str) -> str:
    return "THINK_VERDICT: empty\nANSWER_VERDICT: reasoned"


@pytest.fixture
def run_copy(demo_run, tmp_path):
    return shutil.copytree(demo_run, tmp_path / "run")


@pytest.fixture
def strong_judge(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-strong")
    server = FakeOpenAI(_always_reasoned, key="sk-strong", models={"strong"}).start()
    yield server
    server.stop()


def _argv(run, server, key_env=KEY_ENV):
    return [
        "judge", "--run", str(run), "--judge", "refusal-llm", "--endpoint", server.base_url,
        "--judge-model", "strong", "--api-key-env", key_env, "--no-progress",
    ]  # fmt: skip


def test_a_finished_run_is_rejudged_without_touching_its_labels_and_agreement_is_written(
    run_copy, strong_judge, capsys
):
    own = (run_copy / "labels.jsonl").read_bytes()
    samples = [json.loads(x) for x in (run_copy / "samples.jsonl").read_text().splitlines()]
    refusal_samples = sum(s["task"] == "sensitive" for s in samples)
    assert main(_argv(run_copy, strong_judge)) == 0
    assert (run_copy / "labels.jsonl").read_bytes() == own
    labels = [json.loads(x) for x in (run_copy / "judges" / "refusal-llm@strong.jsonl").read_text().splitlines()]
    assert len(labels) == refusal_samples and {r["label"] for r in labels} == {"reasoned"}
    assert all(r["intervention"] for r in labels)
    rows = json.loads((run_copy / "judge_agreement.json").read_text())
    pairs = {(r["task"], r["a"], r["b"]) for r in rows}
    assert ("sensitive", "refusal-llm", "refusal-string") in pairs
    assert ("sensitive", "refusal-llm", "refusal-llm@strong (re-judged)") in pairs
    strong = next(r for r in rows if r["b"] == "refusal-llm@strong (re-judged)" and r["a"] == "refusal-llm")
    assert strong["n"] == refusal_samples and strong["kappa"] < 0.5  # the strong judge sees no refusal
    assert sum(c["count"] for c in strong["confusion"]) == strong["n"]
    out = capsys.readouterr().out
    assert "Cohen's kappa" in out and "refusal-llm@strong" in out
    calls = strong_judge.total
    assert main(_argv(run_copy, strong_judge)) == 0  # resumed: only the one-token check of the endpoint
    assert strong_judge.total == calls + 1
    assert main(["report", str(run_copy), "--format", "html", "--out", str(run_copy / "report")]) == 0
    page = (run_copy / "report" / "index.html").read_text()
    assert "Agreement between judges" in page and "refusal-llm@strong" in page


def test_rejudging_with_a_refused_key_or_no_run_exits_2_before_any_label(run_copy, strong_judge, monkeypatch, capsys):
    monkeypatch.setenv("MOTE_WRONG_KEY", "sk-wrong")
    assert main(_argv(run_copy, strong_judge, "MOTE_WRONG_KEY")) == 2
    assert "http 401" in capsys.readouterr().err
    assert not (run_copy / "judges").exists()
    assert main(["judge", "--run", str(run_copy.parent / "nowhere"), "--judge", "refusal-string"]) == 2
    flags = ["--in", str(run_copy / "samples.jsonl"), "--out", str(run_copy / "x.jsonl")]
    assert main(["judge", "--run", str(run_copy), "--judge", "refusal-string", *flags]) == 2


def test_an_offline_judge_rejudges_a_run_too(run_copy):
    assert main(["judge", "--run", str(run_copy), "--judge", "refusal-string", "--no-progress"]) == 0
    assert (run_copy / "judges" / "refusal-string.jsonl").is_file()
    rows = json.loads((run_copy / "judge_agreement.json").read_text())
    same = next(r for r in rows if r["a"] == "refusal-string" and r["b"] == "refusal-string (re-judged)")
    assert same["kappa"] == 1.0 and same["accuracy"] == 1.0


def test_primary_recomputes_the_summary_with_the_new_judge_and_keeps_the_experts(run_copy, strong_judge):
    def refusal_rate(summary):
        return next(
            r["value"]
            for r in summary
            if (r["task"], r["condition"], r["metric"]) == ("sensitive", "baseline", "refusal_rate")
        )

    before = json.loads((run_copy / "summary.json").read_text())
    experts = yaml.safe_load((run_copy / "experts.yaml").read_text())["experts"]
    samples = (run_copy / "samples.jsonl").read_bytes()
    assert refusal_rate(before) > 0
    assert main([*_argv(run_copy, strong_judge), "--primary"]) == 0
    after = json.loads((run_copy / "summary.json").read_text())
    assert refusal_rate(after) == 0.0  # the strong judge sees no refusal
    assert json.loads((run_copy / "summary-before-refusal-llm@strong.json").read_text()) == before
    assert yaml.safe_load((run_copy / "experts.yaml").read_text())["experts"] == experts  # discovery kept its judge
    assert (run_copy / "samples.jsonl").read_bytes() == samples  # nothing generated
