"""Idempotent creates (`request_id`, AIP-155) on a real server: a retry
answers the first call's response and stores nothing more; the key is the
tenant's, the end user's and the method's; a reused id with another request,
or one too long, is refused on `request_id`; a failed call can be retried;
and two replicas on one PostgreSQL share the keys."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import sqlalchemy as sa
from helpers.errors import refused, violations
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.v1 import memory_pb2


@pytest.fixture
async def client(server: RunningServer) -> Client:
    """A data key without memory:all_end_users: a call without x-end-user-id
    reaches only the memories without an end user."""
    project = await server.project()
    return server.client(await server.data_key(project, scopes=("memory:read", "memory:add")))


def create_request(content: str, request_id: str, **fields: str) -> memory_pb2.CreateMemoryRequest:
    return memory_pb2.CreateMemoryRequest(
        memory=memory_pb2.Memory(content=content, **fields), request_id=request_id
    )


async def create(client: Client, content: str, request_id: str) -> memory_pb2.CreateMemoryResponse:
    return await client.memory.CreateMemory(
        create_request(content, request_id), metadata=client.md()
    )


def batch_request(request_id: str, *contents: str) -> memory_pb2.BatchCreateMemoriesRequest:
    return memory_pb2.BatchCreateMemoriesRequest(
        requests=[
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=c)) for c in contents
        ],
        request_id=request_id,
    )


async def contents(client: Client) -> list[str]:
    """Every memory the client reaches, by content (newest first)."""
    page = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=100), metadata=client.md()
    )
    assert not page.next_page_token
    return [m.content for m in page.memories]


async def test_a_retried_create_answers_the_first_memory_and_stores_one(client: Client) -> None:
    first = await create(client, "likes tea", "req-1")
    retry = await create(client, "likes tea", "req-1")
    assert retry == first
    assert await contents(client) == ["likes tea"]


async def test_without_a_request_id_every_create_stores_a_memory(client: Client) -> None:
    a = await create(client, "likes tea", "")
    b = await create(client, "likes tea", "")
    assert a.memory.id != b.memory.id
    assert await contents(client) == ["likes tea", "likes tea"]


async def test_simultaneous_calls_with_one_request_id_store_one_memory(client: Client) -> None:
    responses = await asyncio.gather(*(create(client, "likes tea", "req-1") for _ in range(6)))
    assert {r.memory.id for r in responses} == {responses[0].memory.id}
    assert await contents(client) == ["likes tea"]


async def test_a_retried_batch_answers_the_first_results_failed_items_included(
    client: Client,
) -> None:
    request = batch_request("batch-1", "likes tea", "", "plays chess")  # item 1 fails
    first = await client.memory.BatchCreateMemories(request, metadata=client.md())
    assert (first.succeeded_count, first.failed_count) == (2, 1)
    retry = await client.memory.BatchCreateMemories(request, metadata=client.md())
    assert retry == first
    assert sorted(await contents(client)) == ["likes tea", "plays chess"]


async def test_a_batch_and_a_create_with_one_request_id_are_separate_keys(client: Client) -> None:
    await create(client, "likes tea", "shared")
    batch = await client.memory.BatchCreateMemories(
        batch_request("shared", "plays chess"), metadata=client.md()
    )
    assert batch.results[0].memory.content == "plays chess"
    assert sorted(await contents(client)) == ["likes tea", "plays chess"]


@pytest.mark.parametrize("method", ["CreateMemory", "BatchCreateMemories"])
async def test_a_request_id_reused_for_another_request_is_invalid_argument(
    client: Client, method: str
) -> None:
    if method == "CreateMemory":
        await create(client, "likes tea", "req-1")
        call = create(client, "likes coffee", "req-1")
    else:
        await client.memory.BatchCreateMemories(
            batch_request("req-1", "likes tea"), metadata=client.md()
        )
        call = client.memory.BatchCreateMemories(
            batch_request("req-1", "likes coffee"), metadata=client.md()
        )
    err = await refused(grpc.StatusCode.INVALID_ARGUMENT, call)
    assert "different request" in violations(err)["request_id"]
    assert await contents(client) == ["likes tea"]


async def test_the_same_request_id_of_another_tenant_or_end_user_is_its_own(
    server: RunningServer, client: Client
) -> None:
    first = await create(client, "likes tea", "req-1")
    other_project = server.client(await server.data_key(await server.project("other")))
    other_org_owner = await server.new_org()
    other_org = server.client(
        await server.data_key(await server.project("app", other_org_owner), client=other_org_owner)
    )
    alice = client.with_key(client.key, end_user="alice")
    for other in (other_project, other_org, alice):
        theirs = await create(other, "likes tea", "req-1")
        assert theirs.memory.id != first.memory.id
        assert await contents(other) == ["likes tea"]
        assert await create(other, "likes tea", "req-1") == theirs
    # and the first tenant's own retry still answers its first memory
    assert await create(client, "likes tea", "req-1") == first
    assert await contents(client) == ["likes tea"]


async def test_a_failed_first_call_stores_nothing_and_its_retry_runs(client: Client) -> None:
    await refused(grpc.StatusCode.INVALID_ARGUMENT, create(client, "", "req-1"))
    fixed = await create(client, "likes tea", "req-1")
    assert await create(client, "likes tea", "req-1") == fixed
    assert await contents(client) == ["likes tea"]


async def test_a_key_without_memory_add_is_refused_before_any_replay(
    server: RunningServer, client: Client
) -> None:
    project = await server.project("other")
    writer = server.client(await server.data_key(project))
    reader = server.client(await server.data_key(project, scopes=("memory:read",)))
    await create(writer, "likes tea", "req-1")
    # the same tenant and request: only the scope stands between it and the replay
    await refused(grpc.StatusCode.PERMISSION_DENIED, create(reader, "likes tea", "req-1"))


@pytest.mark.parametrize(
    ("request_id", "says"),
    [("r" * 101, "at most 100"), ("bad\nid", "printable")],
    ids=["too long", "not printable"],
)
async def test_a_bad_request_id_is_a_field_violation(
    client: Client, request_id: str, says: str
) -> None:
    err = await refused(grpc.StatusCode.INVALID_ARGUMENT, create(client, "likes tea", request_id))
    assert says in violations(err)["request_id"]
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.memory.BatchCreateMemories(
            batch_request(request_id, "likes tea"), metadata=client.md()
        ),
    )
    assert says in violations(err)["request_id"]
    assert await contents(client) == []
    # 100 printable characters are fine
    await create(client, "likes tea", "r" * 100)


async def test_a_retry_on_another_replica_answers_the_first_replicas_response(
    make_server: MakeServer, pg_url: str
) -> None:
    a = await make_server(database_url=pg_url)
    b = await make_server(database_url=pg_url, bootstrap_if_empty=False)
    key = await a.data_key(await a.project())
    on_a, on_b = a.client(key), b.client(key)
    first = await create(on_a, "likes tea", "req-1")
    batch = await on_a.memory.BatchCreateMemories(
        batch_request("batch-1", "plays chess"), metadata=on_a.md()
    )
    assert await create(on_b, "likes tea", "req-1") == first
    assert (
        await on_b.memory.BatchCreateMemories(
            batch_request("batch-1", "plays chess"), metadata=on_b.md()
        )
        == batch
    )
    # Each test replica has its own vector store: B wrote nothing of its own.
    assert await contents(on_b) == []
    assert sorted(await contents(on_a)) == ["likes tea", "plays chess"]


async def test_a_rerun_whose_first_response_was_lost_overwrites_instead_of_duplicating(
    server: RunningServer, client: Client
) -> None:
    """The crash window: the work was done, the server died before saving
    the response. The retry runs the work again, and writes the same ids."""
    first = await create(client, "likes tea", "crash-1")
    batch = await client.memory.BatchCreateMemories(
        batch_request("crash-2", "one", "two"), metadata=client.md()
    )
    async with server.app.store.engine.begin() as conn:  # the responses are lost
        await conn.execute(sa.text("DELETE FROM idempotency_keys"))
    again = await create(client, "likes tea", "crash-1")
    batch_again = await client.memory.BatchCreateMemories(
        batch_request("crash-2", "one", "two"), metadata=client.md()
    )
    assert again.memory.id == first.memory.id
    assert [r.memory.id for r in batch_again.results] == [r.memory.id for r in batch.results]
    assert sorted(await contents(client)) == ["likes tea", "one", "two"]
