"""End users are isolated by default (S12), cross-project search honours every
project's `require_end_user_id` (S9).

A call without `x-end-user-id` reaches only the memories that have no end
user, unless its key holds `memory:all_end_users` (part of `memory:*`); such
a call is audited, one event per call. The isolation matrix itself, every
method from every kind of caller, is in test_isolation_memories.py.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc import aio
from helpers.errors import refused
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.v1 import admin_pb2, keys_pb2, memory_pb2

NO_LIMITS = {
    "key_requests_per_second": 1e6,
    "key_burst": 1_000_000,
    "project_requests_per_second": 1e6,
    "project_burst": 1_000_000,
}
ACTION = "memory.all_end_users"
_rid = itertools.count()


@pytest.fixture
async def srv(make_server: MakeServer) -> RunningServer:
    return await make_server(**NO_LIMITS)


@pytest.fixture
async def project(srv: RunningServer) -> admin_pb2.Project:
    return await srv.project("app")


async def create(client: Client, content: str) -> memory_pb2.Memory:
    resp = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content)),
        metadata=client.md(),
    )
    return resp.memory


async def list_ids(client: Client) -> set[str]:
    page = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=1000), metadata=client.md()
    )
    return {m.id for m in page.memories}


async def search_ids(client: Client, query: str = "note", **extra: str) -> set[str]:
    resp = await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query=query, top_k=100, min_score=-1),
        metadata=client.md(**extra),
    )
    return {r.memory.id for r in resp.results}


async def audit_events(srv: RunningServer, action: str = ACTION) -> list[admin_pb2.AuditEvent]:
    out: list[admin_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await srv.owner.admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(action=action, page_token=token),
            metadata=srv.owner.md(),
        )
        out.extend(page.events)
        token = page.next_page_token
        if not token:
            return out


async def require_end_user(srv: RunningServer, project: admin_pb2.Project) -> None:
    req = admin_pb2.UpdateProjectRequest(
        project=admin_pb2.Project(
            id=project.id, settings=admin_pb2.ProjectSettings(require_end_user_id=True)
        )
    )
    req.update_mask.paths.append("settings.require_end_user_id")
    await srv.owner.admin.UpdateProject(req, metadata=srv.owner.md())


# --- secure by default ------------------------------------------------------------------------


async def test_a_default_runtime_key_without_the_header_reaches_no_end_users_memory(
    srv: RunningServer, project: admin_pb2.Project
) -> None:
    # The key CreateApiKey makes when no scope is named: memory:read + memory:add.
    resp = await srv.owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            project_id=project.id, environment_id=project.environments[0].id, name="runtime"
        ),
        metadata=srv.owner.md(),
    )
    assert sorted(resp.api_key.scopes) == ["memory:add", "memory:read"]
    runtime = srv.client(resp.secret)
    carol = runtime.with_key(resp.secret, "carol")
    hers = await create(carol, "carol's private note")
    shared = await create(runtime, "a project note")
    assert shared.end_user_id == ""  # a write without the header is project-level

    def get(mid: str) -> Awaitable[Any]:
        return runtime.memory.GetMemory(memory_pb2.GetMemoryRequest(id=mid), metadata=runtime.md())

    # By id: NOT_FOUND, exactly as for an id that does not exist.
    err = await refused(grpc.StatusCode.NOT_FOUND, get(hers.id))
    missing = str(uuid.uuid4())
    none = await refused(grpc.StatusCode.NOT_FOUND, get(missing))
    assert err.details().replace(hers.id, "ID") == none.details().replace(missing, "ID")
    assert await list_ids(runtime) == {shared.id}
    assert await search_ids(runtime) == {shared.id}
    stream = runtime.memory.ExportMemories(
        memory_pb2.ExportMemoriesRequest(), metadata=runtime.md()
    )
    assert [m.id async for m in stream] == [shared.id]
    # With the header, that end user's only, as before.
    assert await list_ids(carol) == {hers.id}
    assert await search_ids(carol) == {hers.id}
    # Nothing was audited as a read across end users.
    assert await audit_events(srv) == []


async def test_memory_all_end_users_is_a_data_scope_that_memory_star_includes(
    srv: RunningServer, project: admin_pb2.Project
) -> None:
    env = project.environments[0].id
    owner = srv.owner

    async def make(scopes: list[str], by: Client = owner) -> keys_pb2.CreateApiKeyResponse:
        return await by.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(
                project_id=project.id, environment_id=env, name="k", scopes=scopes
            ),
            metadata=by.md(),
        )

    back_office = await make(["memory:read", "memory:all_end_users"])
    assert "memory:all_end_users" in back_office.api_key.scopes
    runtime = await make(["memory:read", "memory:add"])
    everything = await make(["memory:*"])
    writer = srv.client(runtime.secret, "carol")
    hers = await create(writer, "carol's note")
    for secret, sees in ((back_office.secret, True), (everything.secret, True)):
        assert (hers.id in await list_ids(srv.client(secret))) is sees
    assert hers.id not in await list_ids(srv.client(runtime.secret))

    # Granting it needs holding it (or memory:* / *), like every scope.
    org = await owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="key admin", scopes=["keys:write", "memory:read"]),
        metadata=owner.md(),
    )
    err = await refused(
        grpc.StatusCode.PERMISSION_DENIED,
        make(["memory:all_end_users"], by=srv.client(org.secret)),
    )
    assert "memory:all_end_users" in err.details()


async def test_a_project_that_requires_the_header_refuses_even_the_all_end_users_scope(
    srv: RunningServer, project: admin_pb2.Project
) -> None:
    key = await srv.data_key(project, ("memory:*",))
    await require_end_user(srv, project)
    client = srv.client(key)
    await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=client.md()),
    )
    assert await audit_events(srv) == []


# --- audit ------------------------------------------------------------------------------------


Call = Callable[[Client, str], Awaitable[Any]]


async def _export(c: Client, rid: str) -> Any:
    stream = c.memory.ExportMemories(
        memory_pb2.ExportMemoriesRequest(), metadata=c.md(x_request_id=rid)
    )
    return [m async for m in stream]


def _update(mid: str) -> Call:
    req = memory_pb2.UpdateMemoryRequest(memory=memory_pb2.Memory(id=mid, content="edited"))
    req.update_mask.paths.append("content")
    return lambda c, rid: c.memory.UpdateMemory(req, metadata=c.md(x_request_id=rid))


def _reads(mid: str) -> list[tuple[str, Call]]:
    """(method, call) of every MemoryService method that reaches stored memories."""
    return [
        (
            "GetMemory",
            lambda c, rid: c.memory.GetMemory(
                memory_pb2.GetMemoryRequest(id=mid), metadata=c.md(x_request_id=rid)
            ),
        ),
        (
            "ListMemories",
            lambda c, rid: c.memory.ListMemories(
                memory_pb2.ListMemoriesRequest(), metadata=c.md(x_request_id=rid)
            ),
        ),
        (
            "SearchMemories",
            lambda c, rid: c.memory.SearchMemories(
                memory_pb2.SearchMemoriesRequest(query="note"), metadata=c.md(x_request_id=rid)
            ),
        ),
        (
            "ListMemoryRevisions",
            lambda c, rid: c.memory.ListMemoryRevisions(
                memory_pb2.ListMemoryRevisionsRequest(id=mid), metadata=c.md(x_request_id=rid)
            ),
        ),
        ("ExportMemories", _export),
        ("UpdateMemory", _update(mid)),
        (
            "PurgeMemories",
            lambda c, rid: c.memory.PurgeMemories(
                memory_pb2.PurgeMemoriesRequest(all=True, dry_run=True),
                metadata=c.md(x_request_id=rid),
            ),
        ),
        (
            "DeleteMemory",
            lambda c, rid: c.memory.DeleteMemory(
                memory_pb2.DeleteMemoryRequest(id=mid), metadata=c.md(x_request_id=rid)
            ),
        ),
    ]


async def test_every_call_across_end_users_is_audited_once_without_content(
    srv: RunningServer, project: admin_pb2.Project
) -> None:
    key = await srv.data_key(project, ("memory:*",))
    back_office = srv.client(key)
    carol = srv.client(key, "carol")
    narrow = srv.client(
        await srv.data_key(project, ("memory:read", "memory:add", "memory:update", "memory:delete"))
    )
    secret_words = "carol's secret diagnosis"
    mid = (await create(carol, secret_words)).id

    # Calls that do not reach across end users leave no such event: writes,
    # calls with the header, calls of a key without the scope.
    await create(back_office, "a project note")
    for _, call in _reads(mid)[:-1]:  # all but the delete
        await call(carol, f"carol-{next(_rid)}")
        try:
            await call(narrow, f"narrow-{next(_rid)}")
        except aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await audit_events(srv) == []

    expected: dict[str, str] = {}
    for method, call in _reads(mid):
        rid = f"all-{method}-{next(_rid)}"
        await call(back_office, rid)
        expected[rid] = method
    events = await audit_events(srv)
    assert sorted(e.request_id for e in events) == sorted(expected)  # one per call
    env_id = project.environments[0].id
    for e in events:
        assert e.target == expected[e.request_id]
        assert (e.project_id, e.environment_id, e.outcome) == (project.id, env_id, "OK")
        assert e.actor_key_id and e.actor_key_id in key
        assert secret_words not in str(e) and "carol" not in str(e)


# --- S9: cross-project search and require_end_user_id -----------------------------------------


@pytest.fixture
async def two_projects(
    srv: RunningServer,
) -> AsyncIterator[tuple[admin_pb2.Project, admin_pb2.Project]]:
    yield await srv.project("p1"), await srv.project("p3")


async def test_cross_project_search_skips_projects_that_require_the_end_user_header(
    srv: RunningServer, two_projects: tuple[admin_pb2.Project, admin_pb2.Project]
) -> None:
    p1, p3 = two_projects
    scopes = ("memory:*", "org:cross_project_read")
    k1, k3 = await srv.data_key(p1, scopes), await srv.data_key(p3, scopes)
    in_p1 = await create(srv.client(k1), "a note in p1")
    carol_p1 = await create(srv.client(k1, "carol"), "carol's note in p1")
    in_p3 = await create(srv.client(k3), "a note in p3")
    carol_p3 = await create(srv.client(k3, "carol"), "carol's note in p3")
    cross = {"x_allow_cross_project": "true"}
    # Before P3 requires the header, a search from P1 with the scope spans both.
    everything = {in_p1.id, carol_p1.id, in_p3.id, carol_p3.id}
    assert await search_ids(srv.client(k1), **cross) == everything

    await require_end_user(srv, p3)
    # Without the header P3 is left out entirely (its memories need a named end user)...
    assert await search_ids(srv.client(k1), **cross) == {in_p1.id, carol_p1.id}
    # ... with it, P3's memories of that end user are found as before.
    assert await search_ids(srv.client(k1, "carol"), **cross) == {carol_p1.id, carol_p3.id}
    # From P3 itself the header stays required.
    await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        srv.client(k3).memory.SearchMemories(
            memory_pb2.SearchMemoriesRequest(query="note"),
            metadata=srv.client(k3).md(**cross),
        ),
    )
    # And a key without memory:all_end_users reaches only project-level memories.
    narrow = srv.client(await srv.data_key(p1, ("memory:read", "org:cross_project_read")))
    assert await search_ids(narrow, **cross) == {in_p1.id}
