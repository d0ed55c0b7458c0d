"""The PromptStore contract (`memoryd.domain.prompts`) of `SqlControlStore`,
run unchanged against SQLite (a tmp file) and PostgreSQL (a fresh database;
the test FAILS when PostgreSQL is unreachable)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from memoryd.domain.control import (
    Environment,
    Organization,
    Project,
    ProjectSettings,
    Quotas,
    RateLimits,
)
from memoryd.domain.errors import AlreadyExists, NotFound
from memoryd.domain.prompts import Prompt
from memoryd.domain.tenancy import EnvironmentKind
from memoryd.storage.sql import SqlControlStore
from memoryd.storage.sql.prompts import prompt_versions

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


_ids = itertools.count()


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):08d}"


async def _org(store: SqlControlStore) -> Organization:
    org = Organization(_id("org"), "acme", T0)
    await store.create_org(org)
    return org


async def _project(
    store: SqlControlStore, org: Organization, envs: int = 1
) -> tuple[Project, list[Environment]]:
    project = Project(
        _id("prj"), org.id, _id("p"), "", ProjectSettings(), RateLimits(), Quotas(), T0, T0
    )
    made = [
        Environment(_id("env"), org.id, project.id, f"e{i}", EnvironmentKind.LIVE, T0)
        for i in range(envs)
    ]
    await store.create_project(project, made)
    return project, made


def _v1(env: Environment, name: str = "extraction", text: str = "find facts") -> Prompt:
    return Prompt(env.org_id, env.project_id, env.id, name, 1, text, T0)


async def _next(store: SqlControlStore, env: Environment, name: str, text: str) -> Prompt | None:
    return await store.add_prompt_version(
        env.org_id, env.project_id, env.id, name, text, T0 + timedelta(minutes=1)
    )


async def _rows(store: SqlControlStore, environment_id: str) -> int:
    """Rows of the environment in the table itself (not through the store's
    scoped reads): what a delete really removed."""
    async with store.engine.connect() as conn:
        q = sa.select(sa.func.count()).where(prompt_versions.c.environment_id == environment_id)
        return int((await conn.execute(q)).scalar_one())


async def test_versions_count_up_and_each_stays_readable(store: SqlControlStore) -> None:
    org = await _org(store)
    _, (env,) = await _project(store, org)
    first = _v1(env, text="v1 ✓\nwith lines")
    await store.create_prompt(first)
    second = await _next(store, env, "extraction", "v2")
    third = await _next(store, env, "extraction", "x" * 32_768)
    assert second is not None and third is not None
    assert (second.version, third.version) == (2, 3)
    assert second.create_time == T0 + timedelta(minutes=1)

    def get(version: int = 0) -> object:
        return store.get_prompt(org.id, env.project_id, env.id, "extraction", version)

    assert await get() == third
    assert await get(1) == first
    assert await get(2) == second
    assert await get(3) == third
    assert await get(4) is None
    assert await get(2**62) is None  # past any 32-bit column, still just absent
    got = await get(1)
    assert isinstance(got, Prompt) and got.create_time == T0 and got.create_time.tzinfo
    # another prompt of the environment has its own versions
    assert await store.get_prompt(org.id, env.project_id, env.id, "decision") is None
    assert await _next(store, env, "decision", "decide") is None  # none to follow
    assert await store.get_prompt(org.id, env.project_id, env.id, "decision") is None


async def test_a_second_version_1_is_already_exists_and_a_gone_environment_not_found(
    store: SqlControlStore,
) -> None:
    org = await _org(store)
    _, (env,) = await _project(store, org)
    await store.create_prompt(_v1(env))
    with pytest.raises(AlreadyExists):
        await store.create_prompt(_v1(env, text="again"))
    got = await store.get_prompt(org.id, env.project_id, env.id, "extraction")
    assert got is not None and got.text == "find facts"
    ghost = Environment("env_gone", org.id, env.project_id, "gone", EnvironmentKind.LIVE, T0)
    with pytest.raises(NotFound):
        await store.create_prompt(_v1(ghost))
    assert await _rows(store, "env_gone") == 0


async def test_the_list_holds_the_current_version_of_each_prompt(store: SqlControlStore) -> None:
    org = await _org(store)
    _, (env, other) = await _project(store, org, envs=2)
    assert await store.list_prompts(org.id, env.project_id, env.id) == []
    await store.create_prompt(_v1(env, "extraction", "e1"))
    await store.create_prompt(_v1(env, "decision", "d1"))
    await _next(store, env, "decision", "d2")
    await _next(store, env, "decision", "d3")
    await store.create_prompt(_v1(other, "decision", "other env"))
    listed = await store.list_prompts(org.id, env.project_id, env.id)
    assert [(p.name, p.version, p.text) for p in listed] == [
        ("decision", 3, "d3"),
        ("extraction", 1, "e1"),
    ]
    assert [p.text for p in await store.list_prompts(org.id, env.project_id, other.id)] == [
        "other env"
    ]


async def test_every_call_stays_in_its_org_project_and_environment(store: SqlControlStore) -> None:
    org, intruder = await _org(store), await _org(store)
    project, (env, sibling) = await _project(store, org, envs=2)
    other_project, _ = await _project(store, org)
    await store.create_prompt(_v1(env))
    wrong = [
        (intruder.id, project.id, env.id),  # another organization
        (org.id, other_project.id, env.id),  # another project of the organization
        (org.id, project.id, sibling.id),  # another environment of the project
    ]
    for scope in wrong:
        assert await store.get_prompt(*scope, "extraction") is None
        assert await store.get_prompt(*scope, "extraction", 1) is None
        assert await store.list_prompts(*scope) == []
        assert await store.add_prompt_version(*scope, "extraction", "pwned", T0) is None
        assert await store.delete_prompt(*scope, "extraction") is False
    got = await store.get_prompt(org.id, project.id, env.id, "extraction")
    assert got == _v1(env)  # untouched: still version 1, the same text
    assert await _rows(store, env.id) == 1
    assert await _rows(store, sibling.id) == 0


async def test_delete_takes_every_version_and_a_new_prompt_starts_at_1(
    store: SqlControlStore,
) -> None:
    org = await _org(store)
    _, (env,) = await _project(store, org)
    await store.create_prompt(_v1(env))
    await store.create_prompt(_v1(env, "decision", "kept"))
    for i in range(3):
        await _next(store, env, "extraction", f"v{i + 2}")
    assert await store.delete_prompt(org.id, env.project_id, env.id, "extraction") is True
    for version in (0, 1, 2, 4):
        assert await store.get_prompt(org.id, env.project_id, env.id, "extraction", version) is None
    assert await _next(store, env, "extraction", "after") is None
    assert await store.delete_prompt(org.id, env.project_id, env.id, "extraction") is False
    assert await _rows(store, env.id) == 1  # only the decision prompt is left
    await store.create_prompt(_v1(env, text="fresh"))
    got = await store.get_prompt(org.id, env.project_id, env.id, "extraction")
    assert got is not None and (got.version, got.text) == (1, "fresh")


async def test_deleting_an_environment_deletes_its_prompts(store: SqlControlStore) -> None:
    org = await _org(store)
    _, (env, kept) = await _project(store, org, envs=2)
    for target in (env, kept):
        await store.create_prompt(_v1(target))
        await _next(store, target, "extraction", "v2")
        await store.create_prompt(_v1(target, "decision"))
    await store.delete_environment(org.id, env.id)
    assert await _rows(store, env.id) == 0  # the rows are gone, not just hidden
    assert await _rows(store, kept.id) == 3


async def test_deleting_a_project_deletes_the_prompts_of_its_environments(
    store: SqlControlStore,
) -> None:
    org = await _org(store)
    project, envs = await _project(store, org, envs=2)
    _, (kept,) = await _project(store, org)
    for target in (*envs, kept):
        await store.create_prompt(_v1(target))
        await _next(store, target, "extraction", "v2")
    await store.delete_project(org.id, project.id)
    for env in envs:
        assert await _rows(store, env.id) == 0
    assert await _rows(store, kept.id) == 2


async def test_concurrent_updates_each_write_their_own_version(store: SqlControlStore) -> None:
    org = await _org(store)
    _, (env,) = await _project(store, org)
    await store.create_prompt(_v1(env))
    n = 12
    written = await asyncio.gather(*(_next(store, env, "extraction", f"t{i}") for i in range(n)))
    assert all(p is not None for p in written)
    by_text = {p.text: p.version for p in written if p is not None}
    assert sorted(by_text.values()) == list(range(2, n + 2))  # distinct, none skipped
    for text, version in by_text.items():
        got = await store.get_prompt(org.id, env.project_id, env.id, "extraction", version)
        assert got is not None and got.text == text
    current = await store.get_prompt(org.id, env.project_id, env.id, "extraction")
    assert current is not None and current.version == n + 1


async def test_an_existing_database_gains_the_table_at_open(database_url: str) -> None:
    first = SqlControlStore(database_url)
    await first.open()
    org = await _org(first)
    _, (env,) = await _project(first, org)
    async with first.engine.begin() as conn:  # a database from before prompts
        await conn.run_sync(prompt_versions.drop)
    await first.close()
    again = SqlControlStore(database_url)
    await again.open()
    try:
        await again.create_prompt(_v1(env))
        assert await again.get_prompt(org.id, env.project_id, env.id, "extraction") == _v1(env)
    finally:
        await again.close()
