"""The `writes` suite: BatchCreate throughput of this checkout against
another one's server, in one run.

Two `memoryd serve` processes run side by side: this checkout's and, with
`--baseline-src`, one importing its code from another checkout's `src`
(e.g. a `git worktree` of an older commit; an absolute path), each with its
own data dir and the same settings. "This checkout" is the code the bench
process imports (PYTHONPATH first, else the installed package). The
memory suite's corpus (`--memories` over `--tenants`) is loaded into both
in chunks that take turns (this one first, then the other first, and so
on), so that the machine's drift falls on both alike:

- server-side embedding: the first 5% of the corpus (at least 2,000), in
  chunks of 500;
- client vectors (computed by the bench process beforehand): the rest, in
  chunks of 5,000.

Each chunk is BatchCreateMemories of 100 per tenant with 4 in flight, as
in the memory suite. Printed: memories/s per server (all its chunks'
memories over their time), the median of its chunks, and the ratio; the
size of each server's data dir at the end.

With `--encryption-ab` the two servers are both this checkout, one with
encryption at rest on and one with it off (MEMORYD_ENCRYPTION), and after
the load both are searched in alternating turns (SearchMemories of a
corpus text, top 10, 4 clients, `--seconds` per turn, 4 turns each):
the overhead of sealing on writes and of opening on reads, in one run.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc import aio

from benchmarks.harness import HIGH_LIMITS, Result, ServerProcess, drive
from benchmarks.memory import (
    Fact,
    Metadata,
    corpus,
    create_env_keys,
    du_mb,
    embed_texts,
    load_memories,
    tenant_metadata,
)
from memoryd.config import Settings
from memoryd.v1 import memory_pb2, memory_pb2_grpc

_SERVER_CHUNK = 500
_CLIENT_CHUNK = 5_000


@dataclass
class _Side:
    """One server under test and the time its chunks took."""

    name: str
    server: ServerProcess
    mem: memory_pb2_grpc.MemoryServiceAsyncStub
    env_keys: list[str]
    memories: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    rates: dict[str, list[float]] = field(default_factory=dict)

    def md(self, tenant: int) -> Metadata:
        return tenant_metadata(self.env_keys, tenant)

    async def load(self, phase: str, items: list[tuple[Fact, list[float] | None]]) -> None:
        rate = await load_memories(self.mem, self.md, items, 4)
        self.memories[phase] = self.memories.get(phase, 0) + len(items)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + len(items) / rate
        self.rates.setdefault(phase, []).append(rate)

    def rate(self, phase: str) -> float:
        return self.memories[phase] / self.seconds[phase]


async def writes_suite(
    settings: Settings,
    memories: int,
    tenants: int,
    baseline_src: str,
    encryption_ab: bool = False,
    seconds: float = 5.0,
) -> list[str]:
    """Loads the corpus into this checkout's server and, when `baseline_src`
    is given, into one running that code, taking turns; the figures as lines."""
    lines: list[str] = []
    facts = corpus(memories, tenants)
    n_envs = max(1, tenants // 10)
    server_part = max(2000, len(facts) // 20)
    vectors = await embed_texts(settings, [f.content for f in facts[server_part:]])
    lines.append(
        f"corpus: {len(facts)} memories over {tenants} tenants; {server_part} embedded by the "
        f"server (chunks of {_SERVER_CHUNK}), {len(vectors)} with client vectors (chunks of "
        f"{_CLIENT_CHUNK}); BatchCreate of 100, 4 in flight"
    )
    phases: dict[str, list[list[tuple[Fact, list[float] | None]]]] = {
        "server-side embedding": _chunks([(f, None) for f in facts[:server_part]], _SERVER_CHUNK),
        "client vectors": _chunks(
            list(zip(facts[server_part:], vectors, strict=True)), _CLIENT_CHUNK
        ),
    }
    envs: dict[str, dict[str, str]] = {"this checkout": {}}
    if encryption_ab:
        envs = {
            "encryption on": {"MEMORYD_ENCRYPTION": "true"},
            "encryption off": {"MEMORYD_ENCRYPTION": "false"},
        }
    elif baseline_src:
        envs[f"baseline ({baseline_src})"] = {"PYTHONPATH": baseline_src}
    async with AsyncExitStack() as stack:
        sides: list[_Side] = []
        for name, env in envs.items():
            server = await stack.enter_async_context(
                ServerProcess(settings, extra_env={**HIGH_LIMITS, **env})
            )
            channel = aio.insecure_channel(
                server.address, options=[("grpc.max_send_message_length", 64 << 20)]
            )
            stack.push_async_callback(channel.close, None)
            keys = await create_env_keys(channel, server.owner_key, n_envs)
            sides.append(_Side(name, server, memory_pb2_grpc.MemoryServiceStub(channel), keys))
        for phase, chunks in phases.items():
            for i, chunk in enumerate(chunks):
                for side in sides if i % 2 == 0 else reversed(sides):
                    await side.load(phase, chunk)
        if encryption_ab:
            searches = await _search_turns(sides, facts, seconds)
        sizes = {side.name: du_mb(Path(side.server.data_dir)) for side in sides}
    for phase in phases:
        for side in sides:
            lines.append(
                f"BatchCreate, {phase}, {side.name}: {side.rate(phase):.0f} memories/s "
                f"(median of {len(side.rates[phase])} chunks "
                f"{statistics.median(side.rates[phase]):.0f})"
            )
        if len(sides) == 2:
            lines.append(
                f"BatchCreate, {phase}: {sides[0].name} / {sides[1].name} = "
                f"{sides[0].rate(phase) / sides[1].rate(phase):.3f}"
            )
    if encryption_ab:
        for side in sides:
            turns = searches[side.name]
            lines.append(
                f"Search (top 10, 4 clients), {side.name}: median of {len(turns)} turns "
                f"{statistics.median(t.rps for t in turns):.0f} calls/s, p50 "
                f"{statistics.median(t.pct(0.5) for t in turns):.2f} ms, p99 "
                f"{statistics.median(t.pct(0.99) for t in turns):.2f} ms, errors "
                f"{sum(t.errors for t in turns)}"
            )
        on, off = (statistics.median(t.rps for t in searches[s.name]) for s in sides)
        lines.append(f"Search: encryption on / off = {on / off:.3f} (calls/s)")
    for name, size in sizes.items():
        lines.append(f"data dir, {name}: {size:.0f} MiB ({len(facts)} memories)")
    return lines


async def _search_turns(
    sides: list[_Side], facts: list[Fact], seconds: float, turns: int = 4
) -> dict[str, list[Result]]:
    """Each side searched `turns` times, taking turns (drift falls on both)."""
    rng = random.Random(11)
    picked = [facts[rng.randrange(len(facts))] for _ in range(500)]
    out: dict[str, list[Result]] = {side.name: [] for side in sides}

    def searching(side: _Side) -> Callable[[], Awaitable[Any]]:
        i = 0

        async def call() -> Any:
            nonlocal i
            fact = picked[i % len(picked)]
            i += 1
            return await side.mem.SearchMemories(
                memory_pb2.SearchMemoriesRequest(query=fact.content, top_k=10),
                metadata=side.md(fact.tenant),
            )

        return call

    for turn in range(turns):
        for side in sides if turn % 2 == 0 else reversed(sides):
            out[side.name].append(await drive(side.name, searching(side), seconds, 4))
    return out


def _chunks(
    items: list[tuple[Fact, list[float] | None]], size: int
) -> list[list[tuple[Fact, list[float] | None]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
