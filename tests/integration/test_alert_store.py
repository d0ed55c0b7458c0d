"""Alert states in the control store, on SQLite and PostgreSQL: raising an
alert marks it and appends its event in one transaction, once until it is
re-armed (also when two stores, two replicas, race); states are per
environment, resource and threshold; a deleted environment takes its
states with it."""

from __future__ import annotations

import asyncio

import pytest
from test_change_log import T0, _environment

from memoryd.domain.alerts import AlertKey, Resource
from memoryd.domain.changes import EventType, NewEvent
from memoryd.domain.tenancy import Tenant
from memoryd.storage.sql import SqlControlStore
from memoryd.storage.sql.alerts import alert_states


def _alert(tenant: Tenant, threshold: int = 80) -> NewEvent:
    return NewEvent(
        type=EventType.QUOTA_REACHED,
        tenant=tenant,
        memory_id="",
        time=T0,
        details={"resource": "memories", "threshold_percent": threshold, "used": 8, "limit": 10},
    )


async def test_an_alert_is_raised_once_until_rearmed(store: SqlControlStore) -> None:
    env = await _environment(store)
    key = AlertKey(env, Resource.MEMORIES, 80)
    raised = await store.raise_alert(key, _alert(env))
    assert raised is not None and raised.type is EventType.QUOTA_REACHED
    assert await store.raise_alert(key, _alert(env)) is None
    # another threshold, another resource: their own states
    assert await store.raise_alert(AlertKey(env, Resource.MEMORIES, 100), _alert(env, 100))
    assert await store.raise_alert(AlertKey(env, Resource.RATE_LIMIT, 0), _alert(env))
    await store.rearm_alert(key, T0)
    again = await store.raise_alert(key, _alert(env))
    assert again is not None and again.seq > raised.seq
    [first, *_] = await store.read_all(0, 10)
    assert first.memory is None and first.memory_id == ""
    assert first.details["threshold_percent"] == 80 and first.details["limit"] == 10
    assert len(await store.read_all(0, 10)) == 4


async def test_states_are_per_environment(store: SqlControlStore) -> None:
    a = await _environment(store)
    b = await _environment(store)
    assert await store.raise_alert(AlertKey(a, Resource.MEMORIES, 80), _alert(a))
    assert await store.raise_alert(AlertKey(b, Resource.MEMORIES, 80), _alert(b))
    # re-arming with another tenant's ids names nothing
    foreign = Tenant(b.org_id, b.project_id, a.environment_id)
    await store.rearm_alert(AlertKey(foreign, Resource.MEMORIES, 80), T0)
    assert await store.raise_alert(AlertKey(a, Resource.MEMORIES, 80), _alert(a)) is None
    assert [e.tenant.environment_id for e in await store.read(a, 0, 10)] == [a.environment_id]


async def test_two_stores_racing_raise_it_once(database_url: str, store: SqlControlStore) -> None:
    env = await _environment(store)
    other = SqlControlStore(database_url)
    await other.open()
    try:
        key = AlertKey(env, Resource.MEMORIES, 100)
        results = await asyncio.gather(
            *(s.raise_alert(key, _alert(env, 100)) for s in (store, other, store, other))
        )
    finally:
        await other.close()
    assert sum(r is not None for r in results) == 1
    assert len(await store.read_all(0, 10)) == 1


async def test_a_deleted_environment_takes_its_states(store: SqlControlStore) -> None:
    env = await _environment(store)
    await store.raise_alert(AlertKey(env, Resource.MEMORIES, 80), _alert(env))
    await store.delete_environment(env.org_id, env.environment_id)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(alert_states.select())).all()
    assert rows == []


@pytest.mark.parametrize("kind", [EventType.QUOTA_REACHED, EventType.RATE_LIMITED])
async def test_alert_types_fit_the_log(store: SqlControlStore, kind: EventType) -> None:
    env = await _environment(store)
    [e] = await store.append([NewEvent(kind, env, "", T0, details={"resource": "x"})])
    [back] = await store.read_all(e.seq - 1, 1)
    assert back.type is kind and back.details == {"resource": "x"} and back.memory is None
