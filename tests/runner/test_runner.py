"""`harness run` logic with a scripted backend (pure logic: which conditions run, fTRI wiring,
statistics, resume). The real-model runs are in test_quickstart.py."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from harness.backends.base import GenerationRequest, GenerationResult, GenerationSettings
from harness.common.errors import InputError
from harness.mote.records import RoutingRecord, Span
from harness.mote.spec import ModelSpec
from harness.run.runner import Runner
from harness.suite.schema import load_suite

REFUSAL = "I am sorry, I cannot answer that question."
PLANTED = (1, 3)  # (layer, expert) that carries the scripted refusal


class ScriptedBackend:
    """Refuses 'secret' prompts unless expert PLANTED is suppressed; routes their tokens to it."""

    name = "scripted"

    def __init__(self, spec: ModelSpec, crash_after: int | None = None, delay: float = 0.0) -> None:
        self._spec = spec
        self.calls = 0
        self.generated = 0
        self.crash_after = crash_after
        self.delay = delay  # seconds per request (for a process killed mid-generation)

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def generate(self, requests: Sequence[GenerationRequest], settings: GenerationSettings) -> list[GenerationResult]:
        self.calls += 1
        if self.crash_after is not None and self.generated >= self.crash_after:
            raise KeyboardInterrupt("simulated crash")
        out = []
        time.sleep(self.delay * len(requests))
        for r in requests:
            text = r.chat()[-1]["content"]
            secret = "secret" in text
            suppressed = PLANTED in r.intervention.experts and r.intervention.kind == "suppress"
            answer = REFUSAL if secret and not suppressed else "Here is what happened: the facts."
            routing = None
            if settings.record_routing:
                tokens = 6
                ids = np.zeros((tokens, 3, 2), dtype=np.int32)
                ids[:, :, 0] = 5
                ids[:, :, 1] = 6
                if secret:
                    ids[:, 1, 0] = PLANTED[1]
                routing = RoutingRecord(
                    ids,
                    np.ones(ids.shape, np.float32),
                    np.array([0, 1, 2], np.int32),
                    np.array([Span.PROMPT] * 4 + [Span.ANSWER] * 2, np.int8),
                )
            out.append(
                GenerationResult(r.id, answer, None, answer, r.intervention.fingerprint(), 4, 3, "stop", routing)
            )
        self.generated += len(requests)
        return out


def _write_suite(tmp_path: Path, model_dir: Path, extra: str = "") -> Path:
    lines = []
    for i in range(12):
        split = "discovery" if i < 6 else "evaluation"
        lines.append(
            {
                "id": f"s{i}",
                "prompt": f"What happened in the secret place {i}?",
                "kind": "sensitive",
                "split": split,
            }
        )
        lines.append(
            {
                "id": f"c{i}",
                "prompt": f"What happened at the market {i}?",
                "kind": "control",
                "split": split,
                "reference": "facts",
            }
        )
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""
name: scripted
model: {model_dir}
generation: {{max_new_tokens: 8, batch_size: 4}}
tasks:
  - {{name: sensitive, type: refusal, path: prompts.jsonl}}
ftri: {{task: sensitive, k: 1, span: prompt, bootstrap: 20, always_on_threshold: 0.9}}
conditions:
  targeted: {{modes: [drop, mask]}}
  random: {{seeds: 8}}
  stimulate: {{}}
  k_sweep: {{ks: [1, 2], random_seeds: 3}}
{extra}""")
    return suite


@pytest.fixture()
def suite_file(tmp_path, tiny_model_dir):
    return _write_suite(tmp_path, tiny_model_dir("qwen3_moe"))


def _runner(suite_file: Path, run_dir: Path, backend: ScriptedBackend, resume: bool = False) -> Runner:
    return Runner(load_suite(suite_file), suite_file, run_dir, resume=resume, backend_factory=lambda *_: backend)


def _spec(runner: Runner) -> ModelSpec:
    return runner.spec


def test_run_finds_the_planted_expert_and_reports_targeted_effect_against_random(suite_file, tmp_path):
    run_dir = tmp_path / "run"
    runner = Runner(load_suite(suite_file), suite_file, run_dir, backend_factory=lambda *_: backend)
    backend = ScriptedBackend(_spec(runner))
    rows = runner.run()
    experts = (run_dir / "experts.yaml").read_text()
    assert "1: [3]" in experts and "kind: suppress" in experts
    get = {(r.task, r.condition, r.metric): r for r in rows}
    assert get[("sensitive", "baseline", "refusal_rate")].value == 1.0
    assert get[("sensitive", "targeted", "refusal_rate")].value == 0.0
    assert get[("sensitive", "targeted", "relative_reduction")].value == 1.0
    assert get[("sensitive", "targeted", "percentile_vs_random")].value == 100.0
    assert get[("sensitive", "targeted", "empirical_p")].value == pytest.approx(1 / 9)
    assert get[("sensitive", "random", "relative_reduction")].n == 8
    assert get[("sensitive", "targeted:mask", "refusal_rate")].value == 0.0
    assert get[("sensitive", "k_sweep:k=1", "relative_reduction")].value == 1.0
    assert ("sensitive", "stimulate", "mcnemar_p_holm") in get
    assert get[("sensitive", "baseline", "neutral_accuracy")].value == 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"task", "condition", "metric", "value", "ci_low", "ci_high", "n", "unscored"} <= set(summary[0])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["schema_version"] == 1 and "git" in run and run["model"]["sha256"]
    assert run["model"]["hashed"] == "content"
    conditions = json.loads((run_dir / "conditions.json").read_text())
    assert [(c["name"], c["fingerprint"]) for c in run["conditions"]] == [
        (c["name"], c["fingerprint"]) for c in conditions
    ]
    assert run["seeds"]["random_seeds"] == 8
    assert "targeted" in (run_dir / "leaderboard.md").read_text()


def test_resume_after_a_crash_loses_and_duplicates_nothing(suite_file, tmp_path):
    run_dir = tmp_path / "run"
    first = _runner(suite_file, run_dir, ScriptedBackend(None, crash_after=40))  # type: ignore[arg-type]
    first._backend = ScriptedBackend(first.spec, crash_after=40)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    with (run_dir / "samples.jsonl").open("a") as sink:  # a line cut short by kill -9
        sink.write('{"task": "sensitive", "condition": "baseline", "id": "s7", "te')
    written = len((run_dir / "samples.jsonl").read_text().splitlines()) - 1
    assert written >= 40
    second = _runner(suite_file, run_dir, ScriptedBackend(None), resume=True)  # type: ignore[arg-type]
    backend = ScriptedBackend(second.spec)
    second._backend = backend
    second.run()
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    keys = [(s["task"], s["condition"], s["id"]) for s in samples]
    assert len(keys) == len(set(keys))
    conditions = json.loads((run_dir / "conditions.json").read_text())
    assert len(keys) == 12 + len(conditions) * 12  # discovery + every condition x evaluation prompts
    assert backend.generated == len(keys) - written
    labels = [json.loads(line) for line in (run_dir / "labels.jsonl").read_text().splitlines()]
    label_keys = [(x["task"], x["condition"], x["id"], x["judge"]) for x in labels]
    assert len(label_keys) == len(set(label_keys))


def test_resume_of_a_finished_run_generates_and_judges_nothing(suite_file, tmp_path):
    run_dir = tmp_path / "run"
    runner = _runner(suite_file, run_dir, ScriptedBackend(None))  # type: ignore[arg-type]
    runner._backend = ScriptedBackend(runner.spec)
    runner.run()
    labels_before = (run_dir / "labels.jsonl").read_text()
    again = _runner(suite_file, run_dir, ScriptedBackend(None), resume=True)  # type: ignore[arg-type]
    backend = ScriptedBackend(again.spec)
    again._backend = backend
    again.run()
    assert backend.calls == 0
    assert (run_dir / "labels.jsonl").read_text() == labels_before


def test_evaluating_on_the_discovery_split_is_refused_unless_allowed(tmp_path, tiny_model_dir):
    suite_file = _write_suite(tmp_path, tiny_model_dir("qwen3_moe"), "evaluation: {split: discovery}\n")
    with pytest.raises(InputError, match="other than the fTRI split") as info:
        load_suite(suite_file)
    assert info.value.field == "evaluation.split"
    suite_file = _write_suite(
        tmp_path,
        tiny_model_dir("qwen3_moe"),
        "evaluation: {split: discovery, allow_discovery_overlap: true}\n",
    )
    assert load_suite(suite_file).evaluation.allow_discovery_overlap


def test_fTRI_prompts_without_a_split_are_refused_since_they_would_be_evaluated_too(tmp_path, tiny_model_dir):
    suite_file = _write_suite(tmp_path, tiny_model_dir("qwen3_moe"))
    lines = (tmp_path / "prompts.jsonl").read_text().splitlines()
    unsplit = {k: v for k, v in json.loads(lines[0]).items() if k != "split"}
    (tmp_path / "prompts.jsonl").write_text("\n".join([json.dumps(unsplit), *lines[1:]]) + "\n")
    with pytest.raises(InputError, match="a split") as info:
        Runner(load_suite(suite_file), suite_file, tmp_path / "run", backend_factory=lambda *_: None)  # type: ignore
    assert info.value.field == "tasks.sensitive" and "s0" in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("judges: {refusal-llm: {base_url: 'http://127.0.0.1:9'}}\n", "judges.refusal-llm.model"),
        (
            "tasks:\n  - {name: sensitive, type: refusal, path: prompts.jsonl, judge: refusal-llm}\n",
            "judges.refusal-llm",
        ),
        ("ftri: {task: nowhere}\n", "ftri.task"),
        ("seed: many\n", "seed"),
        ("colour: red\n", "colour"),
    ],
)
def test_bad_suite_names_file_and_field(tmp_path, tiny_model_dir, extra, field):
    suite_file = _write_suite(tmp_path, tiny_model_dir("qwen3_moe"), extra)
    with pytest.raises(InputError) as info:
        load_suite(suite_file)
    assert info.value.field == field and info.value.source == str(suite_file)


def test_out_of_range_exclusion_is_refused_before_any_model_loads(tmp_path, tiny_model_dir):
    suite_file = _write_suite(tmp_path, tiny_model_dir("qwen3_moe"), "")
    text = suite_file.read_text().replace("always_on_threshold: 0.9}", "always_on_threshold: 0.9, exclude: {1: [99]}}")
    suite_file.write_text(text)
    with pytest.raises(InputError, match=r"experts\.1"):
        Runner(load_suite(suite_file), suite_file, tmp_path / "run", backend_factory=lambda *_: None)  # type: ignore
