"""Every acknowledged change to a memory is in the change log before the
call answers, on a real server: one event per memory changed, of the right
type, with the memory's state, the tenant and end user it belongs to, and
the call's request id (or the operation's id for AddMessages' job). A
change whose event cannot be recorded fails its call (UNAVAILABLE).

The log is read straight from the server's control store here; what a
client sees of it is WatchMemories (test_watch_memories.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from helpers.openai_server import ScriptedOpenAI, facts_reply
from helpers.polling import wait_for
from helpers.servers import Client, MakeServer, RunningServer
from test_add_messages import add, result, wait
from test_add_messages_llm import deciding

from memoryd.domain.changes import ChangeEvent, EventType
from memoryd.domain.clock import ManualClock
from memoryd.domain.tenancy import Tenant
from memoryd.v1 import admin_pb2, memory_pb2

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def srv(make_server: MakeServer, clock: ManualClock) -> RunningServer:
    return await make_server(clock=clock)


@pytest.fixture
async def project(srv: RunningServer) -> admin_pb2.Project:
    return await srv.project("app")


@pytest.fixture
async def client(srv: RunningServer, project: admin_pb2.Project) -> Client:
    return srv.client(await srv.data_key(project))


def everyone(srv: RunningServer, project: admin_pb2.Project) -> Tenant:
    return Tenant(srv.org_id, project.id, project.environments[0].id, all_end_users=True)


async def log(srv: RunningServer, project: admin_pb2.Project) -> list[ChangeEvent]:
    return await srv.app.store.read(everyone(srv, project), 0, 10_000)


async def create(client: Client, content: str, rid: str = "", **kw: Any) -> memory_pb2.Memory:
    md = client.md(x_request_id=rid) if rid else client.md()
    resp = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content, **kw)),
        metadata=md,
    )
    return resp.memory


async def test_create_and_batch_create_record_created_with_the_request_id(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    one = await create(client, "the user likes tea", "rid-one", tags=["drink"])
    batch = await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=f"fact {i}"))
                for i in range(3)
            ]
            + [memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=""))]  # refused
        ),
        metadata=client.md(x_request_id="rid-batch"),
    )
    assert batch.failed_count == 1
    events = await log(srv, project)
    assert [(e.type, e.memory_id, e.request_id) for e in events] == [
        (EventType.CREATED, one.id, "rid-one"),
        *[(EventType.CREATED, r.memory.id, "rid-batch") for r in batch.results[:3]],
    ]
    first = events[0]
    assert first.memory is not None
    assert first.memory["content"] == "the user likes tea" and first.memory["tags"] == ["drink"]
    assert first.tenant == Tenant(srv.org_id, project.id, project.environments[0].id)
    assert first.operation_id == "" and first.time == START
    # one append per call: the batch's positions are consecutive
    assert [e.seq for e in events[1:]] == list(range(events[1].seq, events[1].seq + 3))


async def test_a_deduplicated_create_changes_nothing_and_records_nothing(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    await create(client, "the user likes tea")
    again = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(content="the user likes tea"), dedupe=True
        ),
        metadata=client.md(),
    )
    assert again.deduplicated
    assert len(await log(srv, project)) == 1


async def test_an_end_users_memory_is_recorded_for_that_end_user(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    ana = client.with_key(client.key, "ana")
    m = await create(ana, "ana's note")
    [event] = await log(srv, project)
    assert event.memory_id == m.id and event.tenant.end_user_id == "ana"
    assert event.memory is not None and event.memory["end_user_id"] == "ana"


async def test_update_records_updated_and_ending_its_truth_records_superseded(
    srv: RunningServer, project: admin_pb2.Project, client: Client, clock: ManualClock
) -> None:
    m = await create(client, "the user lives in Porto")
    clock.advance(10)
    changed = await client.memory.UpdateMemory(
        memory_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(id=m.id, content="the user lives in Lisbon"),
            update_mask=field_mask_pb2.FieldMask(paths=["content"]),
        ),
        metadata=client.md(x_request_id="rid-update"),
    )
    ended = await client.memory.UpdateMemory(
        memory_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(
                id=m.id, invalid_time=timestamp_pb2.Timestamp(seconds=int(clock.now().timestamp()))
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["invalid_time"]),
        ),
        metadata=client.md(x_request_id="rid-end"),
    )
    # changing it again while it no longer holds is an update
    await client.memory.UpdateMemory(
        memory_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(id=m.id, tags=["moved"]),
            update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
        ),
        metadata=client.md(),
    )
    events = (await log(srv, project))[1:]
    assert [(e.type, e.memory_id) for e in events] == [
        (EventType.UPDATED, m.id),
        (EventType.SUPERSEDED, m.id),
        (EventType.UPDATED, m.id),
    ]
    assert [e.request_id for e in events[:2]] == ["rid-update", "rid-end"]
    assert events[0].memory is not None
    assert events[0].memory["content"] == changed.content and events[0].memory["revision"] == 2
    assert events[1].memory is not None and "invalid_time" in events[1].memory
    assert ended.revision == 3


async def test_delete_records_deleted_with_the_last_state(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    m = await create(client, "to forget", metadata=None)
    await client.memory.DeleteMemory(
        memory_pb2.DeleteMemoryRequest(id=m.id), metadata=client.md(x_request_id="rid-del")
    )
    deleted = (await log(srv, project))[-1]
    assert (deleted.type, deleted.memory_id, deleted.request_id) == (
        EventType.DELETED,
        m.id,
        "rid-del",
    )
    assert deleted.memory is not None and deleted.memory["content"] == "to forget"


async def test_purge_records_one_purged_event_per_memory(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    doomed = {(await create(client, f"thread note {i}", thread_id="t1")).id for i in range(5)}
    kept = await create(client, "another thread", thread_id="t2")
    purge_filter = memory_pb2.MemoryFilter(
        must=[memory_pb2.Condition(field="thread_id", equals={"string_value": "t1"})]
    )
    dry = await client.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(filter=purge_filter, dry_run=True), metadata=client.md()
    )
    assert dry.purged_count == 5 and len(await log(srv, project)) == 6
    done = await client.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(filter=purge_filter),
        metadata=client.md(x_request_id="rid-purge"),
    )
    assert done.purged_count == 5
    purged = [e for e in await log(srv, project) if e.type is EventType.PURGED]
    assert {e.memory_id for e in purged} == doomed and len(purged) == 5
    assert {e.request_id for e in purged} == {"rid-purge"}
    assert all(e.memory is not None and e.memory["thread_id"] == "t1" for e in purged)
    assert kept.id not in {e.memory_id for e in purged}


async def test_import_records_created(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    async def stream() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
        for i in range(3):
            yield memory_pb2.ImportMemoriesRequest(memory=memory_pb2.Memory(content=f"old {i}"))

    summary = await client.memory.ImportMemories(stream(), metadata=client.md(x_request_id="imp"))
    assert summary.imported_count == 3
    events = await log(srv, project)
    assert [(e.type, e.request_id) for e in events] == [(EventType.CREATED, "imp")] * 3
    assert sorted(e.memory["content"] for e in events if e.memory) == ["old 0", "old 1", "old 2"]


async def test_the_ttl_sweep_records_expired(
    srv: RunningServer, project: admin_pb2.Project, client: Client, clock: ManualClock
) -> None:
    other = await srv.project("other")
    other_client = srv.client(await srv.data_key(other))
    ttl = duration_pb2.Duration(seconds=10)
    short = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="short"), ttl=ttl),
        metadata=client.md(),
    )
    theirs = await other_client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="theirs"), ttl=ttl),
        metadata=other_client.md(),
    )
    await create(client, "forever")
    clock.advance(11)
    assert await srv.app.memories.sweep_expired() == 2
    mine = [e for e in await log(srv, project) if e.type is EventType.EXPIRED]
    assert [(e.memory_id, e.request_id, e.operation_id) for e in mine] == [
        (short.memory.id, "", "")
    ]
    assert mine[0].time == START + timedelta(seconds=11)
    [their_event] = [e for e in await log(srv, other) if e.type is EventType.EXPIRED]
    assert their_event.memory_id == theirs.memory.id


async def test_events_of_writes_during_a_change_log_outage_are_held_then_appended_in_order(
    srv: RunningServer, project: admin_pb2.Project, client: Client
) -> None:
    """While the log cannot be written (its table gone: the store answers
    Unavailable, as in a database outage), writes are acknowledged and
    their events held in memory; the first write after it answers again
    appends them first, in order."""
    async with srv.app.store.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE change_events RENAME TO change_events_away"))
    held = [(await create(client, f"held {i}")).id for i in range(2)]
    async with srv.app.store.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE change_events_away RENAME TO change_events"))
    after = (await create(client, "after")).id
    async with srv.app.store.engine.begin() as conn:
        rows = (
            await conn.execute(
                sa.text("SELECT memory_id FROM change_events WHERE type = 'CREATED' ORDER BY seq")
            )
        ).all()
    assert [r[0] for r in rows][-3:] == [*held, after]


# --- AddMessages' job -----------------------------------------------------------------------


@pytest.fixture
def llm() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI() as server:
        yield server


async def test_the_jobs_decisions_record_their_events_with_the_operation_id(
    make_server: MakeServer, llm: ScriptedOpenAI
) -> None:
    srv = await make_server(
        extractor="llm",
        llm_base_url=llm.base_url,
        llm_api_key="sk-test-secret",
        llm_model="test-model",
        llm_timeout_s=5.0,
        llm_max_retries=1,
        job_max_attempts=1,
    )
    project = await srv.project("app")
    client = srv.client(await srv.data_key(project))
    city = await create(client, "The user lives in Porto")
    diet = await create(client, "The user is vegetarian")
    job = await create(client, "The user works at Acme")
    llm.script(
        facts_reply(
            [
                "The user has a dog named Rex",
                "The user lives in Lisbon",
                "The user is vegan",
                "The user left Acme",
            ]
        )
    )
    llm.default = deciding(
        (0, "ADD", None, "The user has a dog named Rex"),
        (1, "SUPERSEDE", city.content, "The user lives in Lisbon"),
        (2, "UPDATE", diet.content, "The user is vegan"),
        (3, "DELETE", job.content, ""),
    )
    done = await wait(client, await add(client, "about my life", infer=True))
    decisions = result(done).decisions
    op_id = done.name.removeprefix("operations/")
    events = (await log(srv, project))[3:]
    assert all(e.operation_id == op_id and e.request_id == "" for e in events)
    got = sorted((e.type.value, e.memory_id) for e in events)
    assert got == sorted(
        [
            ("CREATED", decisions[0].memory.id),  # ADD
            ("CREATED", decisions[1].memory.id),  # SUPERSEDE: the new memory
            ("SUPERSEDED", city.id),  # ... and the old one
            ("UPDATED", diet.id),  # UPDATE
            ("SUPERSEDED", job.id),  # DELETE: it stops holding, stays as history
        ]
    )
    old_city = next(e for e in events if e.memory_id == city.id)
    assert old_city.memory is not None
    assert old_city.memory["superseded_by"] == decisions[1].memory.id


async def test_the_sweeper_trims_events_past_the_retention(
    make_server: MakeServer, clock: ManualClock
) -> None:
    srv = await make_server(clock=clock, sweep_interval_s=0.05, change_retention_hours=1)
    project = await srv.project("app")
    client = srv.client(await srv.data_key(project))
    await create(client, "old")
    clock.advance(3600 + 1)
    recent = await create(client, "recent")

    async def only_recent_left() -> bool:
        return [e.memory_id for e in await log(srv, project)] == [recent.id]

    await wait_for(only_recent_left, 20)
    trimmed = await srv.app.store.trimmed(everyone(srv, project))
    assert trimmed is not None and trimmed.time == START
