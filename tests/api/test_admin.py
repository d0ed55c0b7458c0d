"""AdminService: projects and environments, their pagination and update
masks, and what deleting them does to their keys."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from helpers.errors import reason_of, refused, violations
from helpers.servers import Client, RunningServer

from memoryd.domain.clock import ManualClock
from memoryd.v1 import admin_pb2, keys_pb2, tenancy_pb2

LIVE, TEST, DEV = (
    tenancy_pb2.ENVIRONMENT_KIND_LIVE,
    tenancy_pb2.ENVIRONMENT_KIND_TEST,
    tenancy_pb2.ENVIRONMENT_KIND_DEV,
)


async def create_env(o: Client, project_id: str, name: str, kind: int) -> admin_pb2.Environment:
    return await o.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project_id, environment=admin_pb2.Environment(name=name, kind=kind)
        ),
        metadata=o.md(),
    )


async def list_envs(o: Client, project_id: str, **kw: Any) -> admin_pb2.ListEnvironmentsResponse:
    return await o.admin.ListEnvironments(
        admin_pb2.ListEnvironmentsRequest(project_id=project_id, **kw), metadata=o.md()
    )


async def get_project(o: Client, project_id: str) -> admin_pb2.Project:
    return await o.admin.GetProject(admin_pb2.GetProjectRequest(id=project_id), metadata=o.md())


async def update(o: Client, project: admin_pb2.Project, *paths: str) -> admin_pb2.Project:
    req = admin_pb2.UpdateProjectRequest(project=project)
    req.update_mask.paths.extend(paths)
    return await o.admin.UpdateProject(req, metadata=o.md())


async def whoami(server: RunningServer, key: str) -> keys_pb2.WhoAmIResponse:
    c = server.client(key)
    return await c.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=c.md())


# --- projects -----------------------------------------------------------------------------


async def test_a_new_project_has_a_live_production_environment(server: RunningServer) -> None:
    o = server.owner
    made = await o.admin.CreateProject(
        admin_pb2.CreateProjectRequest(
            project=admin_pb2.Project(
                name="support-bot",
                display_name="Support bot",
                settings=admin_pb2.ProjectSettings(require_end_user_id=True, dedupe_threshold=0.9),
                quotas=admin_pb2.Quotas(max_content_bytes=1000),
            )
        ),
        metadata=o.md(),
    )
    assert made.id.startswith("prj_")
    assert (made.name, made.display_name) == ("support-bot", "Support bot")
    assert [(e.name, e.kind) for e in made.environments] == [("production", LIVE)]
    assert made.environments[0].project_id == made.id
    assert made.settings.require_end_user_id
    assert made.settings.dedupe_threshold == pytest.approx(0.9)
    assert made.quotas.max_content_bytes == 1000
    assert made.HasField("create_time") and made.HasField("update_time")
    assert await get_project(o, made.id) == made


async def test_a_duplicate_project_name_already_exists(server: RunningServer) -> None:
    o = server.owner
    await server.project("twice")
    err = await refused(grpc.StatusCode.ALREADY_EXISTS, server.project("twice"))
    assert reason_of(err) == "ALREADY_EXISTS"
    assert "already" in (err.details() or "")
    listed = await o.admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=o.md())
    assert [p.name for p in listed.projects] == ["twice"]
    # another org may use the name
    other = await server.new_org()
    assert (await server.project("twice", client=other)).name == "twice"


async def test_projects_page_without_duplicates_or_gaps(
    make_server: Any, manual_clock: ManualClock
) -> None:
    # a manual clock that never moves: every project has the same create time,
    # so the page boundary must break the tie on the id
    server: RunningServer = await make_server(clock=manual_clock)
    o = server.owner
    names = [f"p{i}" for i in range(8)]
    for name in names:
        await server.project(name)
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = await o.admin.ListProjects(
            admin_pb2.ListProjectsRequest(page_size=3, page_token=token), metadata=o.md()
        )
        assert 0 < len(page.projects) <= 3
        assert all(len(p.environments) == 1 for p in page.projects)
        seen.extend(p.name for p in page.projects)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == names and len(seen) == len(set(seen))
    everything = await o.admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=o.md())
    assert [p.name for p in everything.projects] == seen  # the same order either way


async def test_projects_list_oldest_first(make_server: Any, manual_clock: ManualClock) -> None:
    server: RunningServer = await make_server(clock=manual_clock)
    for name in ("zeta", "alpha", "mid"):
        await server.project(name)
        manual_clock.advance(1)
    o = server.owner
    listed = await o.admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=o.md())
    assert [p.name for p in listed.projects] == ["zeta", "alpha", "mid"]


async def test_page_tokens_are_bound_to_their_query(server: RunningServer) -> None:
    o = server.owner
    a = await server.project("a")
    b = await server.project("b")
    await server.project("c")
    for name in ("e1", "e2"):
        await create_env(o, a.id, name, DEV)
        await create_env(o, b.id, name, DEV)
    projects_token = (
        await o.admin.ListProjects(admin_pb2.ListProjectsRequest(page_size=1), metadata=o.md())
    ).next_page_token
    envs_token = (await list_envs(o, a.id, page_size=1)).next_page_token
    assert projects_token and envs_token
    attempts = [
        o.admin.ListEnvironments(
            admin_pb2.ListEnvironmentsRequest(project_id=b.id, page_token=envs_token),
            metadata=o.md(),
        ),
        o.admin.ListEnvironments(
            admin_pb2.ListEnvironmentsRequest(project_id=a.id, page_token=projects_token),
            metadata=o.md(),
        ),
        o.admin.ListProjects(admin_pb2.ListProjectsRequest(page_token=envs_token), metadata=o.md()),
        o.keys.ListApiKeys(keys_pb2.ListApiKeysRequest(page_token=projects_token), metadata=o.md()),
        o.admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(page_token=projects_token), metadata=o.md()
        ),
    ]
    for call in attempts:
        err = await refused(grpc.StatusCode.INVALID_ARGUMENT, call)
        assert "page_token" in violations(err)
    # the right query continues where it stopped
    rest = await list_envs(o, a.id, page_token=envs_token)
    assert [e.name for e in rest.environments] == ["e1", "e2"]


async def test_another_org_cannot_continue_a_page_token(server: RunningServer) -> None:
    o = server.owner
    for name in ("a", "b"):
        await server.project(name)
    token = (
        await o.admin.ListProjects(admin_pb2.ListProjectsRequest(page_size=1), metadata=o.md())
    ).next_page_token
    other = await server.new_org()
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        other.admin.ListProjects(
            admin_pb2.ListProjectsRequest(page_token=token), metadata=other.md()
        ),
    )
    assert "page_token" in violations(err)


# --- update -------------------------------------------------------------------------------


async def test_update_changes_only_the_masked_fields(
    make_server: Any, manual_clock: ManualClock
) -> None:
    server: RunningServer = await make_server(clock=manual_clock)
    o = server.owner
    made = await o.admin.CreateProject(
        admin_pb2.CreateProjectRequest(
            project=admin_pb2.Project(
                name="tuned",
                display_name="Before",
                settings=admin_pb2.ProjectSettings(dedupe_threshold=0.8),
                rate_limits=admin_pb2.RateLimits(key_burst=5),
                quotas=admin_pb2.Quotas(max_content_bytes=100, max_metadata_bytes=50),
            )
        ),
        metadata=o.md(),
    )
    manual_clock.advance(10)
    changes = admin_pb2.Project(
        id=made.id,
        name="renamed-ignored",
        display_name="After",
        settings=admin_pb2.ProjectSettings(
            require_end_user_id=True,
            dedupe_threshold=0.5,
            default_ttl=duration_pb2.Duration(seconds=3600),
        ),
        rate_limits=admin_pb2.RateLimits(project_requests_per_second=7.5, project_burst=9),
        quotas=admin_pb2.Quotas(max_content_bytes=2048, max_metadata_bytes=999),
    )
    updated = await update(
        o,
        changes,
        "settings.require_end_user_id",
        "settings.default_ttl",
        "rate_limits",
        "quotas.max_content_bytes",
    )
    assert updated.name == "tuned"
    assert updated.display_name == "Before"
    assert updated.settings.require_end_user_id
    assert updated.settings.dedupe_threshold == pytest.approx(0.8)  # not in the mask
    assert updated.settings.default_ttl.seconds == 3600
    # a whole group is replaced, including fields left at zero
    assert (updated.rate_limits.project_requests_per_second, updated.rate_limits.project_burst) == (
        7.5,
        9,
    )
    assert updated.rate_limits.key_burst == 0
    assert (updated.quotas.max_content_bytes, updated.quotas.max_metadata_bytes) == (2048, 50)
    assert updated.update_time.ToSeconds() == made.update_time.ToSeconds() + 10
    assert updated.create_time == made.create_time
    assert await get_project(o, made.id) == updated

    renamed = await update(o, changes, "display_name")
    assert renamed.display_name == "After"


@pytest.mark.parametrize(
    ("paths", "field"),
    [
        ((), "update_mask"),
        (("name",), "update_mask.paths[0]"),
        (("display_name", "settings.colour"), "update_mask.paths[1]"),
        (("id",), "update_mask.paths[0]"),
        (("environments",), "update_mask.paths[0]"),
        (("quotas.max_content_bytes.x",), "update_mask.paths[0]"),
    ],
)
async def test_update_refuses_a_bad_mask(
    server: RunningServer, paths: tuple[str, ...], field: str
) -> None:
    o = server.owner
    made = await server.project("masked")
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        update(o, admin_pb2.Project(id=made.id, display_name="Changed"), *paths),
    )
    assert field in violations(err)
    assert (await get_project(o, made.id)).display_name == ""


@pytest.mark.parametrize(
    ("project", "path", "field"),
    [
        (
            admin_pb2.Project(quotas=admin_pb2.Quotas(max_content_bytes=-1)),
            "quotas",
            "project.quotas.max_content_bytes",
        ),
        (
            admin_pb2.Project(
                rate_limits=admin_pb2.RateLimits(key_requests_per_second=float("nan"))
            ),
            "rate_limits",
            "project.rate_limits.key_requests_per_second",
        ),
        (
            admin_pb2.Project(settings=admin_pb2.ProjectSettings(dedupe_threshold=1.5)),
            "settings",
            "project.settings.dedupe_threshold",
        ),
        (
            admin_pb2.Project(
                settings=admin_pb2.ProjectSettings(default_ttl=duration_pb2.Duration(seconds=-5))
            ),
            "settings.default_ttl",
            "project.settings.default_ttl",
        ),
        (admin_pb2.Project(display_name="x" * 201), "display_name", "project.display_name"),
    ],
)
async def test_update_refuses_bad_values(
    server: RunningServer, project: admin_pb2.Project, path: str, field: str
) -> None:
    o = server.owner
    made = await server.project("valued")
    project.id = made.id
    err = await refused(grpc.StatusCode.INVALID_ARGUMENT, update(o, project, path))
    assert field in violations(err)
    assert await get_project(o, made.id) == made


async def test_update_of_a_missing_project_is_not_found(server: RunningServer) -> None:
    await refused(
        grpc.StatusCode.NOT_FOUND,
        update(server.owner, admin_pb2.Project(id="prj_nope", display_name="x"), "display_name"),
    )


# --- environments -------------------------------------------------------------------------


async def test_environments_are_created_and_listed_oldest_first(
    make_server: Any, manual_clock: ManualClock
) -> None:
    server: RunningServer = await make_server(clock=manual_clock)
    o = server.owner
    project = await server.project()
    manual_clock.advance(1)
    staging = await create_env(o, project.id, "staging", TEST)
    manual_clock.advance(1)
    dev = await create_env(o, project.id, "dev", DEV)
    assert staging.id.startswith("env_") and staging.project_id == project.id
    assert (staging.name, staging.kind) == ("staging", TEST)
    listed = await list_envs(o, project.id)
    assert [(e.name, e.kind) for e in listed.environments] == [
        ("production", LIVE),
        ("staging", TEST),
        ("dev", DEV),
    ]
    assert [e.id for e in (await get_project(o, project.id)).environments] == [
        project.environments[0].id,
        staging.id,
        dev.id,
    ]
    first = await list_envs(o, project.id, page_size=2)
    rest = await list_envs(o, project.id, page_size=2, page_token=first.next_page_token)
    assert [e.name for e in [*first.environments, *rest.environments]] == [
        "production",
        "staging",
        "dev",
    ]
    assert rest.next_page_token == ""


async def test_a_duplicate_environment_name_already_exists(server: RunningServer) -> None:
    o = server.owner
    project = await server.project()
    await refused(grpc.StatusCode.ALREADY_EXISTS, create_env(o, project.id, "production", TEST))
    await create_env(o, project.id, "staging", TEST)
    await refused(grpc.StatusCode.ALREADY_EXISTS, create_env(o, project.id, "staging", DEV))
    assert len((await list_envs(o, project.id)).environments) == 2
    other = await server.project("other")
    await create_env(o, other.id, "staging", TEST)  # names are per project


async def test_environments_of_a_missing_project_are_not_found(server: RunningServer) -> None:
    o = server.owner
    await refused(grpc.StatusCode.NOT_FOUND, create_env(o, "prj_nope", "staging", TEST))
    await refused(grpc.StatusCode.NOT_FOUND, list_envs(o, "prj_nope"))
    await refused(grpc.StatusCode.NOT_FOUND, list_envs(o, ""))
    await refused(
        grpc.StatusCode.NOT_FOUND,
        o.admin.DeleteEnvironment(
            admin_pb2.DeleteEnvironmentRequest(id="env_nope"), metadata=o.md()
        ),
    )


# --- deletes ------------------------------------------------------------------------------


async def test_deleting_a_project_stops_its_keys(server: RunningServer) -> None:
    o = server.owner
    doomed = await server.project("doomed")
    kept = await server.project("kept")
    staging = await create_env(o, doomed.id, "staging", TEST)
    doomed_keys = [
        await server.data_key(doomed),
        await server.data_key(doomed, environment_id=staging.id),
    ]
    kept_key = await server.data_key(kept)
    for key in [*doomed_keys, kept_key]:
        await whoami(server, key)  # cached
    await o.admin.DeleteProject(
        admin_pb2.DeleteProjectRequest(id=doomed.id, force=True), metadata=o.md()
    )
    for key in doomed_keys:
        await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(server, key))
    await whoami(server, kept_key)
    await refused(grpc.StatusCode.NOT_FOUND, get_project(o, doomed.id))
    await refused(
        grpc.StatusCode.NOT_FOUND,
        o.admin.DeleteProject(admin_pb2.DeleteProjectRequest(id=doomed.id), metadata=o.md()),
    )
    listed = await o.keys.ListApiKeys(
        keys_pb2.ListApiKeysRequest(project_id=doomed.id, show_revoked=True), metadata=o.md()
    )
    assert list(listed.api_keys) == []
    projects = await o.admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=o.md())
    assert [p.name for p in projects.projects] == ["kept"]
    # the name is free again, and the new project starts empty
    again = await server.project("doomed")
    assert again.id != doomed.id and len(again.environments) == 1


async def test_deleting_an_environment_stops_its_keys(server: RunningServer) -> None:
    o = server.owner
    project = await server.project()
    staging = await create_env(o, project.id, "staging", TEST)
    staging_key = await server.data_key(project, environment_id=staging.id)
    live_key = await server.data_key(project)
    await whoami(server, staging_key)
    await o.admin.DeleteEnvironment(
        admin_pb2.DeleteEnvironmentRequest(id=staging.id, force=True), metadata=o.md()
    )
    await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(server, staging_key))
    assert (await whoami(server, live_key)).environment_id == project.environments[0].id
    assert [e.name for e in (await list_envs(o, project.id)).environments] == ["production"]
    # a key cannot be made for it any more
    await refused(
        grpc.StatusCode.NOT_FOUND,
        o.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(
                name="late", project_id=project.id, environment_id=staging.id
            ),
            metadata=o.md(),
        ),
    )
