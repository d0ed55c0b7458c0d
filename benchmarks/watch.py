"""The `watch` suite: WatchMemories against a real `memoryd serve` process
(rate limits no call reaches). Measured, in one run:

- calibration: health Check with the Python client (the auth suite's
  first figure), to scale the rest on a shared machine;
- write → watcher latency: one watcher of an environment; one writer
  making CreateMemory calls at a steady `rate` per second for `seconds`;
  for each memory, the time from the start of its CreateMemory call to the
  watcher reading its CREATED event (p50, p99), beside the CreateMemory
  call's own latency, and how many events arrived;
- writes with watchers attached: CreateMemory (`concurrency` callers) and
  BatchCreateMemories (100 memories per call, 4 callers) for `seconds`
  each, with no watcher and with `watchers` watchers of the same
  environment (each receives every event), alternated twice; the ratio of
  the throughputs and the server's CPU time per memory written. The
  watchers run in a separate process (so their reading does not take this
  process's CPU), and say how many events they read (all of them unless
  they fell behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import HIGH_LIMITS, Result, ServerProcess, drive, percentile
from memoryd.config import Settings
from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)

_BATCH = 100
_BATCH_CALLERS = 4
_EVENTS_WITHIN_S = 60.0
_MAX_IN_FLIGHT = 64


@dataclass
class _Tenant:
    md: tuple[tuple[str, str], ...]
    memory: memory_pb2_grpc.MemoryServiceAsyncStub


async def _tenant(channel: aio.Channel, owner_key: str, name: str) -> tuple[str, _Tenant]:
    owner = (("x-api-key", owner_key),)
    project = await admin_pb2_grpc.AdminServiceStub(channel).CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name=name)), metadata=owner
    )
    created = await keys_pb2_grpc.KeyServiceStub(channel).CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            project_id=project.id,
            environment_id=project.environments[0].id,
            name="bench",
            scopes=["memory:*"],
        ),
        metadata=owner,
    )
    md = (("x-api-key", created.secret),)
    return created.secret, _Tenant(md, memory_pb2_grpc.MemoryServiceStub(channel))


class _Watch:
    """A WatchMemories stream from now, read by a task into a queue of
    (arrival time, event), or, once `on_event` is set, only counted by it."""

    def __init__(self, t: _Tenant, on_event: Callable[[], None] | None = None) -> None:
        self._t = t
        self.on_event = on_event
        self.stream = t.memory.WatchMemories(memory_pb2.WatchMemoriesRequest(), metadata=t.md)
        self.events: asyncio.Queue[tuple[float, memory_pb2.MemoryEvent]] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.stream:
                if self.on_event is not None:
                    self.on_event()
                else:
                    self.events.put_nowait((time.perf_counter(), event))
        except grpc.RpcError:
            return

    async def live(self) -> None:
        """Returns once a marker written after the stream began has arrived."""
        t = self._t
        while True:
            marker = f"marker {time.perf_counter()}"
            await t.memory.CreateMemory(
                memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=marker)),
                metadata=t.md,
            )
            try:
                while True:
                    _, event = await asyncio.wait_for(self.events.get(), 2.0)
                    if event.memory.content == marker:
                        return
            except TimeoutError:
                continue  # the stream began after the marker: write another

    async def close(self) -> None:
        self.stream.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def run_watch(
    settings: Settings, seconds: float, concurrency: int, rate: float, watchers: int
) -> None:
    print(
        f"-- watch suite: embedding {settings.embedding_provider}; writes at {rate:.0f}/s for "
        f"the latency; {watchers} watchers for the throughput",
        flush=True,
    )
    async with ServerProcess(settings, extra_env=HIGH_LIMITS) as server:
        channel = aio.insecure_channel(server.address)
        # the machine's speed now (the auth suite's first figure, for scale)
        health = health_pb2_grpc.HealthStub(channel)
        check = await drive(
            "calibration: health Check, 16 in flight",
            lambda: health.Check(health_pb2.HealthCheckRequest()),
            3.0,
            16,
        )
        print(check.line(), flush=True)
        key, tenant = await _tenant(channel, server.owner_key, "watched")
        for line in await _latency(tenant, rate, seconds):
            print(line, flush=True)
        for line in await _throughput(server, tenant, key, seconds, concurrency, watchers):
            print(line, flush=True)
        await channel.close(None)


async def _latency(t: _Tenant, rate: float, seconds: float) -> list[str]:
    watch = _Watch(t)
    await watch.live()
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    call_ms: list[float] = []
    n = int(rate * seconds)
    errors = 0
    # calls in flight at most (a server slower than `rate` makes the writer lag,
    # said by the achieved rate, instead of flooding the connection)
    room = asyncio.Semaphore(_MAX_IN_FLIGHT)

    async def read() -> None:
        while len(arrived) < n - errors:
            at, event = await watch.events.get()
            if event.memory.content.startswith("latency "):
                arrived[event.memory.content] = at

    reader = asyncio.create_task(read())
    start = time.perf_counter()
    writes = []

    async def write(i: int) -> None:
        nonlocal errors
        content = f"latency {i}"
        try:
            t0 = time.perf_counter()
            sent[content] = t0
            await t.memory.CreateMemory(
                memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content)),
                metadata=t.md,
            )
            call_ms.append((time.perf_counter() - t0) * 1000)
        except grpc.RpcError:
            errors += 1
            sent.pop(content, None)
        finally:
            room.release()

    for i in range(n):  # paced: call i starts at i / rate (calls overlap when slow)
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        await room.acquire()
        writes.append(asyncio.create_task(write(i)))
    await asyncio.gather(*writes)
    achieved = n / (time.perf_counter() - start)
    with contextlib.suppress(TimeoutError):  # the figures say how many arrived
        await asyncio.wait_for(reader, _EVENTS_WITHIN_S)
    await watch.close()
    lat = [(arrived[c] - t0) * 1000 for c, t0 in sent.items() if c in arrived]
    return [
        f"write -> watcher, {achieved:.0f} writes/s, 1 watcher: {len(lat)}/{n} events "
        f"({errors} writes failed); p50 {percentile(lat, 0.5):.2f} ms   "
        f"p99 {percentile(lat, 0.99):.2f} ms (from the start of the CreateMemory call to the "
        "event read)",
        f"  CreateMemory at that rate: p50 {percentile(call_ms, 0.5):.2f} ms   "
        f"p99 {percentile(call_ms, 0.99):.2f} ms",
    ]


async def _throughput(
    server: ServerProcess, t: _Tenant, key: str, seconds: float, concurrency: int, watchers: int
) -> list[str]:
    counter = itertools.count()

    def create() -> Awaitable[Any]:
        req = memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(content=f"throughput {next(counter)}")
        )
        return t.memory.CreateMemory(req, metadata=t.md)

    def batch() -> Awaitable[Any]:
        req = memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(
                    memory=memory_pb2.Memory(content=f"batch {next(counter)}")
                )
                for _ in range(_BATCH)
            ]
        )
        return t.memory.BatchCreateMemories(req, metadata=t.md)

    loads: list[tuple[str, Callable[[], Awaitable[Any]], int, int]] = [
        (f"CreateMemory, {concurrency} in flight", create, concurrency, 1),
        (
            f"BatchCreateMemories x{_BATCH}, {_BATCH_CALLERS} in flight",
            batch,
            _BATCH_CALLERS,
            _BATCH,
        ),
    ]
    lines: list[str] = []
    for name, call, inflight, per_call in loads:
        cpu_ms: dict[str, list[float]] = {"alone": [], "watched": []}
        alone: list[Result] = []
        watched: list[Result] = []

        for _ in range(max(2, 200 // per_call)):  # warm-up: connections, caches
            await call()
        # alternated, twice: a shared machine's drift shows as the rounds' spread
        for _ in range(2):
            alone.append(
                await _measured(server, call, seconds, inflight, per_call, cpu_ms["alone"])
            )
            lines.append(_line(alone[-1], per_call, f"{name}, no watcher"))
            result, got = await _with_watchers(
                server.address,
                key,
                watchers,
                functools.partial(
                    _measured, server, call, seconds, inflight, per_call, cpu_ms["watched"]
                ),
            )
            watched.append(result)
            written = result.calls * per_call
            lines.append(
                _line(result, per_call, f"{name}, {watchers} watchers")
                + f"; they read {got} events of {written * watchers}"
            )
        ratio = sum(r.rps for r in watched) / sum(r.rps for r in alone)
        lines.append(
            f"  {name}: throughput with / without {watchers} watchers {ratio:.2f}; server CPU "
            f"per memory written {percentile(cpu_ms['alone'], 0.5):.2f} ms without, "
            f"{percentile(cpu_ms['watched'], 0.5):.2f} ms with them"
        )
    return lines


async def _measured(
    server: ServerProcess,
    call: Callable[[], Awaitable[Any]],
    seconds: float,
    inflight: int,
    per_call: int,
    cpu_ms: list[float],
) -> Result:
    """`drive`, and (into `cpu_ms`) the server's CPU time per memory written meanwhile."""
    before = server.cpu_seconds()
    result = await drive("", call, seconds, inflight, warmup=0)
    spent = server.cpu_seconds() - before
    cpu_ms.append(spent * 1000 / max(1, result.calls * per_call))
    return result


async def _with_watchers(
    address: str, key: str, n: int, measured: Callable[[], Awaitable[Result]]
) -> tuple[Result, int]:
    """`measured` while `n` watchers (another process) read every event;
    and how many they read (counted once they caught up)."""
    ctx = multiprocessing.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    got = ctx.Value("q", 0)
    proc = ctx.Process(target=_watchers, args=(address, key, n, stop, ready, got))
    proc.start()
    try:
        if not await asyncio.to_thread(ready.wait, 120):
            raise RuntimeError("the watchers did not start")
        result = await measured()
        await asyncio.sleep(2.0)  # let the watchers catch up before counting
    finally:
        stop.set()
        await asyncio.to_thread(proc.join, 30)
        if proc.is_alive():
            proc.kill()
    return result, int(got.value)


def _line(r: Result, per_call: int, name: str) -> str:
    extra = f" ({r.rps * per_call:.0f} memories/s)" if per_call > 1 else ""
    return (
        f"{name:<52} {r.rps:>6.0f} req/s{extra}   p50 {r.pct(0.5):7.2f} ms   "
        f"p99 {r.pct(0.99):7.2f} ms   errors {r.errors}"
    )


def _watchers(address: str, key: str, n: int, stop: Any, ready: Any, got: Any) -> None:
    """`n` watchers of the key's environment, in this (separate) process,
    reading every event until `stop` is set; `got` counts what they read."""

    async def main() -> None:
        channel = aio.insecure_channel(address)
        t = _Tenant((("x-api-key", key),), memory_pb2_grpc.MemoryServiceStub(channel))

        def count() -> None:
            with got.get_lock():
                got.value += 1

        watches = []
        for _ in range(n):
            w = _Watch(t)
            await w.live()
            watches.append(w)
        for w in watches:  # count from here on
            w.on_event = count
        ready.set()
        # a multiprocessing Event: waited for on a worker thread
        await asyncio.to_thread(stop.wait)
        for w in watches:
            await w.close()
        await channel.close(None)

    asyncio.run(main())
