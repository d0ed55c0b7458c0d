"""WatchMemories on a real server: every change type arrives with its ids;
a watcher that disconnects resumes with its last token and gets every later
event in order; where a stream starts (now, start_time, resume_token);
tokens that are forged, altered or of another environment or server
(INVALID_ARGUMENT) or older than the retention (OUT_OF_RANGE, injected
clock); the isolation matrix (another tenant's or end user's events never
arrive); scope, filter and event types; the cap on streams; cancel and
shutdown; a second server on the same PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2
from helpers.errors import reason_of, refused, violations
from helpers.polling import wait_for
from helpers.servers import Client, MakeServer, RunningServer
from test_isolation_memories import NO_LIMITS

from memoryd.domain.clock import ManualClock
from memoryd.domain.errors import OutOfRange
from memoryd.domain.tenancy import Caller
from memoryd.domain.watch import ResumeTokens, WatchRequest, WatchService
from memoryd.v1 import admin_pb2, keys_pb2, memory_pb2, tenancy_pb2

E = memory_pb2.MemoryEvent
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LONG_AGO = timestamp_pb2.Timestamp(seconds=946684800)  # 2000-01-01
WITHIN = 20.0  # the bound on waiting for an event (a busy machine)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def srv(make_server: MakeServer, clock: ManualClock) -> RunningServer:
    return await make_server(clock=clock, **NO_LIMITS)


@pytest.fixture
async def project(srv: RunningServer) -> admin_pb2.Project:
    return await srv.project("app")


@pytest.fixture
async def client(srv: RunningServer, project: admin_pb2.Project) -> Client:
    return srv.client(await srv.data_key(project))


Stream = Any  # an aio unary-stream call of MemoryEvent


def watch(client: Client, **request: Any) -> Stream:
    return client.memory.WatchMemories(
        memory_pb2.WatchMemoriesRequest(**request), metadata=client.md()
    )


async def watching(srv: RunningServer, client: Client, **request: Any) -> Stream:
    """A stream started "now": returns once the server has joined it (so a
    change made after this returns is after the stream's start)."""
    hub = srv.app.watchers
    assert hub is not None
    before = hub.joined
    stream = watch(client, **request)
    await wait_for(lambda: hub.joined > before, 10)
    return stream


async def take(stream: Stream, n: int) -> list[memory_pb2.MemoryEvent]:
    """The next `n` events (the test fails when they do not come in time)."""
    out: list[memory_pb2.MemoryEvent] = []
    async with asyncio.timeout(WITHIN):
        while len(out) < n:
            out.append(await stream.read())
    return out


async def until(
    stream: Stream, last: Callable[[memory_pb2.MemoryEvent], bool]
) -> list[memory_pb2.MemoryEvent]:
    """Events up to and including the first for which `last` holds."""
    out: list[memory_pb2.MemoryEvent] = []
    async with asyncio.timeout(WITHIN):
        while True:
            event = await stream.read()
            out.append(event)
            if last(event):
                return out


async def create(client: Client, content: str, rid: str = "", **fields: Any) -> memory_pb2.Memory:
    md = client.md(x_request_id=rid) if rid else client.md()
    req = memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content, **fields))
    return (await client.memory.CreateMemory(req, metadata=md)).memory


async def update(client: Client, memory: memory_pb2.Memory, *paths: str, rid: str = "") -> None:
    md = client.md(x_request_id=rid) if rid else client.md()
    await client.memory.UpdateMemory(
        memory_pb2.UpdateMemoryRequest(
            memory=memory, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        ),
        metadata=md,
    )


async def delete(client: Client, memory_id: str, rid: str = "") -> None:
    md = client.md(x_request_id=rid) if rid else client.md()
    await client.memory.DeleteMemory(memory_pb2.DeleteMemoryRequest(id=memory_id), metadata=md)


def tag_filter(tag: str) -> memory_pb2.MemoryFilter:
    flt = memory_pb2.MemoryFilter()
    flt.must.add(field="tags", equals=struct_pb2.Value(string_value=tag))
    return flt


# --- what arrives -------------------------------------------------------------------------


async def test_every_change_type_arrives_with_its_ids(
    srv: RunningServer, client: Client, clock: ManualClock
) -> None:
    stream = await watching(srv, client)
    m = await create(client, "the user lives in Porto", "rid-create", tags=["city"])
    clock.advance(1)
    await update(client, memory_pb2.Memory(id=m.id, content="Lisbon"), "content", rid="rid-upd")
    now = timestamp_pb2.Timestamp(seconds=int(clock.now().timestamp()))
    await update(client, memory_pb2.Memory(id=m.id, invalid_time=now), "invalid_time", rid="r3")
    await delete(client, m.id, rid="rid-del")
    purged = [await create(client, f"note {i}", thread_id="t") for i in range(2)]
    flt = memory_pb2.MemoryFilter()
    flt.must.add(field="thread_id", equals=struct_pb2.Value(string_value="t"))
    await client.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(filter=flt), metadata=client.md(x_request_id="rid-purge")
    )
    short = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(content="short"), ttl=duration_pb2.Duration(seconds=5)
        ),
        metadata=client.md(),
    )
    clock.advance(6)
    assert await srv.app.memories.sweep_expired() == 1

    events = await take(stream, 10)
    assert [e.type for e in events] == [
        E.CREATED,
        E.UPDATED,
        E.SUPERSEDED,
        E.DELETED,
        E.CREATED,
        E.CREATED,
        E.PURGED,
        E.PURGED,
        E.CREATED,
        E.EXPIRED,
    ]
    created, updated, superseded, deleted = events[:4]
    assert [e.memory_id for e in events[:4]] == [m.id] * 4
    assert [e.request_id for e in events[:4]] == ["rid-create", "rid-upd", "r3", "rid-del"]
    assert created.memory.content == "the user lives in Porto" and created.memory.id == m.id
    assert list(created.memory.tags) == ["city"]
    assert updated.memory.content == "Lisbon" and updated.memory.revision == 2
    assert superseded.memory.HasField("invalid_time")
    assert created.time.ToDatetime(tzinfo=UTC) == START
    # a memory that is gone: its id only
    for gone in (deleted, *events[6:8], events[9]):
        assert not gone.HasField("memory") and gone.memory_id
    assert {e.memory_id for e in events[6:8]} == {p.id for p in purged}
    assert {e.request_id for e in events[6:8]} == {"rid-purge"}
    assert (events[9].memory_id, events[9].request_id) == (short.memory.id, "")
    assert all(e.operation_id == "" for e in events)
    tokens = [e.resume_token for e in events]
    assert all(tokens) and len(set(tokens)) == len(tokens)
    stream.cancel()


async def test_a_jobs_changes_carry_the_operation(srv: RunningServer, client: Client) -> None:
    stream = await watching(srv, client)
    op = await client.memory.AddMessages(
        memory_pb2.AddMessagesRequest(
            messages=[memory_pb2.Message(role="user", content="I have a dog called Rex")]
        ),
        metadata=client.md(),
    )
    [event] = await take(stream, 1)
    assert event.type == E.CREATED and event.operation_id == op.name
    assert event.memory.content == "I have a dog called Rex" and event.request_id == ""
    stream.cancel()


# --- where a stream starts, and resuming ------------------------------------------------------


async def test_a_disconnected_watcher_resumes_with_its_last_token_without_a_gap(
    srv: RunningServer, client: Client
) -> None:
    stream = await watching(srv, client)
    first = [await create(client, f"before {i}") for i in range(3)]
    got = await take(stream, 3)
    assert [e.memory_id for e in got] == [m.id for m in first]
    stream.cancel()
    await wait_for(lambda: srv.app.watchers is not None and srv.app.watchers.watching == 0, 10)

    # changes while disconnected: new memories, and changes to the earlier ones
    later = [await create(client, f"while away {i}") for i in range(4)]
    await update(client, memory_pb2.Memory(id=first[0].id, content="changed"), "content")
    await delete(client, later[1].id)
    resumed = watch(client, resume_token=got[-1].resume_token)
    after = await take(resumed, 6)
    assert [(e.type, e.memory_id) for e in after] == [
        *[(E.CREATED, m.id) for m in later],
        (E.UPDATED, first[0].id),
        (E.DELETED, later[1].id),
    ]
    # and it goes on live
    last = await create(client, "live again")
    [live] = await take(resumed, 1)
    assert live.memory_id == last.id
    # resuming from the middle gets the rest again, in the same order
    again = watch(client, resume_token=after[2].resume_token)
    assert [e.memory_id for e in await take(again, 4)] == [
        later[3].id,
        first[0].id,
        later[1].id,
        last.id,
    ]
    resumed.cancel()
    again.cancel()


async def test_start_time_starts_at_the_first_event_at_or_after_it(
    srv: RunningServer, client: Client, clock: ManualClock
) -> None:
    old = await create(client, "old")
    clock.advance(60)
    cut = timestamp_pb2.Timestamp(seconds=int(clock.now().timestamp()))
    new = await create(client, "at the cut")
    clock.advance(1)
    newer = await create(client, "newer")
    stream = watch(client, start_time=cut)
    assert [e.memory_id for e in await take(stream, 2)] == [new.id, newer.id]
    everything = watch(client, start_time=LONG_AGO)
    assert [e.memory_id for e in await take(everything, 3)] == [old.id, new.id, newer.id]
    stream.cancel()
    everything.cancel()


async def test_without_a_start_only_new_changes_arrive(srv: RunningServer, client: Client) -> None:
    await create(client, "before the stream")
    stream = await watching(srv, client)
    after = await create(client, "after the stream")
    [event] = await take(stream, 1)
    assert event.memory_id == after.id
    stream.cancel()


async def test_a_token_older_than_the_retention_is_out_of_range(
    srv: RunningServer, project: admin_pb2.Project, client: Client, clock: ManualClock
) -> None:
    other_env = await srv.project("other")
    other = srv.client(await srv.data_key(other_env))
    stream = await watching(srv, client)
    await create(client, "old one")
    await create(client, "old two")
    [one, two] = await take(stream, 2)
    stream.cancel()
    quiet = await watching(srv, other)
    await create(other, "theirs, old")
    [theirs] = await take(quiet, 1)
    quiet.cancel()

    clock.advance(srv.app.settings.change_retention_hours * 3600 + 60)
    recent = await create(client, "recent")
    trimmed = await srv.app.store.trim(clock.now() - timedelta(hours=168))
    assert trimmed == 3
    for request in ({"resume_token": one.resume_token}, {"start_time": LONG_AGO}):
        err = await refused(grpc.StatusCode.OUT_OF_RANGE, take(watch(client, **request), 1))
        assert reason_of(err) == "WATCH_POSITION_EXPIRED"
        assert "168 hours" in err.details() and "MEMORYD_CHANGE_RETENTION_HOURS" in err.details()
        assert "watch from now" in err.details()
    # the newest trimmed event's token: nothing after it was removed
    [next_one] = await take(watch(client, resume_token=two.resume_token), 1)
    assert next_one.memory_id == recent.id
    # another environment's trims never age this one's token out (and vice versa)
    newer = await create(other, "theirs, new")
    [got] = await take(watch(other, resume_token=theirs.resume_token), 1)
    assert got.memory_id == newer.id


async def test_a_watcher_that_falls_behind_the_retention_is_told(
    srv: RunningServer, project: admin_pb2.Project, client: Client, clock: ManualClock
) -> None:
    """A stream whose reader is behind when a trim removes events it has
    not read yet ends with OUT_OF_RANGE, and never skips them. The service
    of the running server, reading two events per query (so that what it
    has not read yet is still in the log)."""
    key = client.key
    principal = await srv.app.authenticator.authenticate(key, end_user_id="", peer="test")
    slow = WatchService(
        srv.app.memories, srv.app.store, srv.app.watchers, timedelta(hours=168), read_batch=2
    )
    stream = slow.watch(Caller(principal, "rid"), WatchRequest(start_time=START))
    made = [await create(client, f"event {i}") for i in range(5)]
    delivered = [await anext(stream) for _ in range(1)]  # the log was read up to the 2nd
    clock.advance(200 * 3600)
    await create(client, "much later")
    assert await srv.app.store.trim(clock.now() - timedelta(hours=168)) == 5
    delivered.append(await anext(stream))  # read before the trim: still delivered
    with pytest.raises(OutOfRange) as info:
        await anext(stream)
    assert info.value.reason == "WATCH_POSITION_EXPIRED"
    assert [d.event.memory_id for d in delivered] == [m.id for m in made[:2]]
    await stream.aclose()


async def test_a_token_ahead_of_the_log_is_out_of_range(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    """A genuine token of a position the log never reached (its database
    restored from an older backup)."""
    head = await srv.app.store.log_head()
    env_key = f"{srv.org_id}/{project.id}/{project.environments[0].id}"
    ahead = ResumeTokens(head.secret).issue(env_key, head.seq + 10)
    err = await refused(grpc.StatusCode.OUT_OF_RANGE, take(watch(client, resume_token=ahead), 1))
    assert reason_of(err) == "WATCH_POSITION_AHEAD"


# --- tokens that are not this environment's ------------------------------------------------------


async def test_forged_altered_and_foreign_tokens_are_invalid(
    make_server: MakeServer, srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    stream = await watching(srv, client)
    await create(client, "one")
    [event] = await take(stream, 1)
    stream.cancel()
    token = event.resume_token
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[10] ^= 1  # the encrypted position
    altered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    staging = await srv.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=srv.owner.md(),
    )
    staging_client = srv.client(await srv.data_key(project, environment_id=staging.id))
    other_server = await make_server()
    other_project = await other_server.project("app")
    other_client = other_server.client(await other_server.data_key(other_project))
    other_stream = await watching(other_server, other_client)
    await create(other_client, "elsewhere")
    [elsewhere] = await take(other_stream, 1)
    other_stream.cancel()

    cases = {
        "garbage": (client, "not a token"),
        "base64 of a number": (client, base64.urlsafe_b64encode(b"42").decode()),
        "altered": (client, altered),
        "too long": (client, "A" * 500),
        "another environment's": (staging_client, token),
        "another server's": (client, elsewhere.resume_token),
    }
    for name, (who, bad) in cases.items():
        err = await refused(grpc.StatusCode.INVALID_ARGUMENT, take(watch(who, resume_token=bad), 1))
        assert "resume_token" in violations(err), name
    # the same token from its own environment is fine
    later = await create(client, "two")
    [resumed] = await take(watch(client, resume_token=token), 1)
    assert resumed.memory_id == later.id


# --- who sees what ---------------------------------------------------------------------------


async def test_a_key_without_memory_read_is_refused(
    srv: RunningServer, project: admin_pb2.Project
) -> None:
    writer = srv.client(await srv.data_key(project, ("memory:add",)))
    err = await refused(grpc.StatusCode.PERMISSION_DENIED, take(watch(writer), 1))
    assert reason_of(err) == "SCOPE_MISSING" and "memory:read" in err.details()
    org_key = srv.owner
    await refused(grpc.StatusCode.PERMISSION_DENIED, take(watch(org_key), 1))


async def test_filter_and_event_types_apply_on_the_server(
    srv: RunningServer, client: Client
) -> None:
    stream = await watching(srv, client, filter=tag_filter("x"), event_types=[E.CREATED, E.DELETED])
    hit = await create(client, "tagged", tags=["x"])
    miss = await create(client, "untagged", tags=["y"])
    await update(client, memory_pb2.Memory(id=hit.id, content="tagged, changed"), "content")
    await delete(client, miss.id)
    await delete(client, hit.id)  # the filter applies to its last state
    end = await create(client, "the end", tags=["x"])
    events = await take(stream, 3)
    assert [(e.type, e.memory_id) for e in events] == [
        (E.CREATED, hit.id),
        (E.DELETED, hit.id),
        (E.CREATED, end.id),
    ]
    stream.cancel()


async def test_a_bad_filter_or_event_type_is_invalid(client: Client) -> None:
    bad = memory_pb2.MemoryFilter()
    bad.must.add(field="org_id", equals=struct_pb2.Value(string_value="x"))
    err = await refused(grpc.StatusCode.INVALID_ARGUMENT, take(watch(client, filter=bad), 1))
    assert any(v.startswith("filter") for v in violations(err))
    for value in (E.TYPE_UNSPECIFIED, 99):
        err = await refused(
            grpc.StatusCode.INVALID_ARGUMENT, take(watch(client, event_types=[value]), 1)
        )
        assert "event_types[0]" in violations(err)


# --- the stream's life -----------------------------------------------------------------------


async def test_streams_past_the_cap_are_refused(make_server: MakeServer) -> None:
    srv = await make_server(watch_max_streams=2, **NO_LIMITS)
    project = await srv.project("app")
    client = srv.client(await srv.data_key(project))
    one = await watching(srv, client)
    two = await watching(srv, client)
    err = await refused(grpc.StatusCode.RESOURCE_EXHAUSTED, take(watch(client), 1))
    assert reason_of(err) == "TOO_MANY_WATCHERS"
    one.cancel()  # cancelling a call frees its place
    await wait_for(lambda: srv.app.watchers is not None and srv.app.watchers.watching == 1, 10)
    three = await watching(srv, client)
    m = await create(client, "seen by both")
    for stream in (two, three):
        assert [e.memory_id for e in await take(stream, 1)] == [m.id]
        stream.cancel()


async def test_shutdown_ends_streams_with_unavailable(make_server: MakeServer) -> None:
    srv = await make_server(grace_period_s=5.0, **NO_LIMITS)
    project = await srv.project("app")
    client = srv.client(await srv.data_key(project))
    stream = await watching(srv, client)
    m = await create(client, "before shutdown")
    [event] = await take(stream, 1)
    assert event.memory_id == m.id
    await srv.app.stop()
    err = await refused(grpc.StatusCode.UNAVAILABLE, take(stream, 1))
    assert reason_of(err) == "SHUTTING_DOWN" and "resume_token" in err.details()


async def test_revoking_the_key_ends_its_streams_and_only_them(
    srv: RunningServer, project: admin_pb2.Project
) -> None:
    created = await srv.owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            project_id=project.id,
            environment_id=project.environments[0].id,
            name="watcher",
            scopes=["memory:read"],
        ),
        metadata=srv.owner.md(),
    )
    doomed = srv.client(created.secret)
    other = srv.client(await srv.data_key(project))
    doomed_stream = await watching(srv, doomed)
    other_stream = await watching(srv, other)
    await srv.owner.keys.RevokeApiKey(
        keys_pb2.RevokeApiKeyRequest(id=created.api_key.id), metadata=srv.owner.md()
    )
    err = await refused(grpc.StatusCode.UNAVAILABLE, take(doomed_stream, 1))
    assert reason_of(err) == "API_KEY_CHANGED"
    await refused(grpc.StatusCode.UNAUTHENTICATED, take(watch(doomed), 1))
    m = await create(other, "the other stream goes on")
    [event] = await take(other_stream, 1)
    assert event.memory_id == m.id
    other_stream.cancel()


async def test_a_watcher_on_another_server_of_the_same_database_sees_the_write(
    make_server: MakeServer, pg_url: str
) -> None:
    """Two replicas on one PostgreSQL: a change made through one reaches a
    watcher of the other (its poll; bounded wait, no timing asserted)."""
    a = await make_server(database_url=pg_url, watch_poll_interval_s=0.1, **NO_LIMITS)
    b = await make_server(
        database_url=pg_url, bootstrap_if_empty=False, watch_poll_interval_s=0.1, **NO_LIMITS
    )
    project = await a.project("app")
    key = await a.data_key(project)
    stream = await watching(b, b.client(key))
    m = await create(a.client(key), "written on a")
    [event] = await take(stream, 1)
    assert (event.type, event.memory_id, event.memory.content) == (E.CREATED, m.id, "written on a")
    stream.cancel()
