"""The time of truth of memories, on fakes of the ports: valid_time and
invalid_time on create and update, what List, Search, dedupe and export
see, superseding as a job does it (`Updater.apply`), and the provenance a
write records."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from helpers.fakes import Domain

from memoryd.domain.control import Project
from memoryd.domain.errors import InvalidArgument
from memoryd.domain.memories import Defaults, MemoryService, MemoryUpdate, NewMemory
from memoryd.domain.memories.model import NoMeter
from memoryd.domain.memories.update import Updater
from memoryd.domain.memory import CURRENT, Filter, MemoryRecord, Origin, Validity
from memoryd.domain.tenancy import Caller, Scope

EVERY_TIME = Validity(include_invalidated=True)


def fields(err: InvalidArgument) -> set[str]:
    return {v.field for v in err.violations}


async def setup() -> tuple[Domain, MemoryService, Project, Caller]:
    d = Domain()
    prj = await d.project()
    return d, d.memory_service(), prj, d.data_caller(prj, [Scope.MEMORY_ALL])


async def listed(m: MemoryService, caller: Caller, validity: Validity = CURRENT) -> set[str]:
    page = await m.list_memories(caller, Filter(), 100, "", validity=validity)
    return {r.content for r in page.records}


async def found(m: MemoryService, caller: Caller, validity: Validity = CURRENT) -> set[str]:
    hits = await m.search(
        caller,
        query="tea",
        vector=(),
        flt=Filter(),
        top_k=100,
        min_score=0.0,
        cross_project=False,
        validity=validity,
    )
    return {h.record.content for h in hits}


# --- create -------------------------------------------------------------------------------------


async def test_a_new_memory_holds_from_its_creation_and_names_its_writer() -> None:
    d, m, _, caller = await setup()
    created = (await m.create(caller, NewMemory("tea"))).record
    assert created.valid_time == created.create_time == d.clock.now()
    assert created.invalid_time is None and created.superseded_by == ""
    assert created.origin == Origin(writer_key_id=caller.principal.key_id)
    assert d.vectors.records[created.id] == created


async def test_a_server_item_keeps_its_id_and_origin_and_a_rerun_overwrites_it() -> None:
    d, m, _, caller = await setup()
    given = NewMemory(
        "tea",
        id=str(uuid.uuid4()),
        origin=Origin(operation_id="op-1", message_indexes=(2,), writer_key_id="someone"),
    )
    first = (await m.create(caller, given)).record
    assert first.id == given.id
    # the writer is always the calling key, whatever the item says
    assert first.origin == Origin(
        operation_id="op-1", message_indexes=(2,), writer_key_id=caller.principal.key_id
    )
    d.clock.advance(1)
    again = (await m.create(caller, given)).record
    assert again.id == first.id
    assert list(d.vectors.records) == [first.id]


async def test_a_memory_must_hold_for_some_time() -> None:
    d, m, _, caller = await setup()
    now = d.clock.now()
    refused = [
        (NewMemory("x", invalid_time=now), "memory.invalid_time"),
        (NewMemory("x", valid_time=now, invalid_time=now), "memory.invalid_time"),
        (
            NewMemory(
                "x", valid_time=now + timedelta(days=2), invalid_time=now + timedelta(days=1)
            ),
            "memory.invalid_time",
        ),
        (NewMemory("x", valid_time=now.replace(year=1600)), "memory.valid_time"),
        (NewMemory("x", invalid_time=now.replace(year=2300)), "memory.invalid_time"),
    ]
    for item, field in refused:
        with pytest.raises(InvalidArgument) as info:
            await m.create(caller, item)
        assert fields(info.value) == {field}
    [result] = await m.batch_create(caller, [refused[0][0]])
    assert isinstance(result, InvalidArgument)
    assert fields(result) == {"requests[0].memory.invalid_time"}
    assert d.vectors.records == {}


async def test_a_memory_that_ended_before_it_was_written_is_history() -> None:
    d, m, _, caller = await setup()
    now = d.clock.now()
    old = NewMemory("tea at noon", valid_time=now - timedelta(days=9))
    ended = NewMemory(
        "tea at nine", valid_time=now - timedelta(days=9), invalid_time=now - timedelta(days=2)
    )
    ahead = NewMemory("tea at five", valid_time=now + timedelta(days=1))
    for item in (old, ended, ahead):
        await m.create(caller, item)
    for read in (listed, found):
        assert await read(m, caller) == {"tea at noon"}
        assert await read(m, caller, EVERY_TIME) == {"tea at noon", "tea at nine", "tea at five"}
        then = Validity(as_of=now - timedelta(days=3))
        assert await read(m, caller, then) == {"tea at noon", "tea at nine"}


async def test_dedupe_compares_only_with_memories_that_hold_now() -> None:
    d, m, _, caller = await setup()
    now = d.clock.now()
    await m.create(caller, NewMemory("tea", valid_time=now - timedelta(days=2), invalid_time=now))
    created = await m.create(caller, NewMemory("tea", dedupe=True))
    assert not created.deduplicated
    again = await m.create(caller, NewMemory("tea", dedupe=True))
    assert again.deduplicated and again.record.id == created.record.id


# --- reads --------------------------------------------------------------------------------------


async def test_a_page_token_continues_its_own_validity_only() -> None:
    d, m, _, caller = await setup()
    now = d.clock.now()
    for i in range(3):
        await m.create(caller, NewMemory(f"tea {i}", invalid_time=now + timedelta(days=i + 1)))
    page = await m.list_memories(caller, Filter(), 1, "", validity=EVERY_TIME)
    assert page.next_page_token
    for other in (CURRENT, Validity(as_of=now)):
        with pytest.raises(InvalidArgument) as info:
            await m.list_memories(caller, Filter(), 1, page.next_page_token, validity=other)
        assert fields(info.value) == {"page_token"}
    rest = await m.list_memories(caller, Filter(), 10, page.next_page_token, validity=EVERY_TIME)
    assert len(rest.records) == 2


async def test_export_holds_every_memory_holding_or_not() -> None:
    d, m, _, caller = await setup()
    now = d.clock.now()
    await m.create(caller, NewMemory("now"))
    await m.create(caller, NewMemory("then", valid_time=now - timedelta(days=1), invalid_time=now))
    await m.create(caller, NewMemory("later", valid_time=now + timedelta(days=1)))
    exported = [r.content async for r in m.export(caller, Filter(), False)]
    assert sorted(exported) == ["later", "now", "then"]


# --- updates and superseding --------------------------------------------------------------------


async def test_a_client_invalidates_by_hand_and_may_not_supersede() -> None:
    d, m, _, caller = await setup()
    mem = (await m.create(caller, NewMemory("tea"))).record
    for path in ("superseded_by", "origin"):
        with pytest.raises(InvalidArgument) as info:
            await m.update(caller, mem.id, MemoryUpdate(paths=(path,), superseded_by="x"))
        assert fields(info.value) == {"update_mask.paths[0]"}
    d.clock.advance(3600)
    ended = await m.update(
        caller, mem.id, MemoryUpdate(paths=("invalid_time",), invalid_time=d.clock.now())
    )
    assert ended.invalid_time == d.clock.now()
    assert await listed(m, caller) == set()
    assert (await m.get(caller, mem.id)).invalid_time == d.clock.now()


async def test_an_update_may_not_leave_a_memory_holding_at_no_time() -> None:
    d, m, _, caller = await setup()
    now = d.clock.now()
    mem = (await m.create(caller, NewMemory("tea", invalid_time=now + timedelta(days=1)))).record
    cases = [
        (MemoryUpdate(paths=("invalid_time",), invalid_time=now), "memory.invalid_time"),
        (
            MemoryUpdate(paths=("valid_time",), valid_time=now + timedelta(days=1)),
            "memory.valid_time",
        ),
        (
            MemoryUpdate(
                paths=("valid_time", "invalid_time"),
                valid_time=now + timedelta(days=3),
                invalid_time=now + timedelta(days=2),
            ),
            "memory.invalid_time",
        ),
    ]
    for update, field in cases:
        with pytest.raises(InvalidArgument) as info:
            await m.update(caller, mem.id, update)
        assert fields(info.value) == {field}
    assert d.vectors.records[mem.id] == mem


async def test_a_job_supersedes_a_memory_which_stays_readable_by_id() -> None:
    d, m, prj, caller = await setup()
    old = (await m.create(caller, NewMemory("tea", valid_time=d.clock.now()))).record
    d.clock.advance(300)
    new = (await m.create(caller, NewMemory("green tea"))).record
    now = d.clock.now()
    [current] = await d.vectors.get(caller.principal.tenant(), [old.id], now, with_vectors=True)
    updater = Updater(d.vectors, d.embedder, NoMeter(), Defaults())
    superseded = await updater.apply(
        prj,
        current,
        MemoryUpdate(
            paths=("invalid_time", "superseded_by"), invalid_time=now, superseded_by=new.id
        ),
        now,
    )
    assert (superseded.invalid_time, superseded.superseded_by) == (now, new.id)
    assert superseded.content == "tea" and superseded.revision == 2
    [past] = superseded.revisions
    assert (past.valid_time, past.invalid_time) == (old.valid_time, None)
    assert await listed(m, caller) == {"green tea"}
    assert await listed(m, caller, EVERY_TIME) == {"tea", "green tea"}
    assert (await m.get(caller, old.id)).superseded_by == new.id

    # Made to hold again by hand, it is no longer superseded.
    restored = await m.update(caller, old.id, MemoryUpdate(paths=("invalid_time",)))
    assert (restored.invalid_time, restored.superseded_by) == (None, "")
    assert await listed(m, caller) == {"tea", "green tea"}


async def test_a_job_may_rewrite_the_origin() -> None:
    d, m, prj, caller = await setup()
    mem = (await m.create(caller, NewMemory("tea"))).record
    [current] = await d.vectors.get(
        caller.principal.tenant(), [mem.id], d.clock.now(), with_vectors=True
    )
    origin = Origin(operation_id="op-2", extractor="llm", writer_key_id="k")
    updated: MemoryRecord = await Updater(d.vectors, d.embedder, NoMeter(), Defaults()).apply(
        prj,
        current,
        MemoryUpdate(paths=("content", "origin"), content="black tea", origin=origin),
        d.clock.now(),
    )
    assert updated.origin == origin
    assert d.vectors.records[mem.id].origin == origin
