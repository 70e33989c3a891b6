"""Persistent reply cache for judge calls (stdlib sqlite3).

The key covers everything that changes a judge's reply: endpoint, judge model, judge prompt id and
version, and the exact request (messages and sampling settings). A reply cached for one judge model
or prompt version can therefore never be served for another. Only successful replies are stored:
a failure is retried on the next run instead of being remembered.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from judges.labels import Usage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    request_json TEXT NOT NULL,
    reply TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL
)
"""


def cache_key(endpoint: str, model: str, prompt_id: str, prompt_version: str, request: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of everything that determines the reply."""
    payload = {
        "endpoint": endpoint.rstrip("/"),
        "model": model,
        "prompt_id": prompt_id,
        "prompt_version": prompt_version,
        "request": request,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplyCache:
    """One sqlite file; safe to reopen across runs. Use as a context manager to close it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path)
        self._conn.execute(_SCHEMA)
        self._conn.commit()

    def get(self, key: str) -> tuple[str, Usage] | None:
        row = self._conn.execute(
            "SELECT reply, prompt_tokens, completion_tokens FROM replies WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return str(row[0]), Usage(prompt_tokens=int(row[1]), completion_tokens=int(row[2]))

    def put(
        self,
        key: str,
        *,
        endpoint: str,
        model: str,
        prompt_id: str,
        prompt_version: str,
        request: dict[str, Any],
        reply: str,
        usage: Usage,
    ) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                endpoint,
                model,
                prompt_id,
                prompt_version,
                json.dumps(request, sort_keys=True, ensure_ascii=False),
                reply,
                usage.prompt_tokens,
                usage.completion_tokens,
            ),
        )
        self._conn.commit()

    def __len__(self) -> int:
        row = self._conn.execute("SELECT COUNT(*) FROM replies").fetchone()
        return int(row[0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ReplyCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
