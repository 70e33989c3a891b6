"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions JSON, for judge tests.

The behaviour for each request is picked by a `MODE=<name>` tag in the last user message, so one
batch can mix healthy and faulty items: ok, 429, 500, timeout (sleeps past the client timeout),
garbage (a 200 whose body is not JSON), noverdict (a valid completion that carries no verdict).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_REPLY = "The answer declines.\nTHINK_VERDICT: empty\nANSWER_VERDICT: refused"
SLOW_SECONDS = 2.0


class FakeOpenAI:
    """Start with `start()`, stop with `stop()`; counts requests per mode."""

    def __init__(
        self, reply: Callable[[str], str] | None = None, key: str | None = None, models: set[str] | None = None
    ) -> None:
        """`key`: answer 401 to any other bearer key; `models`: answer 404 to any other model."""
        self.reply = reply or (lambda _user: DEFAULT_REPLY)
        self.key = key
        self.models = models
        self.force_mode: str | None = None  # set: every request answered in this mode (an outage, say)
        self.counts: Counter[str] = Counter()
        self.auth_headers: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                users = [m["content"] for m in body.get("messages", []) if m["role"] == "user"]
                user = users[-1] if users else ""
                found = re.search(r"MODE=(\w+)", user)
                mode = fake.force_mode or (found.group(1) if found else "ok")
                with fake._lock:
                    fake.counts[mode] += 1
                    fake.auth_headers.append(self.headers.get("authorization", ""))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self._answer(mode, user, body)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _answer(self, mode: str, user: str, body: dict[str, object]) -> None:
                if fake.key is not None and self.headers.get("authorization", "") != f"Bearer {fake.key}":
                    self._send(401, b'{"error": {"message": "Incorrect API key provided"}}', {})
                elif fake.models is not None and body.get("model") not in fake.models:
                    message = f"The model {body.get('model')} does not exist"
                    self._send(404, json.dumps({"error": {"message": message}}).encode(), {})
                elif mode in ("429", "500"):
                    self._send(int(mode), b'{"error": {"message": "try later"}}', {"retry-after-ms": "10"})
                elif mode == "garbage":
                    self._send(200, b"<html>not json at all {{{", {})
                else:
                    if mode == "timeout":
                        fake._release.wait(SLOW_SECONDS)
                    elif mode == "ok":
                        fake._release.wait(0.05)  # long enough for concurrent calls to overlap
                    content = "I looked at it but will not say." if mode == "noverdict" else fake.reply(user)
                    self._send(200, json.dumps(_completion(content, str(body.get("model")))).encode(), {})

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        return Handler


def _completion(content: str, model: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }
