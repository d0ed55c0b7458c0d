"""Asks the golden set of a real `memoryd serve` process and scores the
answers per family and search mode.

The server runs as its own process on a temporary data dir (benchmarks'
ServerProcess) with the settings given, so the embedding model is the
server's (the real local model under `make eval`). One project, one
environment and data key per family, one end user per tenant index. The
memories are loaded with BatchCreateMemories (server-side embedding), then
the superseded ones get their `invalid_time` with UpdateMemory. Questions
are asked one at a time with SearchMemories (top_k 10, the question as
text, the mode named, and the view's fields: include_invalidated,
recency_half_life, diversity); the latency is the call's, client side, the
query's embedding included.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf import duration_pb2, field_mask_pb2
from grpc import aio

from benchmarks.harness import ServerProcess
from evaluation.golden import PENDING_FAMILIES, GoldenMemory, GoldenQuestion, GoldenSet
from evaluation.metrics import Answer, Row, score
from memoryd.config import Settings
from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    tenancy_pb2,
)

TOP_K = 10
# The search modes: name → the fields the mode sets on SearchMemoriesRequest,
# or None while the server has no such mode (printed as pending). Every mode
# is named: a request without one ranks by the server's default mode.
MODES: dict[str, dict[str, Any] | None] = {
    "SEMANTIC": {"mode": memory_pb2.SEMANTIC},
    "KEYWORD": {"mode": memory_pb2.KEYWORD},
    "HYBRID": {"mode": memory_pb2.HYBRID},
}
PENDING_MODE = "pending (needs SearchMemoriesRequest.mode)"
# What is scored: (label, family, request fields every question adds, the
# modes asked (all when empty)). current_truth is asked twice: as a client
# would (superseded memories hidden) and with them shown, which tells what
# the ranking alone would answer without the time of truth. recency is asked
# without and with a half-life (its questions want the latest of three
# statements, and only the times tell which that is); paraphrase once more
# with diversity, to check MMR costs no answers.
HALF_LIFE_DAYS = 365
DIVERSITY = 0.3
VIEWS: tuple[tuple[str, str, dict[str, Any], tuple[str, ...]], ...] = (
    ("paraphrase", "paraphrase", {}, ()),
    (f"paraphrase, diversity {DIVERSITY}", "paraphrase", {"diversity": DIVERSITY}, ()),
    ("exact_term", "exact_term", {}, ()),
    ("current_truth", "current_truth", {}, ()),
    ("current_truth, include_invalidated", "current_truth", {"include_invalidated": True}, ()),
    ("recency", "recency", {}, ()),
    (
        f"recency, half-life {HALF_LIFE_DAYS} d",
        "recency",
        {"recency_half_life": duration_pb2.Duration(seconds=HALF_LIFE_DAYS * 86400)},
        (),
    ),
)
# Families also scored per kind of question (a second table): family → the
# kind of a question. exact_term's kinds are its record kinds (orders,
# tickets, skus, people, invoices; the issue's "exact order codes among 300
# similar orders" is its `orders` kind).
SLICES: dict[str, Callable[[GoldenQuestion], str]] = {
    "exact_term": lambda q: q.expected[0].split("-")[1],
}
# Limits high enough that loading the set is never refused.
_HIGH_LIMITS = {
    "MEMORYD_KEY_REQUESTS_PER_SECOND": "1000000",
    "MEMORYD_KEY_BURST": "1000000",
    "MEMORYD_PROJECT_REQUESTS_PER_SECOND": "1000000",
    "MEMORYD_PROJECT_BURST": "1000000",
    "MEMORYD_MAX_MEMORIES_PER_ENVIRONMENT": "100000000",
}
_BATCH = 100
_LOADERS = 4

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Report:
    """The scores of a run: per view and mode (`rows`), and per view, kind
    of question and mode for the families of SLICES (`slices`)."""

    rows: list[Row]
    slices: list[Row]


async def evaluate(
    settings: Settings,
    golden: GoldenSet,
    families: Sequence[str],
    modes: Sequence[str] = tuple(MODES),
) -> Report:
    """Loads the memories of `families` into a fresh server started from
    `settings`, asks their questions in each of `modes` and returns the
    tables' rows (pending modes and families included). Progress goes to
    stdout."""
    async with (
        ServerProcess(settings, extra_env=_HIGH_LIMITS) as server,
        aio.insecure_channel(server.address) as channel,
    ):
        keys = await _data_keys(channel, server.owner_key, families)
        mem = memory_pb2_grpc.MemoryServiceStub(channel)

        def tenant(family: str, index: int) -> Metadata:
            return (("x-api-key", keys[family]), ("x-end-user-id", f"user-{index:03d}"))

        for family in families:
            part = golden.of(family)
            started = time.perf_counter()
            ids = await _load(mem, part.memories, tenant)
            stale = [m for m in part.memories if m.invalid_time]
            for m in stale:
                await _invalidate(mem, ids[m.gid], m.invalid_time, tenant(family, m.tenant))
            print(
                f"{family}: loaded {len(part.memories)} memories ({len(stale)} invalidated) "
                f"in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
        for family in families:  # the first queries of a process are slow: not measured
            for q in golden.of(family).questions[:5]:
                await _ask(mem, q, {}, tenant(family, q.tenant))

        report = Report([], [])
        for label, family, extra, only in VIEWS:
            if family not in families:
                continue
            questions = golden.of(family).questions
            for mode in modes:
                if only and mode not in only:
                    continue
                fields = MODES[mode]
                if fields is None:
                    report.rows.append(Row(label, mode, pending=PENDING_MODE))
                    continue
                started = time.perf_counter()
                answers = [
                    await _ask(mem, q, {**fields, **extra}, tenant(family, q.tenant))
                    for q in questions
                ]
                report.rows.append(Row(label, mode, score(answers)))
                if kind_of := SLICES.get(family):
                    by_kind: dict[str, list[Answer]] = defaultdict(list)
                    for q, a in zip(questions, answers, strict=True):
                        by_kind[kind_of(q)].append(a)
                    report.slices.extend(
                        Row(f"{label}: {kind}", mode, score(kind_answers))
                        for kind, kind_answers in by_kind.items()
                    )
                print(
                    f"{label} / {mode}: {len(answers)} questions in "
                    f"{time.perf_counter() - started:.1f} s",
                    flush=True,
                )
    report.rows.extend(Row(family, "all", pending=why) for family, why in PENDING_FAMILIES.items())
    return report


async def _data_keys(
    channel: aio.Channel, owner_key: str, families: Sequence[str]
) -> dict[str, str]:
    """A project `eval` with one environment per family; each family's data
    key (scopes memory:*)."""
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    keys = keys_pb2_grpc.KeyServiceStub(channel)
    owner = (("x-api-key", owner_key),)
    project = await admin.CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="eval")), metadata=owner
    )
    out: dict[str, str] = {}
    for family in families:
        env = await admin.CreateEnvironment(
            admin_pb2.CreateEnvironmentRequest(
                project_id=project.id,
                environment=admin_pb2.Environment(
                    name=family.replace("_", "-"), kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
                ),
            ),
            metadata=owner,
        )
        created = await keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(
                project_id=project.id,
                environment_id=env.id,
                name=f"eval-{env.name}",
                scopes=["memory:*"],
            ),
            metadata=owner,
        )
        out[family] = created.secret
    return out


async def _load(
    mem: memory_pb2_grpc.MemoryServiceAsyncStub,
    memories: Sequence[GoldenMemory],
    tenant: Callable[[str, int], Metadata],
) -> dict[str, str]:
    """Creates `memories` in batches per tenant, `_LOADERS` batches in
    flight; gid → server id."""
    by_tenant: dict[tuple[str, int], list[GoldenMemory]] = defaultdict(list)
    for m in memories:
        by_tenant[(m.family, m.tenant)].append(m)
    queue = [
        (key, items[i : i + _BATCH])
        for key, items in by_tenant.items()
        for i in range(0, len(items), _BATCH)
    ]
    ids: dict[str, str] = {}

    async def worker() -> None:
        while queue:
            (family, index), batch = queue.pop()
            request = memory_pb2.BatchCreateMemoriesRequest(
                requests=[memory_pb2.CreateMemoryRequest(memory=_memory(m)) for m in batch]
            )
            resp = await mem.BatchCreateMemories(
                request, metadata=tenant(family, index), timeout=300
            )
            if resp.failed_count:
                first = next(r.error for r in resp.results if r.error.code)
                raise RuntimeError(f"{resp.failed_count} memories not created: {first.message}")
            ids.update((m.gid, r.memory.id) for m, r in zip(batch, resp.results, strict=True))

    await asyncio.gather(*(worker() for _ in range(_LOADERS)))
    return ids


def _memory(m: GoldenMemory) -> memory_pb2.Memory:
    memory = memory_pb2.Memory(content=m.content, metadata={"gid": m.gid})
    if m.valid_time:
        memory.valid_time.FromDatetime(datetime.fromisoformat(m.valid_time))
    return memory


async def _invalidate(
    mem: memory_pb2_grpc.MemoryServiceAsyncStub, memory_id: str, invalid_time: str, md: Metadata
) -> None:
    """Marks a memory as no longer holding since `invalid_time`."""
    memory = memory_pb2.Memory(id=memory_id)
    memory.invalid_time.FromDatetime(datetime.fromisoformat(invalid_time))
    await mem.UpdateMemory(
        memory_pb2.UpdateMemoryRequest(
            memory=memory, update_mask=field_mask_pb2.FieldMask(paths=["invalid_time"])
        ),
        metadata=md,
    )


async def _ask(
    mem: memory_pb2_grpc.MemoryServiceAsyncStub,
    q: GoldenQuestion,
    fields: Mapping[str, Any],
    md: Metadata,
) -> Answer:
    """One search; the gids of its results, best first, and its latency."""
    request = memory_pb2.SearchMemoriesRequest(query=q.question, top_k=TOP_K, **fields)
    started = time.perf_counter()
    resp = await mem.SearchMemories(request, metadata=md)
    latency_ms = (time.perf_counter() - started) * 1000
    ranking = tuple(str(r.memory.metadata["gid"]) for r in resp.results)
    return Answer(ranking, q.expected, q.superseded, latency_ms)
