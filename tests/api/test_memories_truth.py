"""The time of truth of memories on a real server: valid_time and
invalid_time on create and update, what ListMemories and SearchMemories
show by default, with `include_invalidated` and with `as_of`, GetMemory
finding a memory that no longer holds, tenancy under every one of those
flags, the writing key in `origin`, and export/import keeping the times.

Every time is set by the test (on a ManualClock), so nothing depends on
the wall clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from helpers.errors import refused, violations
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.domain.clock import ManualClock
from memoryd.v1 import admin_pb2, keys_pb2, memory_pb2, tenancy_pb2

NO_LIMITS = {
    "key_requests_per_second": 1e6,
    "key_burst": 1_000_000,
    "project_requests_per_second": 1e6,
    "project_burst": 1_000_000,
}
START = timedelta(days=30)  # how long before now the test's memories start to hold


def ts(t: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


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


async def create(client: Client, content: str, **fields: Any) -> memory_pb2.Memory:
    resp = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content, **fields)),
        metadata=client.md(),
    )
    return resp.memory


async def update(client: Client, mem: memory_pb2.Memory, *paths: str) -> memory_pb2.Memory:
    req = memory_pb2.UpdateMemoryRequest(memory=mem)
    req.update_mask.paths.extend(paths)
    return await client.memory.UpdateMemory(req, metadata=client.md())


async def get(client: Client, mid: str) -> memory_pb2.Memory:
    return await client.memory.GetMemory(memory_pb2.GetMemoryRequest(id=mid), metadata=client.md())


async def listed(client: Client, **flags: Any) -> set[str]:
    """The ids of every page of ListMemories with `flags`."""
    out: set[str] = set()
    token = ""
    while True:
        page = await client.memory.ListMemories(
            memory_pb2.ListMemoriesRequest(page_size=1, page_token=token, **flags),
            metadata=client.md(),
        )
        out |= {m.id for m in page.memories}
        if not (token := page.next_page_token):
            return out


async def found(client: Client, **flags: Any) -> set[str]:
    resp = await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query="Ana drinks", top_k=100, **flags),
        metadata=client.md(),
    )
    return {r.memory.id for r in resp.results}


async def seen(client: Client, **flags: Any) -> tuple[set[str], set[str]]:
    """What ListMemories and SearchMemories show with `flags`."""
    return await listed(client, **flags), await found(client, **flags)


async def key_id(client: Client) -> str:
    return (await client.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=client.md())).key_id


# --- reads ------------------------------------------------------------------------------------


async def test_an_invalidated_memory_leaves_list_and_search_but_not_get(
    client: Client, clock: ManualClock
) -> None:
    start = clock.now() - START
    ended = clock.now() - timedelta(days=10)
    tea = await create(client, "Ana drinks tea", valid_time=ts(start))
    coffee = await create(client, "Ana drinks coffee", valid_time=ts(start))
    both = {tea.id, coffee.id}
    assert await seen(client) == (both, both)

    invalidated = await update(
        client, memory_pb2.Memory(id=tea.id, invalid_time=ts(ended)), "invalid_time"
    )
    assert invalidated.invalid_time == ts(ended)
    assert invalidated.valid_time == ts(start)
    assert invalidated.revision == 2

    assert await seen(client) == ({coffee.id}, {coffee.id})
    assert await seen(client, include_invalidated=True) == (both, both)
    before_end = ts(ended - timedelta(seconds=1))
    assert await seen(client, as_of=before_end) == (both, both)
    assert await seen(client, as_of=ts(ended)) == ({coffee.id}, {coffee.id})
    assert await seen(client, as_of=ts(ended), include_invalidated=True) == (
        {coffee.id},
        {coffee.id},
    )
    assert await seen(client, as_of=ts(start - timedelta(seconds=1))) == (set(), set())

    got = await get(client, tea.id)
    assert (got.valid_time, got.invalid_time) == (ts(start), ts(ended))
    assert got.superseded_by == ""

    # Made to hold again: back in the default reads.
    restored = await update(client, memory_pb2.Memory(id=tea.id), "invalid_time")
    assert not restored.HasField("invalid_time")
    assert await seen(client) == (both, both)


async def test_a_memory_whose_time_has_not_come_is_shown_only_when_asked(
    client: Client, clock: ManualClock
) -> None:
    ahead = await create(client, "Ana drinks matcha", valid_time=ts(clock.now() + START))
    assert await seen(client) == (set(), set())
    assert await seen(client, include_invalidated=True) == ({ahead.id}, {ahead.id})
    clock.advance(START.total_seconds())
    assert await seen(client) == ({ahead.id}, {ahead.id})


async def test_a_page_token_continues_its_own_validity_only(
    client: Client, clock: ManualClock
) -> None:
    for i in range(3):
        await create(client, f"Ana drinks tea {i}", invalid_time=ts(clock.now() + START))
    page = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=1, include_invalidated=True),
        metadata=client.md(),
    )
    for other in ({}, {"as_of": ts(clock.now())}):
        err = await refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            client.memory.ListMemories(
                memory_pb2.ListMemoriesRequest(
                    page_size=1, page_token=page.next_page_token, **other
                ),
                metadata=client.md(),
            ),
        )
        assert "page_token" in violations(err)


async def test_no_flag_shows_a_memory_to_another_tenant_or_end_user(
    srv: RunningServer, client: Client, project: admin_pb2.Project, clock: ManualClock
) -> None:
    bob = client.with_key(client.key, "bob")
    start, ended = clock.now() - START, clock.now() - timedelta(days=1)
    mine = await create(bob, "Ana drinks tea", valid_time=ts(start), invalid_time=ts(ended))
    other_org = await srv.new_org("other")
    other_project = await srv.project("other", other_org)
    strangers = {
        "other end user": client.with_key(client.key, "ana"),
        "other project": srv.client(await srv.data_key(await srv.project("p2"))),
        "other org": srv.client(await srv.data_key(other_project, client=other_org)),
    }
    flag_sets: list[dict[str, Any]] = [
        {},
        {"include_invalidated": True},
        {"as_of": ts(ended - timedelta(hours=1))},
        {"as_of": ts(ended - timedelta(hours=1)), "include_invalidated": True},
    ]
    for name, stranger in strangers.items():
        await create(stranger, "Ana drinks tea", valid_time=ts(clock.now()))
        await refused(grpc.StatusCode.NOT_FOUND, get(stranger, mine.id))
        for flags in flag_sets:
            listed_ids, found_ids = await seen(stranger, **flags)
            assert mine.id not in listed_ids | found_ids, (name, flags)
    # the owner still sees it, as it was
    assert await seen(bob, include_invalidated=True) == ({mine.id}, {mine.id})
    assert (await get(bob, mine.id)).invalid_time == ts(ended)


# --- writes -------------------------------------------------------------------------------------


async def test_valid_time_defaults_to_the_create_time(client: Client, clock: ManualClock) -> None:
    m = await create(client, "Ana drinks tea")
    assert m.valid_time == m.create_time == ts(clock.now())
    assert not m.HasField("invalid_time")
    later = clock.now() + timedelta(days=1)
    moved = await update(client, memory_pb2.Memory(id=m.id, valid_time=ts(later)), "valid_time")
    assert moved.valid_time == ts(later)
    clock.advance(60)
    reset = await update(client, memory_pb2.Memory(id=m.id), "valid_time")
    assert reset.valid_time == m.create_time


async def test_origin_names_the_key_that_wrote_the_memory(
    srv: RunningServer, client: Client, project: admin_pb2.Project
) -> None:
    writer = await key_id(client)
    created = await create(client, "Ana drinks tea")
    batch = await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="Ana drinks tea"))
            ]
        ),
        metadata=client.md(),
    )
    for m in (created, batch.results[0].memory, await get(client, created.id)):
        assert m.origin == memory_pb2.MemoryOrigin(writer_key_id=writer)
    # another key changing it does not make it the writer
    editor = srv.client(await srv.data_key(project))
    assert await key_id(editor) != writer
    edited = await update(
        editor, memory_pb2.Memory(id=created.id, content="Ana drinks green tea"), "content"
    )
    assert edited.origin.writer_key_id == writer


@pytest.mark.parametrize("path", ["superseded_by", "origin"])
async def test_update_refuses_the_servers_own_fields(client: Client, path: str) -> None:
    m = await create(client, "Ana drinks tea")
    req = memory_pb2.UpdateMemoryRequest(
        memory=memory_pb2.Memory(
            id=m.id,
            superseded_by=m.id,
            origin=memory_pb2.MemoryOrigin(operation="operations/x", writer_key_id="k"),
        )
    )
    req.update_mask.paths.append(path)
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT, client.memory.UpdateMemory(req, metadata=client.md())
    )
    assert "update_mask.paths[0]" in violations(err)
    got = await get(client, m.id)
    assert (got.superseded_by, got.origin.operation, got.revision) == ("", "", 1)


async def test_a_memory_must_hold_for_some_time(client: Client, clock: ManualClock) -> None:
    now = clock.now()
    for fields in (
        {"invalid_time": ts(now)},  # valid from its creation: now
        {"valid_time": ts(now - START), "invalid_time": ts(now - START)},
        {"valid_time": ts(now), "invalid_time": ts(now - timedelta(days=1))},
    ):
        err = await refused(
            grpc.StatusCode.INVALID_ARGUMENT, create(client, "Ana drinks tea", **fields)
        )
        assert "memory.invalid_time" in violations(err)
    batch = await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(
                    memory=memory_pb2.Memory(content="Ana drinks tea", invalid_time=ts(now))
                )
            ]
        ),
        metadata=client.md(),
    )
    assert batch.failed_count == 1
    assert "requests[0].memory.invalid_time" in violations(batch.results[0].error)

    m = await create(client, "Ana drinks tea", valid_time=ts(now - START))
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        update(client, memory_pb2.Memory(id=m.id, invalid_time=ts(now - START)), "invalid_time"),
    )
    assert "memory.invalid_time" in violations(err)
    ended = await update(client, memory_pb2.Memory(id=m.id, invalid_time=ts(now)), "invalid_time")
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        update(client, memory_pb2.Memory(id=m.id, valid_time=ts(now)), "valid_time"),
    )
    assert "memory.valid_time" in violations(err)
    assert (await get(client, m.id)).revision == ended.revision


async def test_bad_times_of_truth_are_refused_naming_the_field(client: Client) -> None:
    bad = timestamp_pb2.Timestamp(seconds=1, nanos=-1)
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT, create(client, "Ana drinks tea", valid_time=bad)
    )
    assert "memory.valid_time" in violations(err)
    far = timestamp_pb2.Timestamp()
    far.FromJsonString("2300-01-01T00:00:00Z")
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT, create(client, "Ana drinks tea", invalid_time=far)
    )
    assert "memory.invalid_time" in violations(err)
    for call in (
        client.memory.ListMemories(memory_pb2.ListMemoriesRequest(as_of=bad), metadata=client.md()),
        client.memory.SearchMemories(
            memory_pb2.SearchMemoriesRequest(query="tea", as_of=bad), metadata=client.md()
        ),
    ):
        err = await refused(grpc.StatusCode.INVALID_ARGUMENT, call)
        assert "as_of" in violations(err)


# --- export and import -----------------------------------------------------------------------


async def test_export_and_import_keep_the_time_of_truth(
    srv: RunningServer, client: Client, project: admin_pb2.Project, clock: ManualClock
) -> None:
    start, ended = clock.now() - START, clock.now() - timedelta(days=1)
    holds = await create(client, "Ana drinks coffee", valid_time=ts(start))
    old = await create(client, "Ana drinks tea", valid_time=ts(start), invalid_time=ts(ended))
    exported = [
        m
        async for m in client.memory.ExportMemories(
            memory_pb2.ExportMemoriesRequest(), metadata=client.md()
        )
    ]
    assert {m.id for m in exported} == {holds.id, old.id}

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
        for m in exported:
            # output-only fields a client sends along are not imported
            m.superseded_by = holds.id
            m.origin.operation = "operations/elsewhere"
            yield memory_pb2.ImportMemoriesRequest(memory=m)

    summary = await target.memory.ImportMemories(stream(), metadata=target.md())
    assert (summary.imported_count, summary.failed_count) == (2, 0)
    importer = await key_id(target)
    copies = {
        m.content: m
        async for m in target.memory.ExportMemories(
            memory_pb2.ExportMemoriesRequest(), metadata=target.md()
        )
    }
    for source in (holds, old):
        copy = copies[source.content]
        assert (copy.valid_time, copy.invalid_time) == (source.valid_time, source.invalid_time)
        assert copy.superseded_by == ""
        assert copy.origin == memory_pb2.MemoryOrigin(writer_key_id=importer)
    assert await listed(target) == {copies["Ana drinks coffee"].id}
    assert await listed(target, include_invalidated=True) == {m.id for m in copies.values()}
