from __future__ import annotations

import pytest

from harness.mote.records import Span
from harness.mote.think import generated_spans, prompt_opens_think, split_think


@pytest.mark.parametrize(
    ("text", "think", "answer"),
    [
        ("<think>\nweigh it\n</think>\n\nThe answer.", "weigh it", "The answer."),
        ("<think>\n\n</think>\n\nI am sorry.", "", "I am sorry."),
        ("reasoning started by the template</think>answer", "reasoning started by the template", "answer"),
        ("<think>never closed", "never closed", ""),
        ("plain answer", None, "plain answer"),
    ],
)
def test_split_think(text, think, answer):
    assert split_think(text) == (think, answer)


def test_generated_spans_tag_tags_as_think_and_after_close_as_answer():
    pieces = ["<think>", "a", "b", "</think>", "\n", "ok"]
    assert generated_spans(pieces) == [Span.THINK] * 4 + [Span.ANSWER] * 2


def test_generated_spans_start_inside_trace_when_template_opened_it():
    assert prompt_opens_think("<|im_start|>assistant\n<think>\n")
    assert generated_spans(["x", "</think>", "y"], starts_in_think=True) == [
        Span.THINK,
        Span.THINK,
        Span.ANSWER,
    ]
    assert generated_spans(["x", "y"]) == [Span.ANSWER, Span.ANSWER]
