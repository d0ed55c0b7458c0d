"""MemoryService behaviour on a real server (SQLite, Qdrant Edge, the hashing
embedder): create/get, batches, update and revisions, delete, list paging,
search with every kind of filter, purge, export and import.

Policies (TTL, dedupe, quotas, required end user) are in
`test_memories_policy.py`; refused input in `test_memories_validation.py`;
tenant isolation in `test_isolation_memories.py`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.rpc import code_pb2
from grpc import aio
from helpers.errors import refused, violations
from helpers.servers import Client, MakeServer, RunningServer, fast_hasher

from memoryd.app import build_app
from memoryd.config import Settings
from memoryd.domain.clock import ManualClock
from memoryd.embeddings.hashing import HashingEmbedder
from memoryd.v1 import admin_pb2, memory_pb2, tenancy_pb2
from memoryd.v1.memory_pb2 import SEMANTIC

NO_LIMITS = {
    "key_requests_per_second": 1e6,
    "key_burst": 1_000_000,
    "project_requests_per_second": 1e6,
    "project_burst": 1_000_000,
}
DIM = 64
EMBED = HashingEmbedder(DIM)


# --- helpers ----------------------------------------------------------------------------------


def memory(
    content: str, metadata: dict[str, Any] | None = None, **fields: Any
) -> memory_pb2.Memory:
    out = memory_pb2.Memory(content=content, **fields)
    if metadata is not None:
        out.metadata.update(metadata)
    return out


async def create(
    client: Client, content: str, metadata: dict[str, Any] | None = None, **fields: Any
) -> memory_pb2.Memory:
    resp = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory(content, metadata, **fields)),
        metadata=client.md(),
    )
    return resp.memory


async def get(client: Client, mid: str, embedding: bool = False) -> memory_pb2.Memory:
    return await client.memory.GetMemory(
        memory_pb2.GetMemoryRequest(id=mid, include_embedding=embedding), metadata=client.md()
    )


async def update(client: Client, mem: memory_pb2.Memory, *paths: str) -> memory_pb2.Memory:
    req = memory_pb2.UpdateMemoryRequest(memory=mem)
    req.update_mask.paths.extend(paths)
    return await client.memory.UpdateMemory(req, metadata=client.md())


async def list_all(
    client: Client, flt: memory_pb2.MemoryFilter | None = None, size: int = 0
) -> list[memory_pb2.Memory]:
    out: list[memory_pb2.Memory] = []
    token = ""
    while True:
        page = await client.memory.ListMemories(
            memory_pb2.ListMemoriesRequest(filter=flt, page_size=size, page_token=token),
            metadata=client.md(),
        )
        out += page.memories
        token = page.next_page_token
        if not token:
            return out


async def search(client: Client, **request: Any) -> list[memory_pb2.SearchResult]:
    resp = await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(**request), metadata=client.md()
    )
    return list(resp.results)


async def export(client: Client, **request: Any) -> list[memory_pb2.Memory]:
    stream = client.memory.ExportMemories(
        memory_pb2.ExportMemoriesRequest(**request), metadata=client.md()
    )
    return [m async for m in stream]


def value(x: Any) -> struct_pb2.Value:
    return json_format.ParseDict(x, struct_pb2.Value())


def eq(field: str, x: Any) -> memory_pb2.Condition:
    return memory_pb2.Condition(field=field, equals=value(x))


def any_of(field: str, *xs: Any) -> memory_pb2.Condition:
    return memory_pb2.Condition(
        field=field, any_of=struct_pb2.ListValue(values=[value(x) for x in xs])
    )


def rng(field: str, **bounds: float) -> memory_pb2.Condition:
    return memory_pb2.Condition(field=field, range=memory_pb2.NumberRange(**bounds))


def ts(t: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


def during(
    field: str, start: datetime | None = None, end: datetime | None = None
) -> memory_pb2.Condition:
    r = memory_pb2.TimeRange()
    if start is not None:
        r.start_time.CopyFrom(ts(start))
    if end is not None:
        r.end_time.CopyFrom(ts(end))
    return memory_pb2.Condition(field=field, time_range=r)


def group(**conds: Sequence[memory_pb2.Condition]) -> memory_pb2.Condition:
    return memory_pb2.Condition(filter=where(**conds))


def where(
    must: Sequence[memory_pb2.Condition] = (),
    should: Sequence[memory_pb2.Condition] = (),
    must_not: Sequence[memory_pb2.Condition] = (),
) -> memory_pb2.MemoryFilter:
    return memory_pb2.MemoryFilter(must=must, should=should, must_not=must_not)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(x * x for x in b)))


def when(t: timestamp_pb2.Timestamp) -> datetime:
    return t.ToDatetime(tzinfo=UTC)


@pytest.fixture
async def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def srv(make_server: MakeServer, clock: ManualClock) -> RunningServer:
    return await make_server(clock=clock, **NO_LIMITS)


@pytest.fixture
async def project(srv: RunningServer) -> admin_pb2.Project:
    return await srv.project("app")


@pytest.fixture
async def client(srv: RunningServer, project: admin_pb2.Project) -> Client:
    return srv.client(await srv.data_key(project))


# --- create / get -----------------------------------------------------------------------------


async def test_create_then_get_round_trips_every_field(
    client: Client, project: admin_pb2.Project, clock: ManualClock
) -> None:
    metadata = {
        "customer": "acme",
        "count": 3,
        "ratio": 0.25,
        "big": -1234567,
        "vip": True,
        "churned": False,
        "nothing": None,
        "nested": {"level": {"deep": [1, "two", False, {"x": 1.5}]}},
        "list": ["a", "b"],
    }
    created = await create(
        client,
        "Ana prefers green tea over coffee",
        metadata,
        tags=["drinks", "prefs", "drinks"],
        agent_id="agent-7",
        thread_id="thread-42",
        source="chat",
    )
    got = await get(client, created.id)
    assert uuid.UUID(created.id)
    for m in (created, got):
        assert m.id == created.id
        assert m.content == "Ana prefers green tea over coffee"
        assert json_format.MessageToDict(m.metadata) == metadata
        assert list(m.tags) == ["drinks", "prefs"]
        assert (m.agent_id, m.thread_id, m.source) == ("agent-7", "thread-42", "chat")
        assert m.end_user_id == ""
        assert m.project_id == project.id
        assert m.environment_id == project.environments[0].id
        assert when(m.create_time) == when(m.update_time) == clock.now()
        assert not m.HasField("expire_time")
        assert m.revision == 1
        assert not m.embedding
    with_vector = await get(client, created.id, embedding=True)
    assert len(with_vector.embedding) == DIM
    assert cosine(with_vector.embedding, EMBED.embed_one(with_vector.content)) == pytest.approx(
        1.0, abs=1e-5
    )


async def test_a_client_embedding_is_stored_as_given_and_searchable(client: Client) -> None:
    vector = [0.0] * DIM
    vector[3], vector[10] = 0.6, -0.8
    created = await create(
        client, "words the hashing embedder would place elsewhere", embedding=vector
    )
    await create(client, "a distractor")
    got = await get(client, created.id, embedding=True)
    assert list(got.embedding) == pytest.approx(vector, abs=1e-6)
    results = await search(client, query_embedding=vector, top_k=2)
    assert results[0].memory.id == created.id
    assert results[0].score == pytest.approx(1.0, abs=1e-4)


async def test_the_end_user_header_tags_the_written_memory(
    srv: RunningServer, client: Client
) -> None:
    ana = client.with_key(client.key, "ana")
    created = await create(ana, "ana's note")
    assert created.end_user_id == "ana"
    assert (await get(client, created.id)).end_user_id == "ana"


# --- batch create -----------------------------------------------------------------------------


async def test_batch_create_reports_each_item_and_stores_only_the_good_ones(client: Client) -> None:
    nan = [1.0] * DIM
    nan[5] = float("nan")
    requests = [
        memory_pb2.CreateMemoryRequest(memory=memory("first good one", {"i": 0}, tags=["t"])),
        memory_pb2.CreateMemoryRequest(memory=memory("")),
        memory_pb2.CreateMemoryRequest(memory=memory("wrong dimension", embedding=[0.1] * 3)),
        memory_pb2.CreateMemoryRequest(memory=memory("second good one", embedding=[0.5] * DIM)),
        memory_pb2.CreateMemoryRequest(memory=memory("not a number", embedding=nan)),
    ]
    resp = await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(requests=requests), metadata=client.md()
    )
    assert (resp.succeeded_count, resp.failed_count) == (2, 3)
    assert [r.index for r in resp.results] == [0, 1, 2, 3, 4]
    good = {0: "first good one", 3: "second good one"}
    for i, r in enumerate(resp.results):
        if i in good:
            assert r.error.code == code_pb2.OK
            assert r.memory.content == good[i] and r.memory.id
        else:
            assert r.error.code == code_pb2.INVALID_ARGUMENT
            assert not r.memory.id
    assert "requests[1].memory.content" in violations(resp.results[1].error)
    assert "requests[2].memory.embedding" in violations(resp.results[2].error)
    assert "requests[4].memory.embedding" in violations(resp.results[4].error)
    stored = await list_all(client)
    assert sorted(m.content for m in stored) == sorted(good.values())
    assert {m.id for m in stored} == {resp.results[i].memory.id for i in good}
    first = next(m for m in stored if m.content == "first good one")
    assert json_format.MessageToDict(first.metadata) == {"i": 0} and list(first.tags) == ["t"]


async def test_batch_create_takes_1000_and_refuses_1001(client: Client) -> None:
    def batch(n: int) -> memory_pb2.BatchCreateMemoriesRequest:
        return memory_pb2.BatchCreateMemoriesRequest(
            requests=[memory_pb2.CreateMemoryRequest(memory=memory(f"item {i}")) for i in range(n)]
        )

    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.memory.BatchCreateMemories(batch(1001), metadata=client.md()),
    )
    assert "requests" in violations(err)
    assert await list_all(client) == []
    resp = await client.memory.BatchCreateMemories(batch(1000), metadata=client.md())
    assert (resp.succeeded_count, resp.failed_count) == (1000, 0)
    assert len({r.memory.id for r in resp.results}) == 1000
    dry = await client.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(all=True, dry_run=True), metadata=client.md()
    )
    assert dry.purged_count == 1000


# --- update and revisions ---------------------------------------------------------------------


async def test_update_with_mask_changes_only_masked_fields_and_keeps_revisions(
    client: Client, clock: ManualClock
) -> None:
    t0 = clock.now()
    m = await create(client, "Ana likes green tea", {"k": 1}, tags=["a"], agent_id="x")
    before = await get(client, m.id, embedding=True)

    clock.advance(5)
    # content is masked; tags and agent_id are sent but not masked: unchanged
    v2 = await update(
        client,
        memory_pb2.Memory(id=m.id, content="Ana drinks black coffee", tags=["zzz"], agent_id="y"),
        "content",
    )
    assert (v2.content, list(v2.tags), v2.agent_id, v2.revision) == (
        "Ana drinks black coffee",
        ["a"],
        "x",
        2,
    )
    assert when(v2.create_time) == t0 and when(v2.update_time) == t0 + timedelta(seconds=5)
    after = await get(client, m.id, embedding=True)
    assert after.content == "Ana drinks black coffee" and after.revision == 2
    # re-embedded: the vector is the new text's, no longer the old one's
    assert cosine(after.embedding, EMBED.embed_one("Ana drinks black coffee")) == pytest.approx(
        1.0, abs=1e-5
    )
    assert cosine(after.embedding, before.embedding) < 0.9
    top = await search(client, query="black coffee", top_k=1)
    assert top[0].memory.id == m.id and top[0].memory.content == "Ana drinks black coffee"

    clock.advance(5)
    v3 = await update(
        client,
        memory("not masked: ignored", {"k": 2, "new": True}, id=m.id, tags=["b", "c"]),
        "metadata",
        "tags",
    )
    assert v3.content == "Ana drinks black coffee" and v3.revision == 3
    assert json_format.MessageToDict(v3.metadata) == {"k": 2, "new": True}
    assert list(v3.tags) == ["b", "c"]
    unchanged = await get(client, m.id, embedding=True)
    assert list(unchanged.embedding) == list(after.embedding)  # content unchanged: same vector

    revs = await client.memory.ListMemoryRevisions(
        memory_pb2.ListMemoryRevisionsRequest(id=m.id), metadata=client.md()
    )
    assert not revs.next_page_token
    assert [r.revision for r in revs.revisions] == [2, 1]
    r2, r1 = revs.revisions
    assert (r2.content, list(r2.tags), json_format.MessageToDict(r2.metadata)) == (
        "Ana drinks black coffee",
        ["a"],
        {"k": 1},
    )
    assert (r1.content, list(r1.tags), r1.agent_id) == ("Ana likes green tea", ["a"], "x")
    assert all(r.memory_id == m.id for r in revs.revisions)
    assert when(r1.update_time) == t0 and when(r1.replace_time) == t0 + timedelta(seconds=5)
    assert when(r2.update_time) == t0 + timedelta(seconds=5)
    assert when(r2.replace_time) == t0 + timedelta(seconds=10)

    # paged one by one, newest first, no duplicates
    first = await client.memory.ListMemoryRevisions(
        memory_pb2.ListMemoryRevisionsRequest(id=m.id, page_size=1), metadata=client.md()
    )
    second = await client.memory.ListMemoryRevisions(
        memory_pb2.ListMemoryRevisionsRequest(
            id=m.id, page_size=1, page_token=first.next_page_token
        ),
        metadata=client.md(),
    )
    assert [r.revision for r in (*first.revisions, *second.revisions)] == [2, 1]
    assert first.next_page_token and not second.next_page_token


async def test_update_of_the_embedding_and_the_expiry(client: Client, clock: ManualClock) -> None:
    m = await create(client, "some text")
    vector = [0.0] * DIM
    vector[7] = 1.0
    await update(client, memory_pb2.Memory(id=m.id, embedding=vector), "embedding")
    assert list((await get(client, m.id, embedding=True)).embedding) == pytest.approx(vector)
    later = memory_pb2.Memory(id=m.id, expire_time=ts(clock.now() + timedelta(hours=1)))
    assert when(
        (await update(client, later, "expire_time")).expire_time
    ) == clock.now() + timedelta(hours=1)
    cleared = await update(client, memory_pb2.Memory(id=m.id), "expire_time")
    assert not cleared.HasField("expire_time")
    clock.advance(7200)
    assert (await get(client, m.id)).revision == 4


@pytest.mark.parametrize(
    "paths", [["bogus"], ["content", "id"], ["end_user_id"], ["create_time"], ["revision"], []]
)
async def test_update_refuses_a_mask_naming_no_updatable_field(
    client: Client, paths: list[str]
) -> None:
    m = await create(client, "keep me")
    req = memory_pb2.UpdateMemoryRequest(memory=memory_pb2.Memory(id=m.id, content="changed"))
    req.update_mask.paths.extend(paths)
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT, client.memory.UpdateMemory(req, metadata=client.md())
    )
    fields = violations(err)
    if paths:
        bad = next(i for i, p in enumerate(paths) if p != "content")
        assert f"update_mask.paths[{bad}]" in fields
    else:
        assert "update_mask" in fields
    got = await get(client, m.id)
    assert (got.content, got.revision) == ("keep me", 1)


# --- delete -----------------------------------------------------------------------------------


async def test_delete_removes_the_memory_and_its_history(client: Client) -> None:
    keep = await create(client, "keep this one")
    gone = await create(client, "delete this one")
    await update(
        client, memory_pb2.Memory(id=gone.id, content="delete this one, edited"), "content"
    )
    await client.memory.DeleteMemory(
        memory_pb2.DeleteMemoryRequest(id=gone.id), metadata=client.md()
    )
    await refused(
        grpc.StatusCode.NOT_FOUND,
        client.memory.GetMemory(memory_pb2.GetMemoryRequest(id=gone.id), metadata=client.md()),
    )
    await refused(
        grpc.StatusCode.NOT_FOUND,
        client.memory.ListMemoryRevisions(
            memory_pb2.ListMemoryRevisionsRequest(id=gone.id), metadata=client.md()
        ),
    )
    await refused(
        grpc.StatusCode.NOT_FOUND,
        client.memory.DeleteMemory(
            memory_pb2.DeleteMemoryRequest(id=gone.id), metadata=client.md()
        ),
    )
    assert [m.id for m in await list_all(client)] == [keep.id]
    assert [r.memory.id for r in await search(client, query="delete this one", min_score=-1)] == [
        keep.id
    ]
    assert (await get(client, keep.id)).content == "keep this one"


# --- list -------------------------------------------------------------------------------------


async def test_list_is_newest_first_and_pages_without_duplicates_or_gaps(
    client: Client, clock: ManualClock
) -> None:
    ids: list[str] = []
    for i in range(4):
        ids.append((await create(client, f"single {i}", tags=["x"])).id)
        clock.advance(1)
    # a batch written at one instant: create_time ties across page boundaries
    batch = await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(memory=memory(f"batch {i}", tags=["x"]))
                for i in range(7)
            ]
        ),
        metadata=client.md(),
    )
    ids += [r.memory.id for r in batch.results]
    clock.advance(1)
    for i in range(2):
        ids.append((await create(client, f"late {i}", tags=["y"])).id)
        clock.advance(1)

    full = await list_all(client, size=1000)
    assert sorted(m.id for m in full) == sorted(ids)
    times = [when(m.create_time) for m in full]
    assert times == sorted(times, reverse=True)
    assert [m.content for m in full[:2]] == ["late 1", "late 0"]
    assert full[-1].content == "single 0"
    for size in (1, 3, 4):
        paged = await list_all(client, size=size)
        assert [m.id for m in paged] == [m.id for m in full], f"page_size={size}"

    first = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=2), metadata=client.md()
    )
    assert len(first.memories) == 2 and first.next_page_token
    last = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=13), metadata=client.md()
    )
    assert len(last.memories) == 13 and not last.next_page_token
    only_x = await list_all(client, where(must=[eq("tags", "x")]), size=3)
    assert [m.id for m in only_x] == [m.id for m in full if "x" in m.tags]


async def test_paging_stays_exact_while_memories_are_added_and_deleted(
    client: Client, clock: ManualClock
) -> None:
    for i in range(9):
        await create(client, f"m{i}")
        clock.advance(1)
    before = [m.id for m in await list_all(client)]
    page = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=3), metadata=client.md()
    )
    seen = [m.id for m in page.memories]
    await create(client, "newer than the cursor")
    await client.memory.DeleteMemory(
        memory_pb2.DeleteMemoryRequest(id=before[5]), metadata=client.md()
    )
    token = page.next_page_token
    while token:
        page = await client.memory.ListMemories(
            memory_pb2.ListMemoriesRequest(page_size=3, page_token=token), metadata=client.md()
        )
        seen += [m.id for m in page.memories]
        token = page.next_page_token
    assert seen == [mid for mid in before if mid != before[5]]


async def test_a_page_token_is_bound_to_its_filter(client: Client) -> None:
    for i in range(3):
        await create(client, f"m{i}", tags=["x"])
    page = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=1, filter=where(must=[eq("tags", "x")])),
        metadata=client.md(),
    )
    assert page.next_page_token
    for other in (None, where(must=[eq("tags", "y")])):
        err = await refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            client.memory.ListMemories(
                memory_pb2.ListMemoriesRequest(
                    page_size=1, filter=other, page_token=page.next_page_token
                ),
                metadata=client.md(),
            ),
        )
        assert "page_token" in violations(err)
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.memory.ListMemories(
            memory_pb2.ListMemoriesRequest(page_token="not-a-token"), metadata=client.md()
        ),
    )
    assert "page_token" in violations(err)


# --- search and filters -----------------------------------------------------------------------


async def seed_corpus(client: Client, clock: ManualClock) -> dict[str, Any]:
    """Four memories 10 s apart, told apart by tags, agent, thread, source, metadata."""
    t0 = clock.now()
    specs = {
        "red": memory(
            "note apple",
            {"color": "red", "n": 1, "score": 2.5, "flag": True, "nested": {"x": "deep"}},
            tags=["red"],
            agent_id="a1",
            thread_id="t1",
            source="chat",
        ),
        "blue": memory(
            "note delta",
            {"color": "blue", "n": 5, "flag": False},
            tags=["blue"],
            agent_id="a2",
            thread_id="t1",
            source="email",
        ),
        "both": memory(
            "note gamma",
            {"color": "green", "n": 10, "flag": True, "nested": {"x": "shallow"}},
            tags=["red", "blue"],
            agent_id="a1",
            thread_id="t2",
            source="chat",
        ),
        "none": memory(
            "note violin", {"color": "1", "n": -3}, agent_id="a3", thread_id="t3", source="import"
        ),
    }
    ids: dict[str, str] = {}
    for name, m in specs.items():
        resp = await client.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=m), metadata=client.md()
        )
        ids[name] = resp.memory.id
        clock.advance(10)
    return {"ids": ids, "t0": t0, "client": client}


@pytest.fixture
async def corpus(client: Client, clock: ManualClock) -> dict[str, Any]:
    return await seed_corpus(client, clock)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_corpus(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    """The corpus on a server of its own, for the tests that only read it."""
    clock = ManualClock()
    settings = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path_factory.mktemp("filters")),
        embedding_provider="hashing",
        embedding_dimension=DIM,
        grace_period_s=0.5,
        log_level="WARNING",
        **NO_LIMITS,
    )
    app = await build_app(settings, clock=clock, hasher=fast_hasher())
    await app.start()
    assert app.bootstrapped is not None
    channel = aio.insecure_channel(f"127.0.0.1:{app.port}")
    srv = RunningServer(
        app,
        f"127.0.0.1:{app.port}",
        app.bootstrapped.plaintext,
        app.bootstrapped.org.id,
        channel,
        clock,
    )
    project = await srv.project("filters")
    yield await seed_corpus(srv.client(await srv.data_key(project)), clock)
    await channel.close()
    await app.stop(0)


T = timedelta(seconds=10)
FILTER_CASES: list[tuple[str, Any, set[str]]] = [
    ("tags-equals", lambda t0: where(must=[eq("tags", "red")]), {"red", "both"}),
    ("agent-equals", lambda t0: where(must=[eq("agent_id", "a1")]), {"red", "both"}),
    ("thread-equals", lambda t0: where(must=[eq("thread_id", "t1")]), {"red", "blue"}),
    ("source-equals", lambda t0: where(must=[eq("source", "import")]), {"none"}),
    (
        "end-user-equals-empty",
        lambda t0: where(must=[eq("end_user_id", "")]),
        {"red", "blue", "both", "none"},
    ),
    ("metadata-string", lambda t0: where(must=[eq("metadata.color", "blue")]), {"blue"}),
    ("metadata-int", lambda t0: where(must=[eq("metadata.n", 5)]), {"blue"}),
    ("metadata-negative", lambda t0: where(must=[eq("metadata.n", -3)]), {"none"}),
    ("metadata-float", lambda t0: where(must=[eq("metadata.score", 2.5)]), {"red"}),
    ("metadata-true", lambda t0: where(must=[eq("metadata.flag", True)]), {"red", "both"}),
    ("metadata-false", lambda t0: where(must=[eq("metadata.flag", False)]), {"blue"}),
    ("string-1-is-not-number-1", lambda t0: where(must=[eq("metadata.color", 1)]), set()),
    ("number-1-is-not-true", lambda t0: where(must=[eq("metadata.flag", 1)]), set()),
    ("metadata-nested", lambda t0: where(must=[eq("metadata.nested.x", "deep")]), {"red"}),
    ("tags-any-of", lambda t0: where(must=[any_of("tags", "blue", "green")]), {"blue", "both"}),
    ("agent-any-of", lambda t0: where(must=[any_of("agent_id", "a2", "a3")]), {"blue", "none"}),
    ("metadata-int-any-of", lambda t0: where(must=[any_of("metadata.n", 1, 10)]), {"red", "both"}),
    (
        "metadata-mixed-any-of",
        lambda t0: where(must=[any_of("metadata.color", "red", "1")]),
        {"red", "none"},
    ),
    ("range-gte", lambda t0: where(must=[rng("metadata.n", gte=5)]), {"blue", "both"}),
    ("range-open-interval", lambda t0: where(must=[rng("metadata.n", gt=1, lt=10)]), {"blue"}),
    ("range-lte", lambda t0: where(must=[rng("metadata.n", lte=1)]), {"red", "none"}),
    ("range-float", lambda t0: where(must=[rng("metadata.score", gt=2.4, lt=2.6)]), {"red"}),
    (
        "time-range",
        lambda t0: where(must=[during("create_time", t0 + T, t0 + 3 * T)]),
        {"blue", "both"},
    ),
    (
        "time-range-start-only",
        lambda t0: where(must=[during("create_time", t0 + 2 * T)]),
        {"both", "none"},
    ),
    ("time-range-end-only", lambda t0: where(must=[during("create_time", None, t0 + T)]), {"red"}),
    ("update-time", lambda t0: where(must=[during("update_time", t0 + 3 * T)]), {"none"}),
    ("must-not", lambda t0: where(must_not=[eq("tags", "red")]), {"blue", "none"}),
    (
        "should",
        lambda t0: where(should=[eq("agent_id", "a2"), eq("source", "import")]),
        {"blue", "none"},
    ),
    (
        "must-and-must-not",
        lambda t0: where(must=[eq("thread_id", "t1")], must_not=[eq("tags", "blue")]),
        {"red"},
    ),
    (
        "nested-filter",
        lambda t0: where(
            must=[group(should=[eq("tags", "blue"), rng("metadata.n", lt=0)])],
            must_not=[eq("agent_id", "a2")],
        ),
        {"both", "none"},
    ),
    (
        "nested-must-not",
        lambda t0: where(
            must=[group(must_not=[eq("source", "chat")])],
            should=[eq("metadata.flag", False), eq("thread_id", "t3")],
        ),
        {"blue", "none"},
    ),
]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("flt", "expected"), [(c[1], c[2]) for c in FILTER_CASES], ids=[c[0] for c in FILTER_CASES]
)
async def test_filters_select_the_same_memories_in_search_list_and_purge(
    shared_corpus: dict[str, Any], flt: Any, expected: set[str]
) -> None:
    client: Client = shared_corpus["client"]
    ids, t0 = shared_corpus["ids"], shared_corpus["t0"]
    wanted = {ids[n] for n in expected}
    f = flt(t0)
    found = await search(client, query="note", filter=f, top_k=100)
    assert {r.memory.id for r in found} == wanted
    assert {m.id for m in await list_all(client, f)} == wanted
    assert {m.id for m in await export(client, filter=f)} == wanted
    dry = await client.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(filter=f, dry_run=True), metadata=client.md()
    )
    assert dry.purged_count == len(wanted)


async def test_search_orders_by_score_and_honours_top_k_and_min_score(
    client: Client, corpus: dict[str, Any]
) -> None:
    ids = corpus["ids"]
    for i in range(12):
        await create(client, f"filler number {i}")
    default = await search(client, query="note apple")
    assert len(default) == 10  # top_k 0: the default
    assert default[0].memory.id == ids["red"]
    scores = [r.score for r in default]
    assert scores == sorted(scores, reverse=True)
    assert len(await search(client, query="note apple", top_k=3)) == 3
    assert len(await search(client, query="note apple", top_k=100)) == 16

    red = await get(client, ids["red"], embedding=True)
    exact = await search(client, query_embedding=list(red.embedding), top_k=100)
    assert exact[0].memory.id == ids["red"] and exact[0].score == pytest.approx(1.0, abs=1e-4)
    strict = await search(client, query_embedding=list(red.embedding), top_k=100, min_score=0.99)
    assert [r.memory.id for r in strict] == [ids["red"]]
    # the other notes share the word "note" only: between the two thresholds
    loose = await search(client, query="note apple", top_k=100, min_score=0.3, mode=SEMANTIC)
    assert {r.memory.id for r in loose} == set(ids.values())
    assert all(r.score >= 0.3 for r in loose)
    for r in exact:
        assert r.project_id == r.memory.project_id


# --- purge ------------------------------------------------------------------------------------


async def test_purge_by_filter_counts_exactly_and_dry_run_deletes_nothing(
    client: Client, corpus: dict[str, Any]
) -> None:
    ids = corpus["ids"]
    red = where(must=[eq("tags", "red")])
    dry = await client.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(filter=red, dry_run=True), metadata=client.md()
    )
    assert (dry.purged_count, dry.dry_run) == (2, True)
    assert len(await list_all(client)) == 4
    done = await client.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(filter=red), metadata=client.md()
    )
    assert (done.purged_count, done.dry_run) == (2, False)
    assert {m.id for m in await list_all(client)} == {ids["blue"], ids["none"]}
    again = await client.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(filter=red), metadata=client.md()
    )
    assert again.purged_count == 0


async def test_purge_of_everything_needs_all_and_is_confined_to_the_end_user(
    client: Client,
) -> None:
    ana, bob = client.with_key(client.key, "ana"), client.with_key(client.key, "bob")
    for who in (ana, ana, bob, client):
        await create(who, "something")
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.memory.PurgeMemories(memory_pb2.PurgeMemoriesRequest(), metadata=client.md()),
    )
    assert "filter" in violations(err)
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.memory.PurgeMemories(
            memory_pb2.PurgeMemoriesRequest(dry_run=True), metadata=client.md()
        ),
    )
    assert "filter" in violations(err)
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.memory.PurgeMemories(
            memory_pb2.PurgeMemoriesRequest(all=True, filter=where(must=[eq("tags", "x")])),
            metadata=client.md(),
        ),
    )
    assert "all" in violations(err)
    assert len(await list_all(client)) == 4
    purged = await ana.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(all=True), metadata=ana.md()
    )
    assert purged.purged_count == 2
    assert sorted(m.end_user_id for m in await list_all(client)) == ["", "bob"]
    purged = await client.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(all=True), metadata=client.md()
    )
    assert purged.purged_count == 2
    assert await list_all(client) == []


# --- export / import --------------------------------------------------------------------------


def portable(m: memory_pb2.Memory) -> tuple[Any, ...]:
    """What an export → import round trip must keep."""
    return (
        m.content,
        json_format.MessageToJson(m.metadata, sort_keys=True),
        tuple(m.tags),
        m.agent_id,
        m.thread_id,
        m.source,
        m.expire_time.ToJsonString() if m.HasField("expire_time") else "",
        tuple(round(x, 6) for x in m.embedding),
    )


async def test_export_then_import_into_another_environment_reproduces_the_memories(
    srv: RunningServer, client: Client, project: admin_pb2.Project, clock: ManualClock
) -> None:
    await create(client, "plain")
    await create(
        client,
        "rich",
        {"a": 1, "b": {"c": [True, "x"]}},
        tags=["t1", "t2"],
        agent_id="ag",
        thread_id="th",
        source="chat",
    )
    await create(client.with_key(client.key, "ana"), "ana's")
    await create(client, "expiring", expire_time=ts(clock.now() + timedelta(days=1)))
    vector = [0.0] * DIM
    vector[1] = 1.0
    await create(client, "client vector", embedding=vector)

    plain = await export(client)
    assert len(plain) == 5 and all(not m.embedding for m in plain)
    full = await export(client, include_embeddings=True)
    assert [m.id for m in full] == [m.id for m in plain]
    assert all(len(m.embedding) == DIM for m in full)

    staging = await srv.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=srv.owner.md(),
    )
    target = srv.client(await srv.data_key(project, environment_id=staging.id))

    async def stream() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
        for i, m in enumerate(full):
            if i == 2:
                yield memory_pb2.ImportMemoriesRequest(memory=memory("", tags=["bad"]))
            yield memory_pb2.ImportMemoriesRequest(memory=m)

    summary = await target.memory.ImportMemories(stream(), metadata=target.md())
    assert (summary.imported_count, summary.failed_count) == (5, 1)
    assert [e.index for e in summary.errors] == [2]
    assert summary.errors[0].error.code == code_pb2.INVALID_ARGUMENT
    assert "memory.content" in violations(summary.errors[0].error)

    copied = await export(target, include_embeddings=True)
    assert sorted(map(portable, copied)) == sorted(map(portable, full))
    assert not {m.id for m in copied} & {m.id for m in full}
    assert all(m.environment_id == staging.id and m.end_user_id == "" for m in copied)
    assert all(m.revision == 1 for m in copied)
    # the source is untouched
    assert sorted(map(portable, await export(client, include_embeddings=True))) == sorted(
        map(portable, full)
    )


async def test_export_streams_more_than_a_page_and_keeps_its_order(
    client: Client, clock: ManualClock
) -> None:
    for n in (150, 150):
        await client.memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(
                requests=[
                    memory_pb2.CreateMemoryRequest(memory=memory(f"item {i}")) for i in range(n)
                ]
            ),
            metadata=client.md(),
        )
        clock.advance(1)
    await create(client, "the newest")
    items = await export(client, include_embeddings=True)
    assert len(items) == 301 and len({m.id for m in items}) == 301
    assert all(len(m.embedding) == DIM for m in items)
    # ExportMemories streams oldest first (memory.proto)
    times = [when(m.create_time) for m in items]
    assert times == sorted(times)
    assert items[-1].content == "the newest"


async def test_import_with_an_end_user_writes_for_that_end_user(client: Client) -> None:
    ana = client.with_key(client.key, "ana")

    async def stream() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
        yield memory_pb2.ImportMemoriesRequest(memory=memory("imported", end_user_id="bob"))

    summary = await ana.memory.ImportMemories(stream(), metadata=ana.md())
    assert summary.imported_count == 1
    [m] = await list_all(client)
    assert m.end_user_id == "ana"
