"""ProjectManager's rules, on fakes of its ports: names, display names,
overrides held to the server's maximums, the update mask, and what a
project's deletion takes with it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers.fakes import Domain

from memoryd.domain.control import Project, ProjectSettings, Quotas, RateLimits
from memoryd.domain.errors import InvalidArgument, NotFound, PermissionDenied
from memoryd.domain.memories import NewMemory
from memoryd.domain.projects import Ceilings, ProjectManager
from memoryd.domain.tenancy import Caller, EnvironmentKind, Scope

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def draft(name: str = "app", **changes: Any) -> Project:
    """A project as a client sends it (ids and times are the server's)."""
    blank = Project(
        id="",
        org_id="",
        name=name,
        display_name="",
        settings=ProjectSettings(),
        rate_limits=RateLimits(),
        quotas=Quotas(),
        create_time=T0,
        update_time=T0,
    )
    return replace(blank, **changes)


def fields(err: InvalidArgument) -> set[str]:
    return {v.field for v in err.violations}


async def owner(ceilings: Ceilings | None = None) -> tuple[Domain, ProjectManager, Caller]:
    d = Domain()
    _, caller = await d.org_key()
    return d, d.project_manager(ceilings), caller


async def refused(draft_project: Project, ceilings: Ceilings | None = None) -> set[str]:
    _, projects, caller = await owner(ceilings)
    with pytest.raises(InvalidArgument) as info:
        await projects.create_project(caller, draft_project)
    return fields(info.value)


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "App", "1app", "-app", "my_app", "my app", "app.x", "a" * 64, "café"]
)
async def test_a_project_name_is_a_dns_label(name: str) -> None:
    assert await refused(draft(name)) == {"project.name"}


@pytest.mark.parametrize("name", ["a", "my-app-2", "a" * 63])
async def test_a_dns_label_names_a_project_with_a_live_production_environment(name: str) -> None:
    d, projects, caller = await owner()
    project = await projects.create_project(caller, draft(name))
    assert project.org_id == "org_1" and project.create_time == d.clock.now()
    assert [(e.name, e.kind) for e in project.environments] == [
        ("production", EnvironmentKind.LIVE)
    ]
    assert (d.sink.events[-1].action, d.sink.events[-1].target) == ("project.create", project.id)


@pytest.mark.parametrize("display_name", ["a\u202eb", "a\x00b", "two\nlines", "zero\u200bwidth"])
async def test_a_display_name_is_printable(display_name: str) -> None:
    assert await refused(draft(display_name=display_name)) == {"project.display_name"}


async def test_a_display_name_is_at_most_200_characters_and_may_be_any_script() -> None:
    assert await refused(draft(display_name="x" * 201)) == {"project.display_name"}
    _, projects, caller = await owner()
    made = await projects.create_project(caller, draft(display_name="Café Ünï 東京\u00a0👋"))
    assert made.display_name == "Café Ünï 東京\u00a0👋"


# --- overrides and settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"quotas": Quotas(max_content_bytes=1001)}, "project.quotas.max_content_bytes"),
        ({"quotas": Quotas(max_metadata_bytes=501)}, "project.quotas.max_metadata_bytes"),
        (
            {"quotas": Quotas(max_memories_per_environment=11)},
            "project.quotas.max_memories_per_environment",
        ),
        (
            {"rate_limits": RateLimits(project_requests_per_second=50.5)},
            "project.rate_limits.project_requests_per_second",
        ),
        ({"rate_limits": RateLimits(key_burst=101)}, "project.rate_limits.key_burst"),
    ],
)
async def test_overrides_above_the_server_maximums_are_refused(
    changes: dict[str, Any], field: str
) -> None:
    ceilings = Ceilings(
        requests_per_second=50.0,
        burst=100,
        max_memories_per_environment=10,
        max_content_bytes=1000,
        max_metadata_bytes=500,
    )
    assert await refused(draft(**changes), ceilings) == {field}


async def test_overrides_at_the_server_maximums_are_accepted() -> None:
    _, projects, caller = await owner(Ceilings(burst=100, max_content_bytes=1000))
    limits = {"quotas": Quotas(max_content_bytes=1000), "rate_limits": RateLimits(key_burst=100)}
    made = await projects.create_project(caller, draft(**limits))
    assert (made.quotas.max_content_bytes, made.rate_limits.key_burst) == (1000, 100)


@pytest.mark.parametrize("rps", [-1.0, float("nan"), float("inf")])
async def test_an_override_is_zero_or_a_positive_finite_number(rps: float) -> None:
    limits = RateLimits(key_requests_per_second=rps)
    assert await refused(draft(rate_limits=limits)) == {
        "project.rate_limits.key_requests_per_second"
    }


@pytest.mark.parametrize("threshold", [-0.1, 1.1, float("nan")])
async def test_the_dedupe_threshold_is_between_0_and_1(threshold: float) -> None:
    settings = ProjectSettings(dedupe_threshold=threshold)
    assert await refused(draft(settings=settings)) == {"project.settings.dedupe_threshold"}


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(days=3650, seconds=1)])
async def test_the_default_ttl_is_positive_and_at_most_3650_days(ttl: timedelta) -> None:
    settings = ProjectSettings(default_ttl=ttl)
    assert await refused(draft(settings=settings)) == {"project.settings.default_ttl"}


# --- update -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "field"),
    [
        ((), "update_mask"),
        (("name",), "update_mask.paths[0]"),
        (("settings.nope",), "update_mask.paths[0]"),
    ],
)
async def test_update_needs_a_mask_of_updatable_paths(paths: tuple[str, ...], field: str) -> None:
    _, projects, caller = await owner()
    made = await projects.create_project(caller, draft())
    with pytest.raises(InvalidArgument) as info:
        await projects.update_project(caller, replace(made, name="other"), paths)
    assert fields(info.value) == {field}


async def test_update_changes_only_the_masked_fields() -> None:
    d, projects, caller = await owner()
    made = await projects.create_project(caller, draft(display_name="old"))
    d.clock.advance(60)
    strict = ProjectSettings(require_end_user_id=True, dedupe_threshold=0.5)
    changes = replace(made, display_name="new", settings=strict)
    updated = await projects.update_project(caller, changes, ["settings.require_end_user_id"])
    assert updated.display_name == "old"
    assert updated.settings == ProjectSettings(require_end_user_id=True)
    assert updated.update_time == d.clock.now()


async def test_requiring_end_user_id_makes_memory_calls_name_an_end_user() -> None:
    d, projects, caller = await owner()
    made = await projects.create_project(caller, draft())
    memories = d.memory_service()
    data = d.data_caller(made)
    await memories.create(data, NewMemory("before"))
    strict = replace(made, settings=ProjectSettings(require_end_user_id=True))
    await projects.update_project(caller, strict, ["settings.require_end_user_id"])
    with pytest.raises(InvalidArgument) as info:
        await memories.create(data, NewMemory("after"))
    assert fields(info.value) == {"x-end-user-id"}
    await memories.create(d.data_caller(made, end_user="u1"), NewMemory("after"))


# --- who administers, and what a deletion takes -------------------------------------------------


async def test_changing_a_project_needs_admin_write() -> None:
    d = Domain()
    _, reader = await d.org_key((Scope.ADMIN_READ,))
    with pytest.raises(PermissionDenied) as info:
        await d.project_manager().create_project(reader, draft())
    assert info.value.reason == "SCOPE_MISSING"
    assert d.sink.events[-1].details == {"reason": "SCOPE_MISSING"}
    assert d.control.projects == {}


async def test_a_project_of_another_organization_is_not_found() -> None:
    d, projects, caller = await owner()
    theirs = await d.project("theirs", org_id="org_2")
    with pytest.raises(NotFound):
        await projects.get_project(caller, theirs.id)
    with pytest.raises(NotFound):
        await projects.delete_project(caller, theirs.id)
    assert theirs.id in d.control.projects


async def test_an_environment_needs_a_dns_label_name_and_a_kind() -> None:
    _, projects, caller = await owner()
    made = await projects.create_project(caller, draft())
    with pytest.raises(InvalidArgument) as info:
        await projects.create_environment(caller, made.id, "Staging", None)
    assert fields(info.value) == {"environment.name", "environment.kind"}


async def test_deleting_a_project_evicts_its_keys_and_deletes_its_memories() -> None:
    d, projects, caller = await owner()
    made = await projects.create_project(caller, draft())
    env = made.environments[0]
    keys = d.key_manager()
    live = await keys.create(
        caller, project_id=made.id, environment_id=env.id, name="a", scopes=(), expire_time=None
    )
    gone = await keys.create(
        caller, project_id=made.id, environment_id=env.id, name="b", scopes=(), expire_time=None
    )
    await keys.revoke(caller, gone.record.id)
    d.invalidated.key_ids.clear()
    await projects.delete_project(caller, made.id, force=True)
    assert set(d.invalidated.key_ids) == {live.record.id, gone.record.id}
    assert d.deleted_scopes.scopes == [("org_1", made.id, None)]
    assert made.id not in d.control.projects


async def test_deleting_an_environment_deletes_only_its_memories() -> None:
    d, projects, caller = await owner()
    made = await projects.create_project(caller, draft())
    staging = await projects.create_environment(caller, made.id, "staging", EnvironmentKind.TEST)
    await projects.delete_environment(caller, staging.id, force=True)
    assert d.deleted_scopes.scopes == [("org_1", made.id, staging.id)]
    assert [e.action for e in d.sink.events][-1] == "environment.delete"


async def test_update_checks_only_the_masked_fields() -> None:
    """Read, change, update (AIP-134): a value outside the mask, such as an
    override stored before the server's maximum was lowered, does not fail
    an update of another field; a masked field is still held to the rules."""
    d, projects, caller = await owner()
    made = await projects.create_project(caller, draft())
    stale = replace(made, quotas=Quotas(max_content_bytes=10**9))
    await d.control.update_project(stale)  # as stored by an older server
    read = replace(stale, display_name="renamed")
    updated = await projects.update_project(caller, read, ["display_name"])
    assert updated.display_name == "renamed"
    with pytest.raises(InvalidArgument) as info:
        await projects.update_project(caller, read, ["quotas.max_content_bytes"])
    assert fields(info.value) == {"project.quotas.max_content_bytes"}
    with pytest.raises(InvalidArgument) as info:
        await projects.update_project(caller, read, ["quotas"])
    assert fields(info.value) == {"project.quotas.max_content_bytes"}


# --- retention ------------------------------------------------------------------------------


async def test_a_delete_waits_out_the_window_and_the_sweep_purges_it_once() -> None:
    d, projects, caller = await owner()
    made = await projects.create_project(caller, draft())
    staging = await projects.create_environment(caller, made.id, "staging", EnvironmentKind.TEST)
    await projects.delete_environment(caller, staging.id)
    assert d.deleted_scopes.scopes == []  # nothing erased yet
    d.clock.advance(timedelta(days=30).total_seconds() - 1)
    assert await projects.purge_due() == 0
    d.clock.advance(1)
    assert await projects.purge_due() == 1
    assert d.deleted_scopes.scopes == [("org_1", made.id, staging.id)]
    assert staging.id not in d.control.environments
    assert await projects.purge_due() == 0


async def test_a_forced_purge_cut_short_is_finished_by_the_next_sweep() -> None:
    d, projects, caller = await owner()
    made = await projects.create_project(caller, draft())
    calls = 0

    async def failing_once(org_id: str, project_id: str, environment_id: str | None) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("killed")

    projects._delete_memories = failing_once
    with pytest.raises(RuntimeError):
        await projects.delete_project(caller, made.id, force=True)
    assert made.id in d.control.projects  # the rows go last
    assert d.control.projects[made.id].delete_time is not None
    assert await projects.purge_due() == 1  # due at once, without waiting the window
    assert made.id not in d.control.projects and calls == 2
