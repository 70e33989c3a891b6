"""Split a reasoning model's output into its `<think>` trace and its answer, and tag token spans.

We split ourselves (lm-eval's think_end_token discards the trace). A template may open `<think>`
in the prompt (DeepSeek-R1 does), so the generated text can start inside the trace.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.mote.records import Span

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def split_think(text: str) -> tuple[str | None, str]:
    """(think, answer). think is None when the text has no trace; an unclosed trace has answer ''."""
    if THINK_CLOSE in text:
        head, _, answer = text.partition(THINK_CLOSE)
        think = head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head
        return think.strip(), answer.strip()
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        return stripped[len(THINK_OPEN) :].strip(), ""
    return None, text.strip()


def prompt_opens_think(prompt_text: str) -> bool:
    """True if the prompt (after the chat template) ends inside an open <think>."""
    return prompt_text.rfind(THINK_OPEN) > prompt_text.rfind(THINK_CLOSE)


def generated_spans(pieces: Sequence[str], starts_in_think: bool = False) -> list[Span]:
    """Span of each generated token, from its decoded text piece.

    A token that opens or closes the trace belongs to THINK; tokens after `</think>` are ANSWER;
    tokens before any `<think>` are ANSWER unless the prompt opened the trace.
    """
    spans: list[Span] = []
    text = ""
    for piece in pieces:
        before = _state(text, starts_in_think)
        text += piece
        after = _state(text, starts_in_think)
        in_think = "think" in (before, after) or (before, after) == ("outside", "done")
        spans.append(Span.THINK if in_think else Span.ANSWER)
    return spans


def _state(text: str, starts_in_think: bool) -> str:
    """'outside' (no trace yet), 'think' (inside a trace) or 'done' (after </think>)."""
    opened = text.rfind(THINK_OPEN)
    closed = text.rfind(THINK_CLOSE)
    if closed > opened:
        return "done"
    if opened >= 0 or starts_in_think:
        return "think"
    return "outside"
