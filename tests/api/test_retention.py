"""Retention of deleted projects and environments on a real server (SQL,
Qdrant Edge, the job runner), with an injected clock for the window.

DeleteEnvironment / DeleteProject answer NOT_FOUND at once to the admin
calls naming them and to data calls by their keys (NOT_FOUND, reason
SCOPE_DELETED), keep the data restorable with Undelete for the window (the
server's setting or the project's override), and the sweep then erases it
with an audited purge; `force` erases at once; a legal hold refuses the
delete and keeps a purge waiting; another organization sees nothing."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2
from helpers.errors import reason_of, refused, violations
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.domain.clock import ManualClock
from memoryd.domain.memory import Filter
from memoryd.domain.tenancy import Tenant
from memoryd.v1 import (
    admin_pb2,
    keys_pb2,
    knowledge_pb2,
    knowledge_pb2_grpc,
    memory_pb2,
    tenancy_pb2,
)

DAY = timedelta(days=1)
WAIT = duration_pb2.Duration(seconds=30)
SCOPES = (
    "memory:*",
    "knowledge:read",
    "knowledge:write",
    "ingest:read",
    "ingest:write",
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def server(make_server: MakeServer, clock: ManualClock) -> RunningServer:
    # the background sweep never runs in a test; the test runs it (purge_due)
    return await make_server(clock=clock, job_poll_interval_s=0.05, sweep_interval_s=3600)


async def sweep(server: RunningServer) -> int:
    assert server.app.projects is not None
    return await server.app.projects.purge_due()


async def env_in(server: RunningServer, project: admin_pb2.Project, name: str) -> Any:
    o = server.owner
    return await o.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(name=name, kind=tenancy_pb2.ENVIRONMENT_KIND_TEST),
        ),
        metadata=o.md(),
    )


async def filled(server: RunningServer, project: admin_pb2.Project, env_id: str) -> Client:
    """A client of the environment holding two memories and one document."""
    c = server.client(await server.data_key(project, SCOPES, environment_id=env_id))
    for text in ("the cat is called Tom", "the dog is called Rex"):
        await c.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=text)),
            metadata=c.md(),
        )
    op = await knowledge_pb2_grpc.KnowledgeServiceStub(c.channel).CreateDocument(
        knowledge_pb2.CreateDocumentRequest(text="The vault code is seven three nine."),
        metadata=c.md(),
    )
    done = await c.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=op.name, timeout=WAIT), metadata=c.md()
    )
    assert done.done and done.WhichOneof("result") == "response"
    return c


async def stored(server: RunningServer, project_id: str, env_id: str) -> tuple[int, int, int]:
    """(memories, knowledge chunks, documents) of the environment, read from
    the stores past the API."""
    tenant = Tenant(server.org_id, project_id, env_id, all_end_users=True)
    now = datetime.now(UTC) - timedelta(days=3650)  # nothing counts as expired
    assert server.app.chunks is not None
    return (
        await server.app.vectors.count(tenant, Filter(), now),
        await server.app.chunks.count(tenant, Filter(), now),
        len(await server.app.store.list_documents(tenant, None, 100, None)),
    )


async def search(c: Client, query: str) -> list[str]:
    resp = await c.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query=query), metadata=c.md()
    )
    return [r.memory.content for r in resp.results]


async def gone(call: Any, reason: str | None = None) -> None:
    err = await refused(grpc.StatusCode.NOT_FOUND, call)
    if reason is not None:
        assert reason_of(err) == reason


def delete_env(c: Client, env_id: str, force: bool = False) -> Any:
    return c.admin.DeleteEnvironment(
        admin_pb2.DeleteEnvironmentRequest(id=env_id, force=force), metadata=c.md()
    )


def delete_project(c: Client, project_id: str, force: bool = False) -> Any:
    return c.admin.DeleteProject(
        admin_pb2.DeleteProjectRequest(id=project_id, force=force), metadata=c.md()
    )


def undelete_env(c: Client, env_id: str) -> Any:
    return c.admin.UndeleteEnvironment(
        admin_pb2.UndeleteEnvironmentRequest(id=env_id), metadata=c.md()
    )


def undelete_project(c: Client, project_id: str) -> Any:
    return c.admin.UndeleteProject(admin_pb2.UndeleteProjectRequest(id=project_id), metadata=c.md())


async def envs(c: Client, project_id: str, show_deleted: bool = False) -> list[Any]:
    resp = await c.admin.ListEnvironments(
        admin_pb2.ListEnvironmentsRequest(project_id=project_id, show_deleted=show_deleted),
        metadata=c.md(),
    )
    return list(resp.environments)


async def projects(c: Client, show_deleted: bool = False) -> list[Any]:
    resp = await c.admin.ListProjects(
        admin_pb2.ListProjectsRequest(show_deleted=show_deleted), metadata=c.md()
    )
    return list(resp.projects)


async def actions(c: Client) -> list[tuple[str, str, str]]:
    resp = await c.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(page_size=200), metadata=c.md()
    )
    return [(e.action, e.target, e.outcome) for e in resp.events]


# --- delete and undelete --------------------------------------------------------------------


async def test_a_deleted_environment_is_gone_at_once_and_comes_back_whole(
    server: RunningServer, clock: ManualClock
) -> None:
    o = server.owner
    project = await server.project("app")
    staging = await env_in(server, project, "staging")
    live = server.client(await server.data_key(project))  # a live key of another environment
    test = await filled(server, project, staging.id)  # a test key of the deleted one
    assert len(await search(test, "cat")) >= 1
    counts = await stored(server, project.id, staging.id)
    assert counts[0] == 2 and counts[1] >= 1 and counts[2] == 1

    await delete_env(o, staging.id)

    # the data call by its key, at once (the key was cached by the calls above)
    await gone(search(test, "cat"), "SCOPE_DELETED")
    await gone(test.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=test.md()), "SCOPE_DELETED")
    await live.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=live.md())  # others work
    # the admin calls naming it
    await gone(delete_env(o, staging.id))
    await gone(
        o.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(
                name="late", project_id=project.id, environment_id=staging.id
            ),
            metadata=o.md(),
        )
    )
    assert [e.name for e in await envs(o, project.id)] == ["production"]
    got = await o.admin.GetProject(admin_pb2.GetProjectRequest(id=project.id), metadata=o.md())
    assert [e.name for e in got.environments] == ["production"]
    # listed with show_deleted, with its times (the server default: 30 days)
    (shown,) = [e for e in await envs(o, project.id, show_deleted=True) if e.id == staging.id]
    assert shown.delete_time.ToDatetime(tzinfo=UTC) == clock.now()
    assert shown.purge_time.ToDatetime(tzinfo=UTC) == clock.now() + 30 * DAY
    # the data is still there
    assert await stored(server, project.id, staging.id) == counts

    clock.advance((29 * DAY).total_seconds())
    assert await sweep(server) == 0  # inside the window
    back = await undelete_env(o, staging.id)
    assert back.id == staging.id and not back.HasField("delete_time")
    assert "the cat is called Tom" in await search(test, "cat")  # the same key works again
    assert await stored(server, project.id, staging.id) == counts
    assert sorted(e.name for e in await envs(o, project.id)) == ["production", "staging"]
    # undeleting what is not deleted
    await gone(undelete_env(o, staging.id))
    events = await actions(o)
    assert ("environment.undelete", staging.id, "OK") in events
    assert ("environment.delete", staging.id, "OK") in events


async def test_a_deleted_project_hides_its_environments_and_keys(server: RunningServer) -> None:
    o = server.owner
    project = await server.project("app")
    staging = await env_in(server, project, "staging")
    keys = [
        server.client(await server.data_key(project)),
        server.client(await server.data_key(project, environment_id=staging.id)),
    ]
    await delete_project(o, project.id)

    for c in keys:
        await gone(c.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=c.md()), "SCOPE_DELETED")
    await gone(o.admin.GetProject(admin_pb2.GetProjectRequest(id=project.id), metadata=o.md()))
    await gone(
        o.admin.ListEnvironments(
            admin_pb2.ListEnvironmentsRequest(project_id=project.id), metadata=o.md()
        )
    )
    await gone(env_in(server, project, "late"))
    await gone(delete_env(o, staging.id))  # its environments are gone with it
    await gone(undelete_env(o, staging.id))  # not itself deleted: undelete the project
    req = admin_pb2.UpdateProjectRequest(project=admin_pb2.Project(id=project.id, display_name="x"))
    req.update_mask.paths.append("display_name")
    await gone(o.admin.UpdateProject(req, metadata=o.md()))
    assert [p.id for p in await projects(o)] == []
    (listed,) = await projects(o, show_deleted=True)
    assert listed.id == project.id and listed.HasField("delete_time")
    assert {e.name for e in listed.environments} == {"production", "staging"}
    # the name stays taken until the purge (undelete can never collide)
    await refused(grpc.StatusCode.ALREADY_EXISTS, server.project("app"))

    restored = await undelete_project(o, project.id)
    assert not restored.HasField("delete_time") and len(restored.environments) == 2
    for c in keys:
        await c.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=c.md())


async def test_an_environment_of_a_deleted_project_cannot_be_undeleted_alone(
    server: RunningServer,
) -> None:
    o = server.owner
    project = await server.project("app")
    staging = await env_in(server, project, "staging")
    await delete_env(o, staging.id)
    await delete_project(o, project.id)
    err = await refused(grpc.StatusCode.FAILED_PRECONDITION, undelete_env(o, staging.id))
    assert reason_of(err) == "PROJECT_DELETED"
    await undelete_project(o, project.id)
    # the environment deleted on its own stays deleted with its project back
    assert [e.name for e in await envs(o, project.id)] == ["production"]
    await undelete_env(o, staging.id)
    assert sorted(e.name for e in await envs(o, project.id)) == ["production", "staging"]
    for bad in ("", "env_nope", "x" * 500):
        await gone(undelete_env(o, bad))
        await gone(undelete_project(o, bad))


# --- the window and the purge ---------------------------------------------------------------


async def test_the_sweep_purges_after_the_window_and_nothing_is_left(
    server: RunningServer, clock: ManualClock
) -> None:
    o = server.owner
    project = await server.project("app")
    staging = await env_in(server, project, "staging")
    c = await filled(server, project, staging.id)
    await delete_env(o, staging.id)
    clock.advance((30 * DAY).total_seconds() - 1)
    assert await sweep(server) == 0
    clock.advance(1)
    assert await sweep(server) == 1
    assert await stored(server, project.id, staging.id) == (0, 0, 0)
    await gone(undelete_env(o, staging.id))
    assert [e.id for e in await envs(o, project.id, show_deleted=True)] == [
        project.environments[0].id
    ]
    await refused(  # the key is erased with it
        grpc.StatusCode.UNAUTHENTICATED, c.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=c.md())
    )
    assert await sweep(server) == 0  # idempotent: nothing left to purge
    assert ("environment.purge", staging.id, "OK") in await actions(o)


async def test_a_project_override_sets_the_window_and_0_erases_at_once(
    server: RunningServer, clock: ManualClock
) -> None:
    o = server.owner
    project = await server.project("app")
    req = admin_pb2.UpdateProjectRequest(
        project=admin_pb2.Project(
            id=project.id, settings=admin_pb2.ProjectSettings(deletion_retention_days=2)
        )
    )
    req.update_mask.paths.append("settings.deletion_retention_days")
    updated = await o.admin.UpdateProject(req, metadata=o.md())
    assert updated.settings.deletion_retention_days == 2
    staging = await env_in(server, project, "staging")
    await delete_env(o, staging.id)
    (shown,) = [e for e in await envs(o, project.id, show_deleted=True) if e.id == staging.id]
    assert shown.purge_time.ToDatetime(tzinfo=UTC) == clock.now() + 2 * DAY
    clock.advance((2 * DAY).total_seconds())
    assert await sweep(server) == 1

    req.project.settings.deletion_retention_days = 0
    await o.admin.UpdateProject(req, metadata=o.md())
    dev = await env_in(server, project, "dev")
    c = await filled(server, project, dev.id)
    await delete_env(o, dev.id)  # erased at once, without a sweep
    assert await stored(server, project.id, dev.id) == (0, 0, 0)
    await gone(undelete_env(o, dev.id))
    await refused(
        grpc.StatusCode.UNAUTHENTICATED, c.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=c.md())
    )


@pytest.mark.parametrize("days", [-1, 3651])
async def test_a_window_out_of_bounds_is_a_field_violation(
    server: RunningServer, days: int
) -> None:
    o = server.owner
    project = await server.project("app")
    req = admin_pb2.UpdateProjectRequest(
        project=admin_pb2.Project(
            id=project.id, settings=admin_pb2.ProjectSettings(deletion_retention_days=days)
        )
    )
    req.update_mask.paths.append("settings.deletion_retention_days")
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT, o.admin.UpdateProject(req, metadata=o.md())
    )
    assert "project.settings.deletion_retention_days" in violations(err)


async def test_force_erases_at_once_with_an_audited_purge(server: RunningServer) -> None:
    o = server.owner
    project = await server.project("app")
    staging = await env_in(server, project, "staging")
    await filled(server, project, staging.id)
    await filled(server, project, project.environments[0].id)
    await delete_project(o, project.id, force=True)
    for env_id in (staging.id, project.environments[0].id):
        assert await stored(server, project.id, env_id) == (0, 0, 0)
    await gone(undelete_project(o, project.id))
    assert await projects(o, show_deleted=True) == []
    assert await server.project("app")  # the name is free again
    events = await actions(o)
    assert ("project.purge", project.id, "OK") in events
    assert ("project.delete", project.id, "OK") in events

    # the purge's receipt: counts per store of what the test made, verified, digested
    listed = await o.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(page_size=200), metadata=o.md()
    )
    receipt = dict(next(e for e in listed.events if e.action == "project.purge").details)
    assert receipt["scope"] == "project" and receipt["project_id"] == project.id
    assert receipt["memories"] == "4"  # two per environment
    assert receipt["documents"] == "2" and int(receipt["chunks"]) >= 2
    assert receipt["operations"] == "2"  # the two ingests
    assert receipt["data_keys"] == "2"  # crypto-shredded: one per environment
    assert receipt["keys"] == "2" and receipt["verified"] == "true"
    digest = receipt.pop("digest")
    canonical = json.dumps(receipt, sort_keys=True, separators=(",", ":"))
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()


# --- legal holds ------------------------------------------------------------------------------


async def test_a_hold_refuses_the_delete_and_keeps_the_purge_waiting(
    server: RunningServer, clock: ManualClock
) -> None:
    o = server.owner
    project = await server.project("app")
    staging = await env_in(server, project, "staging")
    await filled(server, project, staging.id)
    counts = await stored(server, project.id, staging.id)

    def set_hold() -> Any:
        return o.admin.SetLegalHold(
            admin_pb2.SetLegalHoldRequest(
                legal_hold=admin_pb2.LegalHold(
                    project_id=project.id, environment_id=staging.id, reason="matter 7"
                )
            ),
            metadata=o.md(),
        )

    held = await set_hold()
    err = await refused(grpc.StatusCode.FAILED_PRECONDITION, delete_env(o, staging.id))
    assert reason_of(err) == "LEGAL_HOLD"
    err = await refused(grpc.StatusCode.FAILED_PRECONDITION, delete_env(o, staging.id, True))
    assert reason_of(err) == "LEGAL_HOLD"
    await o.admin.ReleaseLegalHold(admin_pb2.ReleaseLegalHoldRequest(id=held.id), metadata=o.md())

    await delete_env(o, staging.id)
    held = await set_hold()  # a matter opens within the window
    clock.advance((31 * DAY).total_seconds())
    assert server.app.projects is not None
    before = server.app.projects.purges_held
    assert await sweep(server) == 0
    assert server.app.projects.purges_held == before + 1
    assert await stored(server, project.id, staging.id) == counts
    await undelete_env(o, staging.id)  # allowed under the hold
    await o.admin.ReleaseLegalHold(admin_pb2.ReleaseLegalHoldRequest(id=held.id), metadata=o.md())
    await delete_env(o, staging.id)
    clock.advance((31 * DAY).total_seconds())
    assert await sweep(server) == 1
    assert await stored(server, project.id, staging.id) == (0, 0, 0)


# --- isolation --------------------------------------------------------------------------------


async def test_another_organization_cannot_see_or_undelete(server: RunningServer) -> None:
    o = server.owner
    project = await server.project("app")
    staging = await env_in(server, project, "staging")
    await delete_env(o, staging.id)
    other = await server.new_org()
    theirs = await server.project("theirs", client=other)
    await gone(undelete_env(other, staging.id))
    await gone(
        other.admin.ListEnvironments(
            admin_pb2.ListEnvironmentsRequest(project_id=project.id, show_deleted=True),
            metadata=other.md(),
        )
    )
    await delete_project(o, project.id)
    await gone(undelete_project(other, project.id))
    assert [p.id for p in await projects(other, show_deleted=True)] == [theirs.id]
    # and the owner still can
    await undelete_project(o, project.id)
    await undelete_env(o, staging.id)
