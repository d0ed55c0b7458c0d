"""A scripted OpenAI-compatible chat completions server on 127.0.0.1, port 0.

A real HTTP server (a thread), so the client code under test runs its real
httpx stack; nothing leaves loopback. Works in sync and async tests alike:

    with ScriptedOpenAI() as llm:
        llm.script(facts_reply(["The user is vegetarian."]), status_reply(429, headers=...))
        extractor = LlmExtractor(llm.base_url, "sk-test", "gpt-test")
        ...
        assert llm.requests[0].system == BUILTIN_EXTRACTION_PROMPT

Each `POST /v1/chat/completions` takes the next scripted `Reply`; when none
is left, the `default` answers (a `Reply`, or a function of the request;
`smart_reply` unless told otherwise: every user message is one fact, every
fact is ADDed). Every request is recorded, parsed, in `requests`.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from memoryd.extraction import DECISIONS_SCHEMA_NAME, FACTS_SCHEMA_NAME

PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, headers, body, sent after `delay_s` seconds
    (longer than the client's timeout to make it time out)."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0

    def delayed(self, seconds: float) -> Reply:
        """This reply, sent `seconds` later."""
        return replace(self, delay_s=seconds)


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received: `headers` with lower-case names, `body`
    the parsed JSON (None when it was not JSON)."""

    path: str
    headers: Mapping[str, str]
    body: Any

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return list(messages) if isinstance(messages, list) else []

    @property
    def system(self) -> str:
        """The content of the first system message ("" when none)."""
        return next((m["content"] for m in self.messages if m.get("role") == "system"), "")

    @property
    def user(self) -> str:
        """The content of the first user message ("" when none)."""
        return next((m["content"] for m in self.messages if m.get("role") == "user"), "")

    @property
    def data(self) -> Any:
        """The first user message parsed as JSON (the extractor's data)."""
        return json.loads(self.user)

    @property
    def schema_name(self) -> str | None:
        """`response_format.json_schema.name`: which step asked."""
        try:
            return str(self.body["response_format"]["json_schema"]["name"])
        except (KeyError, TypeError):
            return None


Default = Reply | Callable[[RecordedRequest], Reply]


def completion(
    content: str | Mapping[str, Any],
    *,
    prompt_tokens: int = 100,
    completion_tokens: int = 20,
    finish_reason: str = "stop",
) -> Reply:
    """A 200 chat completion whose `choices[0].message.content` is `content`
    (a string as it is, malformed or not; a mapping as JSON), with usage."""
    text = content if isinstance(content, str) else json.dumps(content)
    payload = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return Reply(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def facts_reply(facts: Iterable[str | tuple[str, Sequence[int]]], **usage: int) -> Reply:
    """An extraction answer: each fact a text, or (text, message indexes)."""
    listed = [
        {"text": f, "messages": []}
        if isinstance(f, str)
        else {"text": f[0], "messages": list(f[1])}
        for f in facts
    ]
    return completion({"facts": listed}, **usage)


def decision(
    fact: int, event: str, memory: str | None = None, text: str = "", reason: str = "scripted"
) -> dict[str, Any]:
    """One entry of a decision answer (`memory` is an alias such as "m1")."""
    return {"fact": fact, "event": event, "memory": memory, "text": text, "reason": reason}


def decisions_reply(decisions: Iterable[Mapping[str, Any]], **usage: int) -> Reply:
    """A decision answer from `decision(...)` entries."""
    return completion({"decisions": list(decisions)}, **usage)


def status_reply(
    status: int,
    body: str | bytes | Mapping[str, Any] = b"",
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """Any other answer: a status (429, 500, 401, ...) with headers and a body
    (bytes or text as they are, a mapping as JSON)."""
    if isinstance(body, Mapping):
        raw = json.dumps(body).encode()
    else:
        raw = body.encode() if isinstance(body, str) else body
    return Reply(status, raw, dict(headers or {}))


def smart_reply(request: RecordedRequest) -> Reply:
    """A plausible answer to either step: extraction makes every non-blank
    user message one fact; decision ADDs every fact as it is."""
    data = request.data
    if request.schema_name == FACTS_SCHEMA_NAME:
        return facts_reply(
            (m["content"].strip(), [m["index"]])
            for m in data["messages"]
            if m["role"] == "user" and m["content"].strip()
        )
    if request.schema_name == DECISIONS_SCHEMA_NAME:
        return decisions_reply(
            decision(f["fact"], "ADD", text=f["text"], reason="new") for f in data["facts"]
        )
    return status_reply(400, {"error": {"message": "unknown response_format"}})


class ScriptedOpenAI:
    """The server (see the module docstring). `start`/`stop`, or use it as a
    context manager. Thread-safe: the server answers on its own threads."""

    def __init__(self, *, default: Default = smart_reply) -> None:
        self.default = default
        self._queue: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    def script(self, *replies: Reply) -> None:
        """Queues replies, answered in order before the default."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """Scripted replies not yet sent."""
        with self._lock:
            return len(self._queue)

    def start(self) -> ScriptedOpenAI:
        self._stopping.clear()
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        return self

    def stop(self) -> None:
        """Stops serving; a reply still waiting out its delay is dropped."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> ScriptedOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _answer(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            if request.path != PATH:
                return status_reply(404, {"error": {"message": f"no route {request.path}"}})
            scripted = self._queue.popleft() if self._queue else None
        if scripted is not None:
            return scripted
        return self.default if isinstance(self.default, Reply) else self.default(request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = owner._answer(RecordedRequest(self.path, headers, body))
                if reply.delay_s and owner._stopping.wait(reply.delay_s):
                    return
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up first (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
