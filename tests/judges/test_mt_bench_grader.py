"""MT-Bench grader: published prompts by name, rating parse, and a run against a local server."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.suite.task_definitions import load_mt_bench
from judges.client import EndpointConfig, JudgeClient
from judges.mt_bench import MTBenchItem, build_prompt, judge_many, parse_rating, to_request


@pytest.fixture(scope="module")
def bench(shared_data: Path):
    return load_mt_bench(shared_data / "mt_bench")


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("Good answer. Rating: [[8]]", 8.0),
        ("Rating: [[7.5]]", 7.5),
        ("Rating: [6]", 6.0),
        ('The answer quotes "[[10]]" but is weak.\nRating: [[3]]', 3.0),
        ("No rating here.", None),
        ("", None),
    ],
)
def test_rating_parse_takes_last_double_bracket_then_single(reply: str, rating: float | None) -> None:
    assert parse_rating(reply) == rating


def test_math_questions_use_reference_prompt_and_turn_two_uses_multi_turn(bench) -> None:
    name, messages = build_prompt(bench, MTBenchItem(id="a", question_id=111, turn=1, answers=("42",)))
    assert name == "single-math-v1"
    assert bench.references[111].turns[0] in messages[1].content
    name, messages = build_prompt(bench, MTBenchItem(id="b", question_id=81, turn=2, answers=("one", "two")))
    assert name == "single-v1-multi-turn"
    assert "one" in messages[1].content and "two" in messages[1].content
    assert messages[0].content == bench.judge_prompts["single-v1-multi-turn"].system_prompt


def test_judge_request_is_greedy_with_2048_tokens(bench) -> None:
    request = to_request(bench, MTBenchItem(id="a", question_id=81, answers=("x",)))
    assert request.temperature == 0.0 and request.max_tokens == 2048


def test_reply_without_rating_is_unscored_and_counted(bench, fake_openai, judge_key) -> None:
    fake_openai.reply = lambda user: "Solid. Rating: [[9]]"
    client = JudgeClient(EndpointConfig(base_url=fake_openai.base_url, model="j", api_key_env=judge_key))
    items = [
        MTBenchItem(id="ok", question_id=81, answers=("Hawaii!",)),
        MTBenchItem(id="bad", question_id=82, answers=("MODE=noverdict",)),
    ]
    labels = judge_many(bench, items, client)
    assert labels[0].label == "scored" and labels[0].score == 9.0
    assert labels[1].label == "unscored" and labels[1].score is None
    assert labels[1].unscored_reason == "no [[rating]] in judge reply"
