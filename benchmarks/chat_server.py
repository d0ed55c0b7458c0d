"""A scripted OpenAI-compatible chat completions server for the
`conversations` suite: it answers every request at once and records how long
each one took to answer, so the suite can take the model's share out of an
operation's time.

The same answers as tests/helpers/openai_server.py's `smart_reply` (the
tests' helpers are not importable from here, and this one must time itself):
extraction makes every user message of the operation one fact, decision ADDs
every fact. HTTP/1.1 with keep-alive, as a real endpoint would answer.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from memoryd.extraction import DECISIONS_SCHEMA_NAME, FACTS_SCHEMA_NAME


@dataclass(frozen=True)
class Answered:
    """One request: which step asked (the schema name), when its handling
    began (`time.time()`, to match it with an operation's times) and how many
    seconds reading, answering and writing it took."""

    schema: str
    started: float
    seconds: float


class ChatServer:
    """The server on 127.0.0.1, port 0, on its own threads; a context manager."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answered: list[Answered] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    def __enter__(self) -> ChatServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def answered(self) -> list[Answered]:
        """Every request answered so far, in order (a copy)."""
        with self._lock:
            return list(self._answered)

    def _record(self, answered: Answered) -> None:
        with self._lock:
            self._answered.append(answered)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body are two writes: without TCP_NODELAY the body
            # waits for the client's delayed ACK (~40 ms on Linux)
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                started = time.time()
                t0 = time.perf_counter()
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = json.loads(raw)
                schema = str(body["response_format"]["json_schema"]["name"])
                data = next(m["content"] for m in body["messages"] if m["role"] == "user")
                content = _answer(schema, json.loads(data))
                payload = json.dumps(
                    {
                        "id": "chatcmpl-bench",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "bench",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": json.dumps(content)},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
                owner._record(Answered(schema, started, time.perf_counter() - t0))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _answer(schema: str, data: dict[str, Any]) -> dict[str, Any]:
    if schema == FACTS_SCHEMA_NAME:
        return {
            "facts": [
                {"text": m["content"].strip(), "messages": [m["index"]]}
                for m in data["messages"]
                if m["role"] == "user" and m["content"].strip()
            ]
        }
    if schema == DECISIONS_SCHEMA_NAME:
        return {
            "decisions": [
                {"fact": f["fact"], "event": "ADD", "memory": None, "text": f["text"], "reason": ""}
                for f in data["facts"]
            ]
        }
    raise ValueError(f"unknown response_format {schema!r}")
