"""A webhook endpoint for tests: a real HTTP server on 127.0.0.1, port 0
(a thread), that records every POST and answers scripted statuses.

    with Receiver() as hook:
        hook.script(500, 200)        # the next two answers; then `default`
        ... create a webhook with hook.url, write a memory ...
        [event] = await hook.wait_verified(secret, 1)   # standardwebhooks' check

`verified(secret)` checks each request with `standardwebhooks.Webhook` (a
third party's implementation of the specification, not ours) and answers
the parsed bodies of those that pass. `https=(cert, key)` serves TLS.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass(frozen=True)
class Received:
    """One request: its path, headers (lower-case names) and raw body."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    client_port: int = 0  # tells connections apart

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def signatures(self) -> list[str]:
        return self.headers.get("webhook-signature", "").split(" ")

    def verifies(self, secret: str) -> bool:
        """Whether `standardwebhooks` accepts the request with `secret`."""
        try:
            StandardWebhook(secret).verify(self.body, dict(self.headers))
        except WebhookVerificationError:
            return False
        return True


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a timeout under test) is not an error here."""


class Receiver:
    def __init__(
        self,
        default: int = 200,
        *,
        delay_s: float = 0.0,
        https: tuple[Path, Path] | None = None,
        headers: Mapping[str, str] | None = None,
        keep_alive: bool = False,
        body: bytes = b"ok",
    ) -> None:
        """`keep_alive`: HTTP/1.1 with persistent connections (else HTTP/1.0,
        one request per connection); `body`: what a non-204 answer carries."""
        self.default = default
        self.delay_s = delay_s
        self.keep_alive = keep_alive
        self.body = body
        self.extra_headers = dict(headers or {})
        self.requests: list[Received] = []
        self._script: deque[int] = deque()
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.scheme = "http"
        if https is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(https[0]), str(https[1]))
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/hooks"

    def script(self, *statuses: int) -> None:
        """The statuses of the next answers, in order (then `default`)."""
        with self._lock:
            self._script.extend(statuses)

    def verified(self, secret: str) -> list[Any]:
        """The bodies of the requests `secret` verifies, parsed."""
        return [r.json for r in list(self.requests) if r.verifies(secret)]

    async def wait_requests(self, n: int, within: float = 20.0) -> list[Received]:
        """Returns once `n` requests arrived (fails after `within` s)."""
        deadline = time.monotonic() + within
        while len(self.requests) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.requests)} of {n} requests arrived in time")
            await asyncio.sleep(0.02)
        return list(self.requests)

    async def wait_verified(self, secret: str, n: int, within: float = 20.0) -> list[Any]:
        """Returns the verified bodies once `n` arrived."""
        deadline = time.monotonic() + within
        while len(found := self.verified(secret)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {n} verified requests arrived in time")
            await asyncio.sleep(0.02)
        return found

    def _next_status(self) -> int:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if receiver.keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._next_status()
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, headers, body, self.client_address[1])
                    )
                self.send_response(status)
                for k, v in receiver.extra_headers.items():
                    self.send_header(k, v)
                answer = b"" if status in (204, 304) else receiver.body
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                return None

        return Handler

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
