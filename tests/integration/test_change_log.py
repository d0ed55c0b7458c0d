"""The change log in the control store, on SQLite and PostgreSQL: positions
dense and in commit order (a reader tailing concurrent appends of two
stores never skips one), every read confined to the caller's tenant and
end users, trims that keep a contiguous suffix and remember per
environment what they deleted, and the cascade of a deleted environment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from memoryd.domain.changes import EventType, NewEvent
from memoryd.domain.control import (
    Environment,
    Organization,
    Project,
    ProjectSettings,
    Quotas,
    RateLimits,
)
from memoryd.domain.errors import NotFound
from memoryd.domain.tenancy import EnvironmentKind, Tenant
from memoryd.storage.sql import SqlControlStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

_n = iter(range(10**6))


async def _environment(store: SqlControlStore, org_id: str = "") -> Tenant:
    """A new project with one environment (and a new org unless given)."""
    i = next(_n)
    if not org_id:
        org_id = f"org_{i:06d}"
        await store.create_org(Organization(org_id, f"org{i}", T0))
    project = Project(
        id=f"prj_{i:06d}",
        org_id=org_id,
        name=f"p{i}",
        display_name="",
        settings=ProjectSettings(),
        rate_limits=RateLimits(),
        quotas=Quotas(),
        create_time=T0,
        update_time=T0,
    )
    env = Environment(f"env_{i:06d}", org_id, project.id, "production", EnvironmentKind.LIVE, T0)
    await store.create_project(project, [env])
    return Tenant(org_id, project.id, env.id)


def _ev(
    tenant: Tenant,
    memory_id: str = "m1",
    when: datetime = T0,
    kind: EventType = EventType.CREATED,
    **kw: object,
) -> NewEvent:
    return NewEvent(
        type=kind,
        tenant=tenant,
        memory_id=memory_id,
        time=when,
        memory=kw.pop("memory", {"id": memory_id, "content": "c"}),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


async def test_appends_take_dense_positions_and_read_back_whole(store: SqlControlStore) -> None:
    a = await _environment(store)
    assert await store.last() == 0
    assert await store.oldest() is None
    first = await store.append(
        [
            _ev(a, "m1", memory={"id": "m1", "metadata": {"k": [1, "x", None]}}),
            _ev(a, "m2", kind=EventType.DELETED, operation_id="op1", request_id="r1"),
        ]
    )
    assert [e.seq for e in first] == [1, 2]
    second = await store.append([_ev(a, "m3", memory=None)])
    assert [e.seq for e in second] == [3]
    assert await store.append([]) == []
    assert await store.last() == 3
    assert await store.oldest() == 1

    read = await store.read(a, 0, 10)
    assert [(e.seq, e.memory_id, e.type) for e in read] == [
        (1, "m1", EventType.CREATED),
        (2, "m2", EventType.DELETED),
        (3, "m3", EventType.CREATED),
    ]
    assert read[0].memory == {"id": "m1", "metadata": {"k": [1, "x", None]}}
    assert read[0].tenant == a and read[0].time == T0
    assert (read[1].operation_id, read[1].request_id) == ("op1", "r1")
    assert read[2].memory is None
    assert [e.seq for e in await store.read(a, 1, 1)] == [2]
    assert [e.seq for e in await store.read_all(2, 10)] == [3]


async def test_a_tenant_reads_only_its_own_environment_and_end_users(
    store: SqlControlStore,
) -> None:
    a = await _environment(store)
    b = await _environment(store)
    sibling = await _environment(store, org_id=a.org_id)
    alice = Tenant(a.org_id, a.project_id, a.environment_id, "alice")
    bob = Tenant(a.org_id, a.project_id, a.environment_id, "bob")
    await store.append(
        [
            _ev(a, "none"),
            _ev(alice, "alice"),
            _ev(bob, "bob"),
            _ev(b, "b"),
            _ev(sibling, "sibling"),
        ]
    )

    async def ids(t: Tenant) -> list[str]:
        return [e.memory_id for e in await store.read(t, 0, 100)]

    assert await ids(a) == ["none"]  # no end user named: only memories without one
    assert await ids(alice) == ["alice"]
    assert await ids(bob) == ["bob"]
    assert await ids(a.across_end_users()) == ["none", "alice", "bob"]
    assert await ids(b) == ["b"]
    assert await ids(sibling) == ["sibling"]
    # a forged tenant naming a's environment under another project or org sees nothing
    assert await ids(Tenant(a.org_id, sibling.project_id, a.environment_id)) == []
    assert await ids(Tenant(b.org_id, a.project_id, a.environment_id)) == []
    assert await store.first_at(Tenant(b.org_id, a.project_id, a.environment_id), T0) is None
    assert len(await store.read_all(0, 100)) == 5


async def test_an_event_of_all_end_users_is_refused(store: SqlControlStore) -> None:
    a = await _environment(store)
    with pytest.raises(ValueError):
        await store.append([_ev(a.across_end_users())])
    assert await store.last() == 0


async def test_an_event_of_a_deleted_environment_is_not_found(store: SqlControlStore) -> None:
    a = await _environment(store)
    await store.delete_environment(a.org_id, a.environment_id)
    with pytest.raises(NotFound):
        await store.append([_ev(a)])
    assert await store.last() == 0  # the positions it took were given back


async def test_deleting_an_environment_deletes_its_events(store: SqlControlStore) -> None:
    a = await _environment(store)
    b = await _environment(store)
    await store.append([_ev(a, "a1"), _ev(b, "b1"), _ev(a, "a2")])
    await store.trim(T0 + timedelta(seconds=1))  # records a's trims too
    await store.append([_ev(a, "a3", T0 + timedelta(days=1))])
    await store.delete_environment(a.org_id, a.environment_id)
    assert [e.memory_id for e in await store.read_all(0, 10)] == []
    assert await store.trimmed(a) is None
    assert await store.trimmed(b) is not None
    assert await store.last() == 4


async def test_trim_keeps_a_contiguous_suffix_and_records_each_environments_trims(
    store: SqlControlStore,
) -> None:
    a = await _environment(store)
    b = await _environment(store)
    quiet = await _environment(store)
    # times from replicas' clocks need not follow positions: 2 is older than 1
    await store.append(
        [
            _ev(a, "1", T0 + timedelta(minutes=2)),
            _ev(b, "2", T0),
            _ev(a, "3", T0 + timedelta(minutes=10)),
            _ev(b, "4", T0 + timedelta(minutes=1)),
        ]
    )
    head = await store.log_head()
    assert await store.trim(T0) == 0
    # older than T0+1m30s: 2 and 4; 4 is the newest position among them, so 1..4 go
    deleted = await store.trim(T0 + timedelta(minutes=1, seconds=30))
    assert deleted == 4
    assert await store.oldest() is None
    assert await store.last() == 4  # positions are never given again
    after = await store.log_head()
    assert after.trims == head.trims + 1 and after.secret == head.secret

    ta, tb = await store.trimmed(a), await store.trimmed(b)
    assert ta is not None and (ta.seq, ta.time) == (3, T0 + timedelta(minutes=10))
    assert tb is not None and (tb.seq, tb.time) == (4, T0 + timedelta(minutes=1))
    assert await store.trimmed(quiet) is None
    assert await store.trimmed(Tenant(b.org_id, b.project_id, a.environment_id)) is None

    (e5,) = await store.append([_ev(a, "5", T0 + timedelta(minutes=20))])
    assert e5.seq == 5 and await store.oldest() == 5


async def test_trim_deletes_in_batches(
    store: SqlControlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import memoryd.storage.sql.changes as changes

    monkeypatch.setattr(changes, "TRIM_BATCH", 3)
    a = await _environment(store)
    await store.append([_ev(a, str(i), T0 + timedelta(seconds=i)) for i in range(10)])
    assert await store.trim(T0 + timedelta(seconds=7)) == 7
    assert await store.oldest() == 8
    t = await store.trimmed(a)
    assert t is not None and t.seq == 7


async def test_first_at_finds_the_oldest_kept_event_at_or_after_a_time(
    store: SqlControlStore,
) -> None:
    a = await _environment(store)
    alice = Tenant(a.org_id, a.project_id, a.environment_id, "alice")
    await store.append(
        [
            _ev(a, "1", T0),
            _ev(alice, "2", T0 + timedelta(seconds=5)),
            _ev(a, "3", T0 + timedelta(seconds=10)),
        ]
    )
    assert await store.first_at(a, T0) == 1
    assert await store.first_at(a, T0 + timedelta(seconds=1)) == 3
    assert await store.first_at(alice, T0) == 2
    assert await store.first_at(a, T0 + timedelta(seconds=11)) is None


async def test_a_tail_of_concurrent_appends_from_two_stores_never_skips_one(
    database_url: str, store: SqlControlStore
) -> None:
    """Two stores (replicas) append concurrently while a reader tails the
    log: the reader sees every position once, in order (a position becomes
    visible only after every lower one)."""
    other = SqlControlStore(database_url)
    await other.open()
    try:
        a = await _environment(store)
        writers, appends = 6, 15
        done = asyncio.Event()

        async def write(s: SqlControlStore, w: int) -> None:
            for i in range(appends):
                await s.append([_ev(a, f"{w}-{i}-{j}") for j in range(1 + i % 3)])
                await asyncio.sleep(0)

        seen: list[int] = []

        async def tail() -> None:
            after = 0
            while True:
                finished = done.is_set()
                events = await store.read(a, after, 7)
                seen.extend(e.seq for e in events)
                if events:
                    after = events[-1].seq
                elif finished:
                    return
                await asyncio.sleep(0)

        reader = asyncio.create_task(tail())
        await asyncio.gather(*(write(store if w % 2 else other, w) for w in range(writers)))
        done.set()
        await reader
        total = writers * sum(1 + i % 3 for i in range(appends))
        assert seen == list(range(1, total + 1))
        assert await other.last() == total
    finally:
        await other.close()
