"""The HoldStore contract (`memoryd.domain.holds`) and the erasure tables
(`memoryd.storage.sql.erasure`) of `SqlControlStore`, run unchanged against
SQLite (a tmp file) and PostgreSQL (a fresh database; the test FAILS when
PostgreSQL is unreachable)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from memoryd.domain.control import (
    Environment,
    Organization,
    Project,
    ProjectSettings,
    Quotas,
    RateLimits,
)
from memoryd.domain.holds import HoldGuard, LegalHold
from memoryd.domain.operations import Operation, OpState, StoredMessage, new_operation_id
from memoryd.domain.tenancy import EnvironmentKind, Tenant
from memoryd.storage.sql import SqlControlStore
from memoryd.storage.sql.webhooks import webhook_deliveries

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
_n = itertools.count()


async def _environment(store: SqlControlStore, org_id: str = "") -> Tenant:
    i = next(_n)
    if not org_id:
        org_id = f"org_{i:06d}"
        await store.create_org(Organization(org_id, f"org{i}", T0))
    project = Project(
        f"prj_{i:06d}", org_id, f"p{i}", "", ProjectSettings(), RateLimits(), Quotas(), T0, T0
    )
    env = Environment(f"env_{i:06d}", org_id, project.id, "production", EnvironmentKind.LIVE, T0)
    await store.create_project(project, [env])
    return Tenant(org_id, project.id, env.id)


def _hold(t: Tenant, end_user: str = "", hold_id: str = "") -> LegalHold:
    return LegalHold(
        hold_id or f"hold_{next(_n):06d}",
        t.org_id,
        t.project_id,
        t.environment_id,
        end_user,
        "matter",
        "key_1",
        T0,
    )


async def test_holds_are_found_by_scope_and_confined_to_their_org(
    store: SqlControlStore,
) -> None:
    a = await _environment(store)
    b = await _environment(store)
    h = _hold(a, "alice")
    await store.create_hold(h)
    assert await store.first_hold(a.org_id, a.project_id, a.environment_id, "alice") == h
    assert await store.first_hold(a.org_id, a.project_id, a.environment_id, "bob") is None
    assert await store.first_hold(a.org_id, a.project_id, a.environment_id, "") is None
    assert await store.first_hold(a.org_id, a.project_id, a.environment_id, None) == h
    assert await store.first_hold(a.org_id, a.project_id, None, None) == h
    assert await store.first_hold(b.org_id, b.project_id, b.environment_id, None) is None
    assert await store.list_holds(b.org_id, "", "", 10, None) == []
    assert await store.delete_hold(b.org_id, h.id) is None  # another org's: not there
    env_hold = _hold(a)
    await store.create_hold(env_hold)
    # an environment hold covers every end user and the shared memories
    assert await store.first_hold(a.org_id, a.project_id, a.environment_id, "bob") == env_hold
    assert await store.first_hold(a.org_id, a.project_id, a.environment_id, "") == env_hold
    assert [x.id for x in await store.list_holds(a.org_id, a.project_id, "", 10, None)] == sorted(
        [h.id, env_hold.id]
    )
    first = (await store.list_holds(a.org_id, "", "", 1, None))[0]
    rest = await store.list_holds(a.org_id, "", "", 10, first.id)
    assert len(rest) == 1 and rest[0].id != first.id
    held = await HoldGuard(store).held()
    assert Tenant(a.org_id, a.project_id, a.environment_id, "alice") in held
    assert await store.delete_hold(a.org_id, h.id) == h
    assert await store.delete_hold(a.org_id, h.id) is None


async def test_deleting_the_environment_deletes_its_holds(store: SqlControlStore) -> None:
    a = await _environment(store)
    await store.create_hold(_hold(a))
    await store.delete_environment(a.org_id, a.environment_id)
    assert await store.list_holds(a.org_id, "", "", 10, None) == []


def _op(tenant: Tenant, kind: str = "add_messages") -> Operation:
    return Operation(
        id=new_operation_id(),
        kind=kind,
        tenant=tenant,
        key_id="key_1",
        scopes=frozenset({"memory:add"}),
        state=OpState.PENDING,
        payload='{"secret": "x"}',
        create_time=T0,
        update_time=T0,
    )


async def test_erasing_operations_reaches_one_end_user_and_keeps_erasures(
    store: SqlControlStore,
) -> None:
    env = await _environment(store)
    alice, bob = replace(env, end_user_id="alice"), replace(env, end_user_id="bob")
    msgs = [StoredMessage(i, "user", f"m{i}", "", T0) for i in range(3)]
    await store.create_operation(_op(alice), msgs)
    await store.create_operation(_op(alice), msgs[:1])
    erasure = await store.create_operation(_op(alice, "erase_end_user"), [])
    kept = await store.create_operation(_op(bob), msgs)
    assert await store.operations_count(alice) == {"operations": 2, "conversation_messages": 4}
    assert await store.erase_operations(alice) == {"operations": 2, "conversation_messages": 4}
    assert await store.erase_operations(alice) == {"operations": 0, "conversation_messages": 0}
    assert await store.get_operation(alice, erasure.id) is not None
    assert len(await store.messages(kept.id)) == 3
    assert await store.operations_count(bob) == {"operations": 1, "conversation_messages": 3}
    assert await store.idempotency_count(alice) == 0
    assert await store.change_events_count(alice) == 0
    assert await store.deliveries_count(alice) == 0


async def test_an_old_database_gains_the_delivery_subject_column(
    database_url: str, tmp_path: Path
) -> None:
    first = SqlControlStore(database_url)
    await first.open()
    async with first.engine.begin() as conn:
        await conn.execute(
            sa.text("ALTER TABLE webhook_deliveries DROP COLUMN subject_end_user_id")
        )
    await first.close()
    again = SqlControlStore(database_url)
    await again.open()  # as a server of this version opens a database of the last one
    try:
        async with again.engine.connect() as conn:
            cols = await conn.run_sync(
                lambda c: {x["name"] for x in sa.inspect(c).get_columns(webhook_deliveries.name)}
            )
        assert "subject_end_user_id" in cols
    finally:
        await again.close()
