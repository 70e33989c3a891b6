"""Prompt files: JSONL, one object a line with `id` and either `prompt` (string) or `messages`
(chat list of {role, content})."""

from __future__ import annotations

import re
from pathlib import Path

from harness.backends.base import GenerationRequest
from harness.common.errors import InputError
from harness.common.jsonl import objects_with_ids
from harness.mote.intervention import Intervention

_ROLES = {"system", "user", "assistant"}
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f]")


def read_prompts(path: str | Path, intervention: Intervention | None = None) -> list[GenerationRequest]:
    """Parse and validate the whole file before anything runs; errors name the line and field."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise InputError(path, "<file>", "a readable JSONL prompt file", str(err)) from None
    intervention = intervention or Intervention.none()
    requests: list[GenerationRequest] = []
    for where, rid, obj in objects_with_ids(path, lines):
        if _UNSAFE_ID.search(rid) or rid in (".", ".."):
            raise InputError(
                path,
                f"{where}: id",
                "an id usable as a file name, routing/<id>.npz (no '/', '\\' or control characters; "
                "not '.' or '..')",
                rid,
            )
        has_prompt, has_messages = "prompt" in obj, "messages" in obj
        if has_prompt == has_messages:
            raise InputError(path, where, "exactly one of 'prompt' or 'messages'")
        if has_prompt:
            if not isinstance(obj["prompt"], str):
                raise InputError(path, f"{where}: prompt", "a string", obj["prompt"])
            requests.append(GenerationRequest(id=rid, prompt=obj["prompt"], intervention=intervention))
            continue
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise InputError(path, f"{where}: messages", "a non-empty list of {role, content}", messages)
        for i, message in enumerate(messages):
            ok = (
                isinstance(message, dict)
                and message.get("role") in _ROLES
                and isinstance(message.get("content"), str)
            )
            if not ok:
                raise InputError(
                    path,
                    f"{where}: messages[{i}]",
                    f"an object with role in {sorted(_ROLES)} and string content",
                    message,
                )
        requests.append(GenerationRequest(id=rid, messages=messages, intervention=intervention))
    if not requests:
        raise InputError(path, "<file>", "at least one prompt line")
    return requests
