"""The ControlStore contract (`memoryd.domain.control`), run unchanged against
SQLite (a tmp file) and PostgreSQL (a fresh database; the test FAILS when
PostgreSQL is unreachable)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from helpers.servers import fast_hasher

from memoryd.domain.bootstrap import mint_owner_key
from memoryd.domain.clock import ManualClock
from memoryd.domain.control import (
    ApiKeyRecord,
    AuditEvent,
    AuditQuery,
    Environment,
    KeyQuery,
    Organization,
    Project,
    ProjectSettings,
    Quotas,
    RateLimits,
)
from memoryd.domain.errors import AlreadyExists, NotFound, Unavailable
from memoryd.domain.tenancy import EnvironmentKind, KeyKind
from memoryd.storage.sql import SqlControlStore

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


_ids = iter(range(10**6))


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):08d}"


async def _org(store: SqlControlStore, name: str = "acme") -> Organization:
    org = Organization(_id("org"), name, T0)
    await store.create_org(org)
    return org


def _project(org: Organization, name: str, when: datetime = T0, **kw: Any) -> Project:
    return Project(
        id=_id("prj"),
        org_id=org.id,
        name=name,
        display_name=kw.pop("display_name", ""),
        settings=kw.pop("settings", ProjectSettings()),
        rate_limits=kw.pop("rate_limits", RateLimits()),
        quotas=kw.pop("quotas", Quotas()),
        create_time=when,
        update_time=when,
    )


def _env(project: Project, name: str, kind: EnvironmentKind, when: datetime = T0) -> Environment:
    return Environment(_id("env"), project.org_id, project.id, name, kind, when)


def _key(
    org: Organization, env: Environment | None = None, when: datetime = T0, **kw: Any
) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=_id("key"),
        org_id=org.id,
        kind=KeyKind.DATA if env else KeyKind.ORG,
        name=kw.pop("name", "k"),
        scopes=kw.pop("scopes", ("memory:read",)),
        secret_hash="$argon2id$fake",
        create_time=when,
        created_by="test",
        project_id=env.project_id if env else "",
        environment_id=env.id if env else "",
        environment_kind=env.kind if env else None,
        **kw,
    )


async def _project_with_env(
    store: SqlControlStore, org: Organization, name: str
) -> tuple[Project, Environment]:
    project = _project(org, name)
    env = _env(project, "production", EnvironmentKind.LIVE)
    await store.create_project(project, [env])
    return project, env


# --- schema and organizations -------------------------------------------------------------


async def test_open_is_idempotent_and_keeps_data(store: SqlControlStore, database_url: str) -> None:
    org = await _org(store)
    again = SqlControlStore(database_url)
    await again.open()
    try:
        assert await again.get_org(org.id) == org
        assert await again.ping()
    finally:
        await again.close()


async def test_organizations(store: SqlControlStore) -> None:
    assert await store.count_orgs() == 0
    a = await _org(store, "a")
    await _org(store, "b")
    assert await store.count_orgs() == 2
    got = await store.get_org(a.id)
    assert got == a
    assert got is not None and got.create_time.tzinfo is not None
    assert await store.get_org("org_missing") is None


# --- projects -----------------------------------------------------------------------------


async def test_projects_round_trip_and_stay_in_their_org(store: SqlControlStore) -> None:
    org, other = await _org(store), await _org(store, "other")
    project = _project(
        org,
        "shop",
        display_name="Shop ✓",
        settings=ProjectSettings(True, 0.9, timedelta(hours=2)),
        rate_limits=RateLimits(1.5, 3, 2.5, 4),
        quotas=Quotas(10, 20, 30),
    )
    prod = _env(project, "production", EnvironmentKind.LIVE)
    await store.create_project(project, [prod])
    got = await store.get_project(org.id, project.id)
    assert got == replace(project, environments=(prod,))
    assert got is not None and got.create_time == T0  # microseconds, UTC
    assert await store.get_project(other.id, project.id) is None
    assert (await store.list_projects(other.id, 10, None)).items == []


async def test_a_duplicate_project_name_raises_already_exists_and_writes_nothing(
    store: SqlControlStore,
) -> None:
    org = await _org(store)
    await _project_with_env(store, org, "dup")
    clash = _project(org, "dup")
    with pytest.raises(AlreadyExists):
        await store.create_project(clash, [_env(clash, "production", EnvironmentKind.LIVE)])
    assert await store.get_project(org.id, clash.id) is None
    # the same name in another org is fine
    await _project_with_env(store, await _org(store, "b"), "dup")


async def test_a_project_and_its_environments_are_created_atomically(
    store: SqlControlStore,
) -> None:
    org = await _org(store)
    project = _project(org, "atomic")
    env = _env(project, "production", EnvironmentKind.LIVE)
    with pytest.raises(AlreadyExists):  # two environments of one name
        await store.create_project(project, [env, replace(env, id=_id("env"))])
    assert await store.get_project(org.id, project.id) is None
    assert (await store.list_projects(org.id, 10, None)).items == []


async def test_projects_page_oldest_first_through_equal_times(store: SqlControlStore) -> None:
    org = await _org(store)
    made = []
    for i in range(7):
        when = T0 + timedelta(seconds=i // 3)  # groups of equal create times
        project = _project(org, f"p{i}", when)
        await store.create_project(
            project, [_env(project, "production", EnvironmentKind.LIVE, when)]
        )
        made.append(project.id)
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_projects(org.id, 2, after)
        assert len(page.items) <= 2
        assert all(len(p.environments) == 1 for p in page.items)
        seen.extend(p.id for p in page.items)
        after = page.next_after
        if after is None:
            break
    assert seen == sorted(made, key=lambda pid: (made.index(pid) // 3, pid))
    assert len(set(seen)) == 7


async def test_update_project(store: SqlControlStore) -> None:
    org = await _org(store)
    project, env = await _project_with_env(store, org, "u")
    changed = replace(
        project,
        display_name="New",
        quotas=Quotas(max_content_bytes=5),
        update_time=T0 + timedelta(days=1),
    )
    await store.update_project(changed)
    got = await store.get_project(org.id, project.id)
    assert got == replace(changed, environments=(env,))
    # an update naming another org changes nothing
    await store.update_project(replace(changed, org_id="org_other", display_name="Hijack"))
    got = await store.get_project(org.id, project.id)
    assert got is not None and got.display_name == "New"


async def test_delete_project_takes_its_environments_and_keys(store: SqlControlStore) -> None:
    org = await _org(store)
    doomed, doomed_env = await _project_with_env(store, org, "doomed")
    kept, kept_env = await _project_with_env(store, org, "kept")
    doomed_key, kept_key = _key(org, doomed_env), _key(org, kept_env)
    org_key = _key(org)
    for k in (doomed_key, kept_key, org_key):
        await store.create_key(k)
    await store.delete_project("org_other", doomed.id)  # another org: nothing happens
    assert await store.get_project(org.id, doomed.id) is not None
    await store.delete_project(org.id, doomed.id)
    assert await store.get_project(org.id, doomed.id) is None
    assert await store.get_environment(org.id, doomed_env.id) is None
    assert await store.get_key(doomed_key.id) is None
    assert await store.get_key(kept_key.id) is not None
    assert await store.get_key(org_key.id) is not None
    assert await store.get_project(org.id, kept.id) is not None
    # the name is free again
    await _project_with_env(store, org, "doomed")


# --- environments -------------------------------------------------------------------------


async def test_environments(store: SqlControlStore) -> None:
    org, other = await _org(store), await _org(store, "other")
    project, prod = await _project_with_env(store, org, "app")
    staging = _env(project, "staging", EnvironmentKind.TEST, T0 + timedelta(seconds=1))
    dev = _env(project, "dev", EnvironmentKind.DEV, T0 + timedelta(seconds=2))
    await store.create_environment(staging)
    await store.create_environment(dev)
    with pytest.raises(AlreadyExists):
        await store.create_environment(_env(project, "staging", EnvironmentKind.DEV))
    assert await store.get_environment(org.id, staging.id) == staging
    assert await store.get_environment(other.id, staging.id) is None

    first = await store.list_environments(org.id, project.id, 2, None)
    assert [e.name for e in first.items] == ["production", "staging"]
    assert first.next_after is not None
    rest = await store.list_environments(org.id, project.id, 2, first.next_after)
    assert [e.name for e in rest.items] == ["dev"] and rest.next_after is None
    assert (await store.list_environments(other.id, project.id, 10, None)).items == []

    _, other_prod = await _project_with_env(store, org, "second")
    live = await store.list_environments_of_kind(org.id, EnvironmentKind.LIVE)
    assert {e.id for e in live} == {prod.id, other_prod.id}
    assert await store.list_environments_of_kind(other.id, EnvironmentKind.LIVE) == []

    key = _key(org, staging)
    await store.create_key(key)
    await store.delete_environment(other.id, staging.id)  # another org: nothing happens
    assert await store.get_environment(org.id, staging.id) is not None
    await store.delete_environment(org.id, staging.id)
    assert await store.get_environment(org.id, staging.id) is None
    assert await store.get_key(key.id) is None
    assert [
        e.name for e in (await store.list_environments(org.id, project.id, 10, None)).items
    ] == [
        "production",
        "dev",
    ]


# --- keys ---------------------------------------------------------------------------------


async def test_keys_round_trip_and_stay_in_their_org(store: SqlControlStore) -> None:
    org, other = await _org(store), await _org(store, "other")
    _, env = await _project_with_env(store, org, "app")
    key = _key(
        org,
        env,
        scopes=("memory:read", "memory:add"),
        expire_time=T0 + timedelta(days=1),
    )
    await store.create_key(key)
    got = await store.get_key(key.id)
    assert got is not None
    assert vars(got) == vars(key)
    assert await store.get_org_key(org.id, key.id) == got
    assert await store.get_org_key(other.id, key.id) is None
    assert await store.get_key("key_missing") is None
    with pytest.raises(AlreadyExists):
        await store.create_key(key)


async def test_update_and_touch_key(store: SqlControlStore) -> None:
    org = await _org(store)
    key = _key(org)
    await store.create_key(key)
    rotated = replace(
        key,
        secret_hash="$argon2id$new",
        previous_secret_hash=key.secret_hash,
        previous_secret_expire_time=T0 + timedelta(minutes=5),
        rotate_time=T0 + timedelta(seconds=1),
    )
    await store.update_key(rotated)
    assert vars(await store.get_key(key.id)) == vars(rotated)
    await store.update_key(replace(rotated, org_id="org_other", revoke_time=T0))  # wrong org
    got = await store.get_key(key.id)
    assert got is not None and got.revoke_time is None
    await store.touch_key(key.id, T0 + timedelta(hours=1))
    got = await store.get_key(key.id)
    assert got is not None and got.last_used_time == T0 + timedelta(hours=1)


async def test_list_keys_filters_and_pages_newest_first(store: SqlControlStore) -> None:
    org = await _org(store)
    await _org(store, "other")
    project, prod = await _project_with_env(store, org, "app")
    staging = _env(project, "staging", EnvironmentKind.TEST)
    await store.create_environment(staging)
    keys = [_key(org, prod, T0 + timedelta(seconds=i // 2), name=f"prod{i}") for i in range(5)] + [
        _key(org, staging, T0 + timedelta(seconds=9), name="staging"),
        _key(org, name="org"),
    ]
    revoked = _key(org, prod, T0 + timedelta(seconds=10), revoke_time=T0 + timedelta(seconds=11))
    for k in [*keys, revoked]:
        await store.create_key(k)

    async def all_ids(query: KeyQuery, size: int) -> list[str]:
        out: list[str] = []
        after = None
        while True:
            page = await store.list_keys(query, size, after)
            assert len(page.items) <= size
            out.extend(k.id for k in page.items)
            after = page.next_after
            if after is None:
                return out

    newest_first = sorted(keys, key=lambda k: (k.create_time, k.id), reverse=True)
    assert await all_ids(KeyQuery(org.id), 2) == [k.id for k in newest_first]
    assert await all_ids(KeyQuery(org.id), 100) == [k.id for k in newest_first]
    with_revoked = await all_ids(KeyQuery(org.id, show_revoked=True), 3)
    assert with_revoked[0] == revoked.id and len(with_revoked) == len(keys) + 1
    by_project = await all_ids(KeyQuery(org.id, project_id=project.id), 2)
    assert set(by_project) == {k.id for k in keys if k.project_id == project.id}
    assert await all_ids(KeyQuery(org.id, environment_id=staging.id), 2) == [keys[5].id]
    assert await all_ids(KeyQuery("org_other"), 2) == []


# --- audit --------------------------------------------------------------------------------


def _event(org: Organization, when: datetime, action: str, **kw: Any) -> AuditEvent:
    return AuditEvent(
        id=_id("aud"),
        time=when,
        org_id=org.id,
        actor_key_id=kw.pop("actor_key_id", "key_a"),
        action=action,
        target=kw.pop("target", "t"),
        outcome=kw.pop("outcome", "OK"),
        project_id=kw.pop("project_id", ""),
        environment_id=kw.pop("environment_id", ""),
        request_id=kw.pop("request_id", "r"),
        peer="127.0.0.1",
        details=kw.pop("details", {}),
    )


async def test_audit_filters_and_pages_newest_first(store: SqlControlStore) -> None:
    org, other = await _org(store), await _org(store, "other")
    events = [
        _event(
            org,
            T0 + timedelta(minutes=i // 2),
            f"thing.{'create' if i % 2 else 'delete'}",
            project_id="prj_a" if i < 4 else "prj_b",
            actor_key_id=f"key_{i % 3}",
            environment_id="env_x" if i == 5 else "",
        )
        for i in range(8)
    ]
    for e in [*events, _event(other, T0, "thing.create")]:
        await store.append_audit(e)

    async def ids(query: AuditQuery, size: int = 3) -> list[str]:
        out: list[str] = []
        after = None
        while True:
            page = await store.list_audit(query, size, after)
            out.extend(e.id for e in page.items)
            after = page.next_after
            if after is None:
                return out

    newest = sorted(events, key=lambda e: (e.time, e.id), reverse=True)
    assert await ids(AuditQuery(org.id)) == [e.id for e in newest]
    assert await ids(AuditQuery(org.id), 100) == [e.id for e in newest]
    page = await store.list_audit(AuditQuery(org.id), 100, None)
    assert page.items == newest  # every field round-trips

    def expect(pred: Any) -> list[str]:
        return [e.id for e in newest if pred(e)]

    assert await ids(AuditQuery(org.id, project_id="prj_a")) == expect(
        lambda e: e.project_id == "prj_a"
    )
    assert await ids(AuditQuery(org.id, environment_id="env_x")) == expect(
        lambda e: e.environment_id == "env_x"
    )
    assert await ids(AuditQuery(org.id, actor_key_id="key_1")) == expect(
        lambda e: e.actor_key_id == "key_1"
    )
    assert await ids(AuditQuery(org.id, action="thing.create")) == expect(
        lambda e: e.action == "thing.create"
    )
    start, end = T0 + timedelta(minutes=1), T0 + timedelta(minutes=3)
    assert await ids(AuditQuery(org.id, start_time=start, end_time=end)) == expect(
        lambda e: start <= e.time < end
    )
    assert await ids(
        AuditQuery(org.id, project_id="prj_b", action="thing.delete", start_time=start)
    ) == expect(
        lambda e: e.project_id == "prj_b" and e.action == "thing.delete" and e.time >= start
    )
    assert len(await ids(AuditQuery(other.id))) == 1


async def test_audit_keeps_events_with_oversized_client_values(store: SqlControlStore) -> None:
    org = await _org(store)
    event = _event(
        org, T0, "project.create", target="x" * 5000, request_id="r" * 128, project_id="p" * 300
    )
    await store.append_audit(event)
    (got,) = (await store.list_audit(AuditQuery(org.id), 10, None)).items
    assert got.id == event.id
    assert got.target.startswith("x" * 100) and len(got.target) <= 5000
    assert got.request_id.startswith("r" * 100)


async def test_values_with_nul_characters_match_nothing_and_do_not_fail(
    store: SqlControlStore,
) -> None:
    org = await _org(store)
    project, _ = await _project_with_env(store, org, "app")
    assert await store.get_key("key\x00") is None
    assert await store.get_org_key(org.id, "key\x00") is None
    assert await store.get_project(org.id, project.id + "\x00") is None
    assert await store.get_environment(org.id, "\x00") is None
    assert (await store.list_keys(KeyQuery(org.id, project_id="\x00"), 10, None)).items == []
    await store.append_audit(_event(org, T0, "project.create", target="bad\x00name"))
    (got,) = (await store.list_audit(AuditQuery(org.id), 10, None)).items
    assert got.target.startswith("bad") and "\x00" not in got.target


async def test_concurrent_writers_do_not_lose_rows(store: SqlControlStore) -> None:
    org = await _org(store)
    await asyncio.gather(*(store.append_audit(_event(org, T0, "x")) for _ in range(20)))
    assert len((await store.list_audit(AuditQuery(org.id), 100, None)).items) == 20


async def test_an_unreachable_database_is_unavailable() -> None:
    s = SqlControlStore("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(Unavailable) as info:
            await asyncio.wait_for(s.open(), 30)
        assert "unreachable" in info.value.message
    finally:
        await s.close()


# --- integrity errors (issue 8, item 16) ---------------------------------------------------


async def test_an_environment_of_a_deleted_project_is_not_found_not_a_taken_name(
    store: SqlControlStore,
) -> None:
    org = await _org(store)
    project, _ = await _project_with_env(store, org, "gone")
    await store.delete_project(org.id, project.id)
    with pytest.raises(NotFound) as info:
        await store.create_environment(_env(project, "staging", EnvironmentKind.TEST))
    assert info.value.reason == "NOT_FOUND"
    assert "project" in info.value.message
    assert (await store.list_environments(org.id, project.id, 10, None)).items == []


async def test_a_key_of_a_deleted_environment_is_not_found_and_not_written(
    store: SqlControlStore,
) -> None:
    org = await _org(store)
    _, env = await _project_with_env(store, org, "gone")
    await store.delete_environment(org.id, env.id)
    key = _key(org, env)
    with pytest.raises(NotFound) as info:
        await store.create_key(key)
    assert "environment" in info.value.message
    assert await store.get_key(key.id) is None
    # nor in an environment of another project or organization
    _, other_env = await _project_with_env(store, org, "other")
    for wrong in (replace(key, environment_id=other_env.id), replace(key, org_id="org_x")):
        with pytest.raises(NotFound):
            await store.create_key(wrong)
    assert await store.get_key(key.id) is None


async def test_a_taken_key_id_or_name_is_still_already_exists(store: SqlControlStore) -> None:
    org = await _org(store)
    _, env = await _project_with_env(store, org, "app")
    key = _key(org, env)
    await store.create_key(key)
    with pytest.raises(AlreadyExists) as info:
        await store.create_key(key)
    assert info.value.reason == "ALREADY_EXISTS"
    org_key = _key(org)
    await store.create_key(org_key)
    with pytest.raises(AlreadyExists):
        await store.create_key(org_key)
    project, _ = await _project_with_env(store, org, "dup-env")
    with pytest.raises(AlreadyExists):
        await store.create_environment(_env(project, "production", EnvironmentKind.LIVE))


async def test_keys_created_while_their_environment_is_deleted_leave_no_orphan(
    store: SqlControlStore,
) -> None:
    org = await _org(store)
    for round_ in range(5):
        project, env = await _project_with_env(store, org, f"race-{round_}")
        keys = [_key(org, env) for _ in range(8)]

        async def create(k: ApiKeyRecord) -> None:
            with contextlib.suppress(NotFound):
                await store.create_key(k)

        deleter = (
            store.delete_environment(org.id, env.id)
            if round_ % 2
            else store.delete_project(org.id, project.id)
        )
        await asyncio.gather(
            *(create(k) for k in keys[:4]), deleter, *(create(k) for k in keys[4:])
        )
        for k in keys:
            assert await store.get_key(k.id) is None, (round_, k.id)


async def test_a_version_1_schema_gains_audit_details_on_open(database_url: str) -> None:
    s = SqlControlStore(database_url)
    await s.open()
    org = await _org(s)
    async with s.engine.begin() as conn:  # as a version 1 server left it
        await conn.execute(sa.text("ALTER TABLE audit_events DROP COLUMN details"))
        for table in ("projects", "environments"):
            for column in ("delete_time", "purge_time"):
                await conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        await conn.execute(sa.text("UPDATE schema_version SET version = 1"))
        await conn.execute(
            sa.text(
                "INSERT INTO audit_events (id, time, org_id, project_id, environment_id, "
                "actor_key_id, action, target, request_id, peer, outcome) VALUES "
                "('aud_old', :t, :org, '', '', 'k', 'project.create', 'p', 'r', 'h', 'OK')"
            ),
            {"t": T0.replace(tzinfo=None), "org": org.id},
        )
    await s.close()
    s = SqlControlStore(database_url)
    await s.open()
    try:
        await s.append_audit(
            _event(org, T0 + timedelta(seconds=1), "memory.purge", details={"count": "3"})
        )
        listed = (await s.list_audit(AuditQuery(org.id), 10, None)).items
        assert [(e.action, e.details) for e in listed] == [
            ("memory.purge", {"count": "3"}),
            ("project.create", {}),
        ]
        async with s.engine.begin() as conn:
            assert (await conn.execute(sa.text("SELECT version FROM schema_version"))).scalar() == 3
    finally:
        await s.close()


async def test_an_owner_key_for_an_unknown_organization_is_org_not_found(
    store: SqlControlStore,
) -> None:
    with pytest.raises(NotFound) as missing:
        await mint_owner_key(store, fast_hasher(), ManualClock(T0), "org_doesnotexist00")
    assert missing.value.reason == "ORG_NOT_FOUND"


# --- soft delete (retention) ----------------------------------------------------------------


async def test_a_soft_deleted_environment_hides_until_undeleted_and_comes_due(
    store: SqlControlStore,
) -> None:
    org = await _org(store)
    project, live = await _project_with_env(store, org, "app")
    staging = _env(project, "staging", EnvironmentKind.TEST)
    await store.create_environment(staging)
    key = _key(org, staging)
    await store.create_key(key)
    purge = T0 + timedelta(days=30)

    assert await store.mark_deleted(org.id, project.id, staging.id, T0, purge)
    assert not await store.mark_deleted(org.id, project.id, staging.id, T0, purge)  # once
    assert await store.get_environment(org.id, staging.id) is None
    shown = await store.get_environment(org.id, staging.id, show_deleted=True)
    assert shown is not None and (shown.delete_time, shown.purge_time) == (T0, purge)
    got = await store.get_project(org.id, project.id)
    assert got is not None and [e.id for e in got.environments] == [live.id]
    listed = await store.list_environments(org.id, project.id, 10, None, show_deleted=True)
    assert {e.id for e in listed.items} == {live.id, staging.id}
    assert [e.id for e in (await store.list_environments(org.id, project.id, 10, None)).items] == [
        live.id
    ]
    assert await store.list_environments_of_kind(org.id, EnvironmentKind.TEST) == []
    stored_key = await store.get_key(key.id)
    assert stored_key is not None and stored_key.scope_deleted
    with pytest.raises(NotFound):  # no new key in a deleted environment
        await store.create_key(_key(org, staging))
    # another organization neither deletes nor restores it
    other = await _org(store, "other")
    assert not await store.undelete(other.id, project.id, staging.id)

    assert await store.due_purges(purge - timedelta(seconds=1), 10) == []
    assert await store.due_purges(purge, 10) == [(org.id, project.id, staging.id)]
    assert await store.undelete(org.id, project.id, staging.id)
    assert not await store.undelete(org.id, project.id, staging.id)  # not deleted
    assert await store.get_environment(org.id, staging.id) is not None
    stored_key = await store.get_key(key.id)
    assert stored_key is not None and not stored_key.scope_deleted
    assert await store.due_purges(purge, 10) == []


async def test_a_soft_deleted_project_hides_its_environments_and_is_purged_whole(
    store: SqlControlStore,
) -> None:
    org = await _org(store)
    project, live = await _project_with_env(store, org, "app")
    staging = _env(project, "staging", EnvironmentKind.TEST)
    await store.create_environment(staging)
    purge = T0 + timedelta(days=1)
    # the environment on its own first, then its project: purged with the project only
    assert await store.mark_deleted(org.id, project.id, staging.id, T0, purge)
    assert await store.mark_deleted(org.id, project.id, None, T0, purge)
    assert await store.get_project(org.id, project.id) is None
    assert await store.get_environment(org.id, live.id) is None
    assert (await store.list_projects(org.id, 10, None)).items == []
    (shown,) = (await store.list_projects(org.id, 10, None, show_deleted=True)).items
    assert shown.delete_time == T0 and len(shown.environments) == 2
    assert await store.due_purges(purge, 10) == [(org.id, project.id, None)]
    await store.delete_project(org.id, project.id)
    assert await store.get_project(org.id, project.id, show_deleted=True) is None
    assert await store.get_environment(org.id, staging.id, show_deleted=True) is None
    assert await store.due_purges(purge, 10) == []
