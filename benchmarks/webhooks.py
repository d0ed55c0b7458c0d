"""The `webhooks` suite: signed webhook deliveries from a real `memoryd
serve` process to a local endpoint (a threaded HTTP/1.1 server with
keep-alive on 127.0.0.1, answering 204 at once; every 50th request's
signature is checked with the `standardwebhooks` package). The server runs
with its settings (the real embedding model by default), the loopback
network allowed as a webhook target and the fan-out polling every 0.1 s.
Measured, in one run:

- write throughput: CreateMemory from `concurrency` clients for `seconds`
  with no webhook in the server, then with 10 webhooks on the environment
  written to (every write is 10 deliveries); the ratio of the two;
- end-to-end: of the writes of the second measurement, when their last
  delivery arrived, and deliveries/s over that time;
- delivery throughput: `events` memories written at once (batches of 100)
  to an environment with 10 webhooks, then deliveries/s from the first
  write to the last delivery, the delay of the last one, and the server's
  CPU per delivery;
- slow endpoints: CreateMemory again, to an environment whose 10 webhooks
  take 2 s to answer each (their deliveries pile up; the writes must not).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from grpc import aio
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from benchmarks.harness import HIGH_LIMITS, Result, ServerProcess, drive
from benchmarks.memory import corpus
from memoryd.config import Settings
from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

WEBHOOKS = 10
CHECK_EVERY = 50  # signatures checked with standardwebhooks, one request in this many
SLOW_S = 2.0  # a slow endpoint's answer
_ARRIVE_WITHIN_S = 600.0


@dataclass
class Sink:
    """The endpoint: counts requests, keeps their arrival times, checks a
    sample of signatures (by the path's webhook index)."""

    delay_s: float = 0.0  # how long each answer takes (a slow endpoint)
    secrets: dict[str, str] = field(default_factory=dict)
    arrivals: list[float] = field(default_factory=list)
    checked: int = 0
    bad: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def __enter__(self) -> Sink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with sink._lock:
                    sink.arrivals.append(time.perf_counter())
                    n = len(sink.arrivals)
                if n % CHECK_EVERY == 0:
                    sink._check(self.path, body, {k: v for k, v in self.headers.items()})
                if sink.delay_s:
                    time.sleep(sink.delay_s)
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/{path}"

    def _check(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        secret = self.secrets.get(path.strip("/"))
        try:
            if secret is None:
                raise WebhookVerificationError("no such webhook")
            StandardWebhook(secret).verify(body, headers)
            ok = True
        except WebhookVerificationError:
            ok = False
        with self._lock:
            self.checked += 1
            self.bad += 0 if ok else 1

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.arrivals)

    def count_before(self, t: float) -> int:
        """How many requests arrived before `t` (perf_counter)."""
        with self._lock:
            return sum(1 for a in self.arrivals if a < t)

    async def until(self, n: int) -> float:
        """When (perf_counter) the `n`-th request arrived; waits for it."""
        deadline = time.monotonic() + _ARRIVE_WITHIN_S
        while self.count < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.count} of {n} deliveries arrived in time")
            await asyncio.sleep(0.02)
        with self._lock:
            return sorted(self.arrivals)[n - 1]


@dataclass
class Env:
    """A data key of one environment, and the stubs to use it."""

    md: tuple[tuple[str, str], ...]
    memory: memory_pb2_grpc.MemoryServiceAsyncStub
    webhooks: webhooks_pb2_grpc.WebhookServiceAsyncStub


async def _environment(channel: aio.Channel, owner_key: str, name: str) -> Env:
    owner = (("x-api-key", owner_key),)
    project = await admin_pb2_grpc.AdminServiceStub(channel).CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name=name)), metadata=owner
    )
    made = await keys_pb2_grpc.KeyServiceStub(channel).CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            project_id=project.id,
            environment_id=project.environments[0].id,
            name="bench",
            scopes=["memory:*", "webhook:read", "webhook:write", "webhook:delete"],
        ),
        metadata=owner,
    )
    return Env(
        (("x-api-key", made.secret),),
        memory_pb2_grpc.MemoryServiceStub(channel),
        webhooks_pb2_grpc.WebhookServiceStub(channel),
    )


async def _attach(env: Env, sink: Sink, prefix: str) -> None:
    for i in range(WEBHOOKS):
        path = f"{prefix}{i}"
        made = await env.webhooks.CreateWebhook(
            webhooks_pb2.CreateWebhookRequest(webhook=webhooks_pb2.Webhook(url=sink.url(path))),
            metadata=env.md,
        )
        sink.secrets[path] = made.secret


async def run_webhooks(settings: Settings, seconds: float, concurrency: int, events: int) -> None:
    extra = {
        **HIGH_LIMITS,
        "MEMORYD_OUTBOUND_ALLOW_NETWORKS": "127.0.0.0/8",
        "MEMORYD_WEBHOOK_POLL_INTERVAL_S": "0.1",
    }
    texts = itertools.cycle(f.content for f in corpus(5000, 50, seed=23))
    with Sink() as sink:
        async with ServerProcess(settings, extra_env=extra) as server:
            channel = aio.insecure_channel(server.address)
            try:
                print(
                    f"webhooks: {WEBHOOKS} webhooks per environment, endpoint on loopback "
                    f"(HTTP/1.1, 204 at once), embedder {settings.embedding_provider}, "
                    f"database {'PostgreSQL' if settings.database_url else 'SQLite'}",
                    flush=True,
                )
                for line in await _writes(
                    channel, server.owner_key, sink, texts, seconds, concurrency
                ):
                    print(line, flush=True)
                for line in await _burst(channel, server, sink, texts, events):
                    print(line, flush=True)
                # last: its backlog is never worked off
                for line in await _slow(channel, server.owner_key, texts, seconds, concurrency):
                    print(line, flush=True)
                print(
                    f"  signatures checked with standardwebhooks: {sink.checked}, "
                    f"failed: {sink.bad}",
                    flush=True,
                )
            finally:
                await channel.close(None)


async def _writes(
    channel: aio.Channel,
    owner_key: str,
    sink: Sink,
    texts: Any,
    seconds: float,
    concurrency: int,
) -> list[str]:
    env = await _environment(channel, owner_key, "writes")

    async def create() -> Any:
        return await env.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=next(texts))),
            metadata=env.md,
            timeout=30,
        )

    none = await drive("CreateMemory, no webhook", create, seconds, concurrency)
    await _attach(env, sink, "w")
    before = sink.count
    started = time.perf_counter()
    ten = await drive(f"CreateMemory, {WEBHOOKS} webhooks", create, seconds, concurrency)
    written = ten.calls + 20  # drive's warm-up calls write too
    expected = before + written * WEBHOOKS
    last = await sink.until(expected)
    lines = [
        none.line(),
        ten.line(),
        f"  write throughput with {WEBHOOKS} webhooks / none: {_ratio(ten, none):.2f}",
        f"  {written * WEBHOOKS} deliveries of those writes, the last "
        f"{last - started - ten.seconds:.2f} s after the writes ended: "
        f"{written * WEBHOOKS / (last - started):.0f} deliveries/s",
    ]
    return lines


async def _burst(
    channel: aio.Channel, server: ServerProcess, sink: Sink, texts: Any, events: int
) -> list[str]:
    env = await _environment(channel, server.owner_key, "burst")
    await _attach(env, sink, "b")
    before = sink.count
    started = time.perf_counter()
    for start in range(0, events, 100):
        n = min(100, events - start)
        await env.memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(
                requests=[
                    memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=next(texts)))
                    for _ in range(n)
                ]
            ),
            metadata=env.md,
            timeout=120,
        )
    written = time.perf_counter()
    cpu = server.cpu_seconds()
    last = await sink.until(before + events * WEBHOOKS)
    # what the server spent on the deliveries once the writes were done
    # (they go on while the last ones are written: an upper bound per delivery)
    spent = server.cpu_seconds() - cpu
    delivered_after = before + events * WEBHOOKS - sink.count_before(written)
    return [
        f"burst: {events} memories written in {written - started:.2f} s "
        f"(batches of 100), {events * WEBHOOKS} deliveries",
        f"  deliveries/s from the first write to the last delivery: "
        f"{events * WEBHOOKS / (last - started):.0f}; the last arrived "
        f"{last - written:.2f} s after the writes",
        f"  server CPU per delivery made after the writes: "
        f"{spent * 1000 / max(delivered_after, 1):.2f} ms "
        f"({spent / max(last - written, 1e-9):.2f} cores)",
    ]


async def _slow(
    channel: aio.Channel, owner_key: str, texts: Any, seconds: float, concurrency: int
) -> list[str]:
    """Writes while the environment's 10 webhooks answer in 2 s each."""
    env = await _environment(channel, owner_key, "slow")

    async def create() -> Any:
        return await env.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=next(texts))),
            metadata=env.md,
            timeout=30,
        )

    with Sink(delay_s=SLOW_S) as slow:
        await _attach(env, slow, "s")
        result = await drive(
            f"CreateMemory, {WEBHOOKS} webhooks of {SLOW_S:g} s", create, seconds, concurrency
        )
        return [result.line(), f"  deliveries answered meanwhile: {slow.count}"]


def _ratio(a: Result, b: Result) -> float:
    return a.rps / b.rps if b.rps else float("nan")
