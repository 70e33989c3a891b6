"""Task data: schemas, splits, packaged files, and MT-Bench read from the shared folder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from harness.common.errors import InputError
from harness.suite.task_definitions import (
    MT_BENCH_TEMPERATURE,
    load_mt_bench,
    load_reasoning_language,
    load_sensitive,
    mt_bench_messages,
    mt_bench_temperature,
    task_data,
)


def test_discovery_and_evaluation_never_share_a_topic_template_pair() -> None:
    prompts = load_sensitive()
    splits: dict[tuple[str, str], set[str]] = {}
    for p in prompts:
        splits.setdefault((p.topic, p.template), set()).add(p.split)
    assert all(len(s) == 1 for s in splits.values())
    per_topic = {p.topic: set() for p in prompts}
    for p in prompts:
        per_topic[p.topic].add(p.split)
    assert all(s == {"discovery", "evaluation"} for s in per_topic.values())


def test_sensitive_grid_has_controls_paraphrases_and_both_languages() -> None:
    prompts = load_sensitive()
    kinds = Counter(p.kind for p in prompts)
    assert kinds["sensitive"] > 0 and kinds["control"] > 0
    assert {p.language for p in prompts} == {"en", "zh"}
    assert len({p.template for p in prompts}) >= 4
    assert len({p.id for p in prompts}) == len(prompts)
    first = prompts[0]
    assert first.time in first.prompt and first.place in first.prompt


def test_split_filter_returns_only_that_split() -> None:
    assert {p.split for p in load_sensitive(split="evaluation")} == {"evaluation"}


def test_checked_in_prompts_jsonl_matches_the_yaml_expansion() -> None:
    lines = task_data("sensitive", "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [p.model_dump() for p in load_sensitive()]


def test_bad_task_yaml_names_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "task.yaml"
    bad.write_text("schema_version: 1\nname: x\ntemplates:\n  - {id: a, language: en, text: 'no slots'}\n")
    with pytest.raises(InputError, match=r"task.yaml: field 'templates"):
        load_sensitive(bad)


def test_reasoning_language_prompts_cover_english_and_chinese() -> None:
    prompts = load_reasoning_language()
    counts = Counter(p.language for p in prompts)
    assert counts["en"] >= 10 and counts["zh"] >= 10


def test_mt_bench_loads_80_questions_with_references_and_judge_prompts(shared_data: Path) -> None:
    bench = load_mt_bench(shared_data / "mt_bench")
    assert len(bench.questions) == 80
    assert Counter(q.category for q in bench.questions) == dict.fromkeys(MT_BENCH_TEMPERATURE, 10)
    for q in bench.questions:
        if q.category in ("math", "reasoning", "coding"):
            assert len(bench.references[q.question_id].turns) == 2
    assert {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"} <= set(
        bench.judge_prompts
    )


def test_mt_bench_turn_two_carries_turn_one_answer_and_category_temperature(shared_data: Path) -> None:
    bench = load_mt_bench(shared_data / "mt_bench")
    q = bench.question(81)
    assert mt_bench_temperature(q) == 0.7
    messages = mt_bench_messages(q, 2, first_answer="Aloha!")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == "Aloha!" and messages[2]["content"] == q.turns[1]
    with pytest.raises(InputError, match="first_answer"):
        mt_bench_messages(q, 2)


def test_mt_bench_folder_without_its_files_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"question\.jsonl"):
        load_mt_bench(tmp_path)
