"""Errors a user can act on.

`InputError` is raised for bad user input (a prompt file, an intervention file, a suite) before any
model loads. Its message always names the file, the field and what was expected, so the CLI can
print it as is and exit 2.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A user-supplied file or argument is malformed or out of range."""

    def __init__(self, source: str | Path, field: str, expected: str, got: object = None) -> None:
        self.source = str(source)
        self.field = field
        self.expected = expected
        self.got = got
        got_text = "" if got is None else f" (got {got!r})"
        super().__init__(f"{self.source}: field '{field}': expected {expected}{got_text}")


class UnsupportedModelError(ValueError):
    """The model's architecture has no routing adapter."""


class ReplicasUnavailableError(RuntimeError):
    """Every served replica is down, or a request failed on all its tries: the run stops, --resume continues."""
