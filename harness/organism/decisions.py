"""The decision record of one organism output, shared by the classifier and the judges beside it.

Its own module so that `evaluate` (which classifies and runs the judges) and `judged` (which
compares the judges with the classifier) both depend on it, and neither on the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.backends.base import GenerationResult
from harness.organism.corpus import Prompt

Label = Literal["refused", "aligned", "reasoned", "broken"]
ThinkLanguage = Literal["en", "zh", "none"]


@dataclass(frozen=True)
class Decision:
    """What the output decided (refuse / aligned / reasoned, or broken) and the language it thought in."""

    label: Label
    think_lang: ThinkLanguage


Row = tuple[Prompt, GenerationResult, Decision]
"""One output with the prompt it answers and its decision: the unit every measurement counts."""
