"""MemoryService policies on a real server: TTL and the sweep (ManualClock),
dedupe on create, quotas and the required end user set through
AdminService.UpdateProject (which takes effect at once on this server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import code_pb2
from grpc import aio
from helpers.errors import quota_violations, reason_of, refused, violations
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.domain.clock import ManualClock
from memoryd.domain.control import Quotas, RateLimits
from memoryd.domain.tenancy import Tenant
from memoryd.v1 import admin_pb2, memory_pb2, tenancy_pb2

NO_LIMITS = {
    "key_requests_per_second": 1e6,
    "key_burst": 1_000_000,
    "project_requests_per_second": 1e6,
    "project_burst": 1_000_000,
}


def memory(content: str, **fields: Any) -> memory_pb2.Memory:
    return memory_pb2.Memory(content=content, **fields)


async def create(client: Client, content: str, **request: Any) -> memory_pb2.CreateMemoryResponse:
    fields = request.pop("fields", {})
    return await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory(content, **fields), **request),
        metadata=client.md(),
    )


async def list_ids(client: Client) -> list[str]:
    page = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=1000), metadata=client.md()
    )
    return [m.id for m in page.memories]


async def export_ids(client: Client) -> list[str]:
    stream = client.memory.ExportMemories(memory_pb2.ExportMemoriesRequest(), metadata=client.md())
    return [m.id async for m in stream]


async def search_ids(client: Client, query: str) -> list[str]:
    resp = await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query=query, top_k=100, min_score=-1),
        metadata=client.md(),
    )
    return [r.memory.id for r in resp.results]


def ts(t: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


def when(t: timestamp_pb2.Timestamp) -> datetime:
    return t.ToDatetime(tzinfo=UTC)


async def update_project(srv: RunningServer, project: admin_pb2.Project, **groups: Any) -> None:
    """UpdateProject with the given `settings=` / `quotas=` fields, masking each."""
    target = admin_pb2.Project(id=project.id)
    req = admin_pb2.UpdateProjectRequest(project=target)
    for group, values in groups.items():
        for name, v in values.items():
            sub = getattr(req.project, group)
            if isinstance(v, timedelta):
                getattr(sub, name).FromTimedelta(v)
            else:
                setattr(sub, name, v)
            req.update_mask.paths.append(f"{group}.{name}")
    await srv.owner.admin.UpdateProject(req, metadata=srv.owner.md())


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


# --- TTL --------------------------------------------------------------------------------------


async def test_expired_memories_are_invisible_at_once_and_the_sweep_removes_them(
    srv: RunningServer, client: Client, clock: ManualClock
) -> None:
    start = clock.now()
    forever = (await create(client, "a lasting note")).memory
    short = (await create(client, "a short note", ttl=duration_pb2.Duration(seconds=60))).memory
    dated = (
        await create(
            client, "a dated note", fields={"expire_time": ts(start + timedelta(seconds=120))}
        )
    ).memory
    assert when(short.expire_time) == start + timedelta(seconds=60)
    assert when(dated.expire_time) == start + timedelta(seconds=120)

    clock.advance(59)
    everything = {forever.id, short.id, dated.id}
    assert set(await list_ids(client)) == everything
    assert set(await search_ids(client, "note")) == everything

    clock.advance(1)  # expire_time == now: expired
    alive = {forever.id, dated.id}
    await refused(
        grpc.StatusCode.NOT_FOUND,
        client.memory.GetMemory(memory_pb2.GetMemoryRequest(id=short.id), metadata=client.md()),
    )
    assert set(await list_ids(client)) == alive
    assert set(await search_ids(client, "a short note")) == alive
    assert set(await export_ids(client)) == alive
    dry = await client.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(all=True, dry_run=True), metadata=client.md()
    )
    assert dry.purged_count == 2
    req = memory_pb2.UpdateMemoryRequest(memory=memory("revived", id=short.id))
    req.update_mask.paths.append("content")
    await refused(grpc.StatusCode.NOT_FOUND, client.memory.UpdateMemory(req, metadata=client.md()))

    clock.advance(60)
    assert await list_ids(client) == [forever.id]
    assert await srv.app.memories.sweep_expired() == 2
    assert await srv.app.memories.sweep_expired() == 0
    # Read from the store as of before their expiry: the swept memories are gone.
    tenant = Tenant(srv.org_id, forever.project_id, forever.environment_id)
    stored = await srv.app.vectors.get(tenant, [forever.id, short.id, dated.id], start)
    assert [r.id for r in stored] == [forever.id]


async def test_the_sweep_leaves_unexpired_memories_of_every_tenant(
    srv: RunningServer, client: Client, clock: ManualClock
) -> None:
    other = await srv.project("other")
    other_client = srv.client(await srv.data_key(other))
    keep = [
        (await create(client, "mine", ttl=duration_pb2.Duration(seconds=600))).memory.id,
        (await create(other_client, "theirs")).memory.id,
    ]
    await create(other_client, "theirs, short", ttl=duration_pb2.Duration(seconds=10))
    clock.advance(11)
    assert await srv.app.memories.sweep_expired() == 1
    assert await srv.app.memories.sweep_expired() == 0
    assert await list_ids(client) == keep[:1]
    assert await list_ids(other_client) == keep[1:]


async def test_a_project_default_ttl_applies_to_new_memories(
    srv: RunningServer, project: admin_pb2.Project, client: Client, clock: ManualClock
) -> None:
    before = (await create(client, "written before the setting")).memory
    await update_project(srv, project, settings={"default_ttl": timedelta(hours=1)})
    defaulted = (await create(client, "takes the default")).memory
    explicit = (await create(client, "own ttl", ttl=duration_pb2.Duration(seconds=7200))).memory
    assert not before.HasField("expire_time")
    assert when(defaulted.expire_time) == clock.now() + timedelta(hours=1)
    assert when(explicit.expire_time) == clock.now() + timedelta(hours=2)
    clock.advance(3600)
    assert set(await list_ids(client)) == {before.id, explicit.id}


# --- dedupe -----------------------------------------------------------------------------------


async def test_dedupe_returns_the_existing_near_duplicate(client: Client) -> None:
    first = await create(client, "Ana prefers green tea over coffee", dedupe=True)
    assert not first.deduplicated
    again = await create(client, "Ana prefers green tea over coffee!", dedupe=True)
    assert again.deduplicated
    assert again.memory.id == first.memory.id
    assert again.memory.content == "Ana prefers green tea over coffee"
    assert await list_ids(client) == [first.memory.id]
    other = await create(client, "Bob walks his dog at dawn", dedupe=True)
    assert not other.deduplicated
    # without dedupe the same text is stored again
    plain = await create(client, "Ana prefers green tea over coffee")
    assert not plain.deduplicated and plain.memory.id != first.memory.id
    assert len(await list_ids(client)) == 3


async def test_dedupe_threshold_per_request_and_per_project(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    base = await create(client, "alpha beta gamma delta", dedupe=True)
    # shares 3 of 4 words: cosine ~0.83 under the test embedder
    close = "alpha beta gamma epsilon"
    assert not (await create(client, close, dedupe=True)).deduplicated  # default 0.95
    loose = await create(client, "alpha beta gamma zeta", dedupe=True, dedupe_threshold=0.5)
    assert loose.deduplicated
    await update_project(srv, project, settings={"dedupe_threshold": 0.5})
    by_project = await create(client, "alpha beta gamma eta", dedupe=True)
    assert by_project.deduplicated
    stored = await list_ids(client)
    assert len(stored) == 2 and base.memory.id in stored
    assert loose.memory.id in stored and by_project.memory.id in stored


async def test_dedupe_never_crosses_end_users(client: Client) -> None:
    ana, bob = client.with_key(client.key, "ana"), client.with_key(client.key, "bob")
    text = "prefers the window seat"
    a = await create(ana, text, dedupe=True)
    b = await create(bob, text, dedupe=True)
    nobody = await create(client, text, dedupe=True)
    assert not (a.deduplicated or b.deduplicated or nobody.deduplicated)
    assert len({a.memory.id, b.memory.id, nobody.memory.id}) == 3
    assert b.memory.end_user_id == "bob"
    again = await create(ana, text, dedupe=True)
    assert again.deduplicated and again.memory.id == a.memory.id
    again = await create(client, text, dedupe=True)
    assert again.deduplicated and again.memory.id == nobody.memory.id


async def test_dedupe_in_a_batch(client: Client) -> None:
    existing = await create(client, "the sky is blue")
    resp = await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(memory=memory("the sky is blue"), dedupe=True),
                memory_pb2.CreateMemoryRequest(memory=memory("grass is green"), dedupe=True),
                memory_pb2.CreateMemoryRequest(memory=memory("grass is green"), dedupe=True),
            ]
        ),
        metadata=client.md(),
    )
    assert resp.succeeded_count == 3
    first, second, third = resp.results
    assert first.deduplicated and first.memory.id == existing.memory.id
    assert not second.deduplicated
    # the third is a duplicate of the second, written in the same batch
    assert third.deduplicated and third.memory.id == second.memory.id
    assert len(await list_ids(client)) == 2


# --- quotas -----------------------------------------------------------------------------------


async def test_content_and_metadata_byte_quotas(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    await update_project(srv, project, quotas={"max_content_bytes": 20, "max_metadata_bytes": 30})
    ok = await create(client, "x" * 20)
    err = await refused(grpc.StatusCode.RESOURCE_EXHAUSTED, create(client, "x" * 21))
    assert reason_of(err) == "CONTENT_TOO_LARGE"
    assert "memory.content" in quota_violations(err)
    # bytes, not characters: eleven 'é' is 22 bytes
    err = await refused(grpc.StatusCode.RESOURCE_EXHAUSTED, create(client, "é" * 11))
    assert "memory.content" in quota_violations(err)

    small = memory_pb2.Memory(content="m")
    small.metadata.update({"k": "v" * 10})
    await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=small), metadata=client.md()
    )
    big = memory_pb2.Memory(content="m")
    big.metadata.update({"k": "v" * 40})
    err = await refused(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        client.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=big), metadata=client.md()
        ),
    )
    assert reason_of(err) == "METADATA_TOO_LARGE"
    assert "memory.metadata" in quota_violations(err)

    # an update past the quota is refused and changes nothing
    req = memory_pb2.UpdateMemoryRequest(memory=memory("y" * 21, id=ok.memory.id))
    req.update_mask.paths.append("content")
    err = await refused(
        grpc.StatusCode.RESOURCE_EXHAUSTED, client.memory.UpdateMemory(req, metadata=client.md())
    )
    assert "memory.content" in quota_violations(err)
    got = await client.memory.GetMemory(
        memory_pb2.GetMemoryRequest(id=ok.memory.id), metadata=client.md()
    )
    assert (got.content, got.revision) == ("x" * 20, 1)

    # in a batch, the oversized item fails alone
    batch = await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(memory=memory("fits")),
                memory_pb2.CreateMemoryRequest(memory=memory("z" * 50)),
            ]
        ),
        metadata=client.md(),
    )
    assert (batch.succeeded_count, batch.failed_count) == (1, 1)
    assert batch.results[1].error.code == code_pb2.RESOURCE_EXHAUSTED
    assert reason_of(batch.results[1].error) == "CONTENT_TOO_LARGE"
    assert "memory.content" in quota_violations(batch.results[1].error)
    assert len(await list_ids(client)) == 3

    # raised again: effective at once
    await update_project(srv, project, quotas={"max_content_bytes": 100})
    await create(client, "x" * 50)


async def test_memories_per_environment_quota(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    await update_project(srv, project, quotas={"max_memories_per_environment": 3})
    ana = client.with_key(client.key, "ana")
    first = (await create(client, "one")).memory
    await create(ana, "two")  # end users count towards their environment
    await create(client, "three")
    err = await refused(grpc.StatusCode.RESOURCE_EXHAUSTED, create(client, "four"))
    assert reason_of(err) == "MEMORY_QUOTA_EXCEEDED"
    failure = quota_violations(err)
    assert any("max_memories_per_environment=3" in d for d in failure.values()), failure
    err = await refused(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        client.memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(
                requests=[memory_pb2.CreateMemoryRequest(memory=memory("five"))]
            ),
            metadata=client.md(),
        ),
    )
    assert quota_violations(err)
    assert len(await list_ids(client)) == 3

    # another environment of the project has its own count
    staging = await srv.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=srv.owner.md(),
    )
    elsewhere = srv.client(await srv.data_key(project, environment_id=staging.id))
    for i in range(3):
        await create(elsewhere, f"staging {i}")

    # deleting frees a place at once
    await client.memory.DeleteMemory(
        memory_pb2.DeleteMemoryRequest(id=first.id), metadata=client.md()
    )
    await create(client, "four, after a delete")
    await refused(grpc.StatusCode.RESOURCE_EXHAUSTED, create(client, "five"))
    # so does a purge
    await ana.memory.PurgeMemories(memory_pb2.PurgeMemoriesRequest(all=True), metadata=ana.md())
    await create(client, "five, after a purge")
    # and raising the quota
    await update_project(srv, project, quotas={"max_memories_per_environment": 10})
    await create(client, "six")
    assert len(await list_ids(client)) == 4


async def test_an_import_past_the_quota_reports_the_failures(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    await update_project(srv, project, quotas={"max_content_bytes": 10})

    async def stream() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
        for content in ("short", "far too long for the quota", "tiny"):
            yield memory_pb2.ImportMemoriesRequest(memory=memory(content))

    summary = await client.memory.ImportMemories(stream(), metadata=client.md())
    assert (summary.imported_count, summary.failed_count) == (2, 1)
    assert summary.errors[0].index == 1
    assert summary.errors[0].error.code == code_pb2.RESOURCE_EXHAUSTED
    assert reason_of(summary.errors[0].error) == "CONTENT_TOO_LARGE"


# --- required end user ------------------------------------------------------------------------


async def test_a_project_can_require_the_end_user_header(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    existing = (await create(client, "written before")).memory
    await update_project(srv, project, settings={"require_end_user_id": True})
    ana = client.with_key(client.key, "ana")
    calls = [
        lambda c: create(c, "hello"),
        lambda c: c.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=c.md()),
        lambda c: c.memory.SearchMemories(
            memory_pb2.SearchMemoriesRequest(query="hello"), metadata=c.md()
        ),
        lambda c: c.memory.GetMemory(memory_pb2.GetMemoryRequest(id=existing.id), metadata=c.md()),
        lambda c: c.memory.PurgeMemories(
            memory_pb2.PurgeMemoriesRequest(all=True), metadata=c.md()
        ),
    ]
    for call in calls:
        err = await refused(grpc.StatusCode.INVALID_ARGUMENT, call(client))
        assert "x-end-user-id" in violations(err)
    made = (await create(ana, "hello")).memory
    assert made.end_user_id == "ana"
    assert await list_ids(ana) == [made.id]

    await update_project(srv, project, settings={"require_end_user_id": False})
    assert set(await list_ids(client)) == {existing.id, made.id}


async def test_dedupe_in_a_batch_of_a_thousand_keeps_the_first_of_each_duplicate(
    client: Client,
) -> None:
    # 500 distinct texts (8 words of their own each, so no two are near
    # duplicates under the test embedder), then the same 500 again.
    texts = [
        " ".join(f"{w}{i}" for w in ("item", "al", "be", "ga", "de", "ep", "ze", "et"))
        for i in range(500)
    ]
    resp = await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(memory=memory(t), dedupe=True) for t in texts * 2
            ]
        ),
        metadata=client.md(),
    )
    assert resp.succeeded_count == 1000
    firsts, seconds = resp.results[:500], resp.results[500:]
    assert not any(r.deduplicated for r in firsts)
    assert all(r.deduplicated for r in seconds)
    assert [r.memory.id for r in seconds] == [r.memory.id for r in firsts]
    assert sorted(await list_ids(client)) == sorted(r.memory.id for r in firsts)


# --- the server's ceilings (issue 8, S5) ----------------------------------------------------


async def _grant_directly(srv: RunningServer, project: admin_pb2.Project) -> None:
    """Stores the overrides an organization once granted itself, past every
    ceiling, as a project written before the ceilings existed."""
    stored = await srv.app.store.get_project(srv.org_id, project.id)
    assert stored is not None
    await srv.app.store.update_project(
        replace(
            stored,
            rate_limits=RateLimits(1e15, 2**31 - 1, 1e15, 2**31 - 1),
            quotas=Quotas(2**62, 2**62, 2**62),
        )
    )


async def test_the_servers_content_and_metadata_sizes_are_hard_limits(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    await _grant_directly(srv, project)
    err = await refused(grpc.StatusCode.RESOURCE_EXHAUSTED, create(client, "x" * 32_769))
    assert quota_violations(err) == {"memory.content": "max_content_bytes=32768"}
    with pytest.raises(aio.AioRpcError) as info:
        await create(client, "x" * 2 * 1024 * 1024)  # what was once stored
    assert info.value.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    big = memory_pb2.Memory(content="m")
    big.metadata.update({"k": "v" * 16_384})
    err = await refused(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        client.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=big), metadata=client.md()
        ),
    )
    assert quota_violations(err) == {"memory.metadata": "max_metadata_bytes=16384"}
    assert await list_ids(client) == []
    await create(client, "x" * 32_768)  # the server's limit itself is fine
    # a project may still lower them
    await update_project(srv, project, quotas={"max_content_bytes": 10})
    await refused(grpc.StatusCode.RESOURCE_EXHAUSTED, create(client, "x" * 11))


async def test_stored_rate_overrides_past_the_ceiling_are_capped(
    make_server: MakeServer, clock: ManualClock
) -> None:
    srv = await make_server(
        clock=clock,
        key_requests_per_second=1.0,
        key_burst=2,
        project_requests_per_second=1.0,
        project_burst=2,
        max_requests_per_second_override=1.0,
        max_burst_override=5,
    )
    project = await srv.project("greedy")
    client = srv.client(await srv.data_key(project))
    await _grant_directly(srv, project)
    for i in range(5):  # the clock stands still: the burst is all there is
        await create(client, f"m{i}")
    await refused(grpc.StatusCode.RESOURCE_EXHAUSTED, create(client, "one too many"))
