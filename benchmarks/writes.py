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
"""

from __future__ import annotations

import statistics
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio

from benchmarks.harness import HIGH_LIMITS, ServerProcess
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
from memoryd.v1 import memory_pb2_grpc

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
    settings: Settings, memories: int, tenants: int, baseline_src: str
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
    if baseline_src:
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
                f"BatchCreate, {phase}: this checkout / baseline = "
                f"{sides[0].rate(phase) / sides[1].rate(phase):.3f}"
            )
    for name, size in sizes.items():
        lines.append(f"data dir, {name}: {size:.0f} MiB ({len(facts)} memories)")
    return lines


def _chunks(
    items: list[tuple[Fact, list[float] | None]], size: int
) -> list[list[tuple[Fact, list[float] | None]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
