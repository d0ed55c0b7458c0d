"""Legal holds on a real server: a hold on an environment or on one end user
blocks each delete path of the held data (DeleteMemory, PurgeMemories,
EraseEndUser, DeleteEnvironment, DeleteProject) with FAILED_PRECONDITION
LEGAL_HOLD naming the hold, keeps held memories from the TTL sweep (on an
injected clock) and counts them; each path works again after release; an
unheld end user is not blocked; holds are isolated per organization;
every change is audited."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, timestamp_pb2
from helpers.errors import reason_of, refused
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.domain.clock import ManualClock
from memoryd.v1 import admin_pb2, memory_pb2, tenancy_pb2


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def server(make_server: MakeServer, clock: ManualClock) -> RunningServer:
    return await make_server(clock=clock, job_poll_interval_s=0.05)


async def hold(server: RunningServer, env: admin_pb2.Environment, end_user: str = "") -> Any:
    owner = server.owner
    return await owner.admin.SetLegalHold(
        admin_pb2.SetLegalHoldRequest(
            legal_hold=admin_pb2.LegalHold(
                project_id=env.project_id,
                environment_id=env.id,
                end_user_id=end_user,
                reason="matter 42",
            )
        ),
        metadata=owner.md(),
    )


async def release(server: RunningServer, hold_id: str, client: Client | None = None) -> Any:
    c = client or server.owner
    return await c.admin.ReleaseLegalHold(
        admin_pb2.ReleaseLegalHoldRequest(id=hold_id), metadata=c.md()
    )


async def remember(c: Client, content: str, **fields: Any) -> memory_pb2.Memory:
    resp = await c.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content, **fields)),
        metadata=c.md(),
    )
    return resp.memory


def delete(c: Client, mid: str) -> Any:
    return c.memory.DeleteMemory(memory_pb2.DeleteMemoryRequest(id=mid), metadata=c.md())


def purge(c: Client) -> Any:
    return c.memory.PurgeMemories(memory_pb2.PurgeMemoriesRequest(all=True), metadata=c.md())


async def blocked(call: Any, hold_id: str) -> None:
    err = await refused(grpc.StatusCode.FAILED_PRECONDITION, call)
    assert reason_of(err) == "LEGAL_HOLD"
    assert hold_id in (err.details() or "")


async def test_an_end_user_hold_blocks_that_end_user_only(server: RunningServer) -> None:
    project = await server.project("app")
    env = project.environments[0]
    key = await server.data_key(project)
    alice, bob = server.client(key, "alice"), server.client(key, "bob")
    a, b = await remember(alice, "alice fact"), await remember(bob, "bob fact")
    h = await hold(server, env, "alice")
    assert h.id.startswith("hold_") and h.end_user_id == "alice" and h.created_by

    await blocked(delete(alice, a.id), h.id)
    await blocked(purge(alice), h.id)
    await blocked(
        alice.memory.EraseEndUser(memory_pb2.EraseEndUserRequest(), metadata=alice.md()), h.id
    )
    await delete(bob, b.id)  # bob is not held
    await purge(bob)

    await release(server, h.id)
    await delete(alice, a.id)
    await purge(alice)
    op = await alice.memory.EraseEndUser(memory_pb2.EraseEndUserRequest(), metadata=alice.md())
    done = await alice.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(
            name=op.name, timeout=duration_pb2.Duration(seconds=30)
        ),
        metadata=alice.md(),
    )
    assert done.done and done.WhichOneof("result") == "response"


async def test_an_environment_hold_blocks_deleting_it_and_its_project(
    server: RunningServer,
) -> None:
    project = await server.project("app")
    env = project.environments[0]
    owner = server.owner
    key = await server.data_key(project)
    shared = server.client(key)  # memories without an end user
    m = await remember(shared, "shared fact")
    h = await hold(server, env)
    await blocked(delete(shared, m.id), h.id)
    await blocked(
        delete(server.client(key, "carol"), (await remember(server.client(key, "carol"), "c")).id),
        h.id,
    )
    await blocked(
        owner.admin.DeleteEnvironment(
            admin_pb2.DeleteEnvironmentRequest(id=env.id), metadata=owner.md()
        ),
        h.id,
    )
    await blocked(
        owner.admin.DeleteProject(
            admin_pb2.DeleteProjectRequest(id=project.id), metadata=owner.md()
        ),
        h.id,
    )
    # another environment of the project is not held, and can go
    staging = await owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=owner.md(),
    )
    await owner.admin.DeleteEnvironment(
        admin_pb2.DeleteEnvironmentRequest(id=staging.id), metadata=owner.md()
    )
    await release(server, h.id)
    await delete(shared, m.id)
    await owner.admin.DeleteProject(
        admin_pb2.DeleteProjectRequest(id=project.id), metadata=owner.md()
    )


async def test_the_ttl_sweep_keeps_held_memories_and_counts_them(
    server: RunningServer, clock: ManualClock
) -> None:
    project = await server.project("app")
    env = project.environments[0]
    key = await server.data_key(project)
    alice, bob = server.client(key, "alice"), server.client(key, "bob")
    soon = timestamp_pb2.Timestamp()
    soon.FromDatetime(clock.now() + timedelta(minutes=5))
    await remember(alice, "alice expires", expire_time=soon)
    await remember(bob, "bob expires", expire_time=soon)
    h = await hold(server, env, "alice")
    clock.advance(600)
    memories = server.app.memories
    assert await memories.sweep_expired() == 1  # bob's
    assert memories.sweep_held == 1  # alice's, kept
    await release(server, h.id)
    assert await memories.sweep_expired() == 1
    assert memories.sweep_held == 0


async def test_holds_are_per_organization_listed_and_audited(server: RunningServer) -> None:
    project = await server.project("app")
    env = project.environments[0]
    h = await hold(server, env, "alice")
    other = await server.new_org()
    await refused(grpc.StatusCode.NOT_FOUND, release(server, h.id, other))
    listed = await other.admin.ListLegalHolds(
        admin_pb2.ListLegalHoldsRequest(), metadata=other.md()
    )
    assert list(listed.legal_holds) == []
    await refused(  # another organization's environment cannot be held by it
        grpc.StatusCode.NOT_FOUND,
        other.admin.SetLegalHold(
            admin_pb2.SetLegalHoldRequest(
                legal_hold=admin_pb2.LegalHold(
                    project_id=project.id, environment_id=env.id, reason="x"
                )
            ),
            metadata=other.md(),
        ),
    )
    owner = server.owner
    mine = await owner.admin.ListLegalHolds(admin_pb2.ListLegalHoldsRequest(), metadata=owner.md())
    assert [x.id for x in mine.legal_holds] == [h.id]
    assert mine.legal_holds[0].reason == "matter 42"
    await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        owner.admin.SetLegalHold(
            admin_pb2.SetLegalHoldRequest(
                legal_hold=admin_pb2.LegalHold(project_id=project.id, environment_id=env.id)
            ),
            metadata=owner.md(),
        ),
    )
    data = server.client(await server.data_key(project, ("memory:*",)))
    await refused(  # a data key cannot set holds
        grpc.StatusCode.PERMISSION_DENIED,
        data.admin.ListLegalHolds(admin_pb2.ListLegalHoldsRequest(), metadata=data.md()),
    )
    await release(server, h.id)
    await refused(grpc.StatusCode.NOT_FOUND, release(server, h.id))
    events = await owner.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(), metadata=owner.md()
    )
    actions = [(e.action, e.outcome) for e in events.events if e.action.startswith("legal_hold")]
    assert ("legal_hold.set", "OK") in actions
    assert ("legal_hold.release", "OK") in actions
    assert ("legal_hold.release", "NOT_FOUND") in actions
    assert ("legal_hold.set", "INVALID_ARGUMENT") in actions
