"""AddMessages with the verbatim extractor, and google.longrunning.Operations,
on a real server: messages in, an operation out, memories with provenance;
WaitOperation, Get/List/Cancel/Delete; request ids; refused input; scopes;
and the isolation of operations across organizations, projects,
environments and end users (another tenant's operation is NOT_FOUND,
exactly like a missing one, and never listed)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, timestamp_pb2
from helpers.errors import reason_of, refused, violations
from helpers.servers import Client, RunningServer

from memoryd.v1 import admin_pb2, memory_pb2, tenancy_pb2

WAIT = duration_pb2.Duration(seconds=20)  # an upper bound: done long before on any box


def conversation(*texts: str, roles: tuple[str, ...] = ()) -> list[memory_pb2.Message]:
    roles = roles or ("user",) * len(texts)
    return [memory_pb2.Message(role=r, content=t) for r, t in zip(roles, texts, strict=True)]


async def add(client: Client, *texts: str, **fields: Any) -> operations_pb2.Operation:
    request = memory_pb2.AddMessagesRequest(messages=conversation(*texts), **fields)
    return await client.memory.AddMessages(request, metadata=client.md())


async def wait(client: Client, op: operations_pb2.Operation) -> operations_pb2.Operation:
    done = await client.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=op.name, timeout=WAIT), metadata=client.md()
    )
    assert done.done, "the operation did not finish within the wait"
    return done


def result(op: operations_pb2.Operation) -> memory_pb2.AddMessagesResponse:
    assert op.WhichOneof("result") == "response", op.error
    out = memory_pb2.AddMessagesResponse()
    assert op.response.Unpack(out)
    return out


def meta(op: operations_pb2.Operation) -> memory_pb2.AddMessagesMetadata:
    out = memory_pb2.AddMessagesMetadata()
    assert op.metadata.Unpack(out)
    return out


async def data_client(
    server: RunningServer, scopes: tuple[str, ...] = ("memory:*",), end_user: str = "", **kw: Any
) -> Client:
    project = kw.pop("project", None) or await server.project(kw.pop("name", "app"))
    return server.client(await server.data_key(project, scopes, **kw), end_user)


async def listed(client: Client, **kw: Any) -> list[memory_pb2.Memory]:
    resp = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=100, **kw), metadata=client.md()
    )
    return list(resp.memories)


# --- the verbatim path ------------------------------------------------------------------


async def test_each_user_message_becomes_a_memory_with_its_provenance(
    server: RunningServer,
) -> None:
    client = await data_client(server)
    request = memory_pb2.AddMessagesRequest(
        messages=conversation(
            "I moved to Lisbon in May",
            "Noted!",
            "My daughter is called Ana",
            roles=("user", "assistant", "user"),
        ),
        agent_id="concierge",
        thread_id="t-1",
        source="chat",
        tags=["profile"],
    )
    request.metadata.update({"channel": "web"})
    op = await client.memory.AddMessages(request, metadata=client.md())
    assert op.name.startswith("operations/")
    assert meta(op).message_count == 3

    done = await wait(client, op)
    decisions = result(done).decisions
    assert [d.event for d in decisions] == [memory_pb2.MemoryDecision.ADD] * 2
    assert [d.memory.content for d in decisions] == [
        "I moved to Lisbon in May",
        "My daughter is called Ana",
    ]
    first = decisions[0].memory
    assert (first.agent_id, first.thread_id, first.source) == ("concierge", "t-1", "chat")
    assert list(first.tags) == ["profile"] and first.metadata["channel"] == "web"
    assert first.origin.operation == op.name
    assert list(first.origin.message_indexes) == [0]
    assert list(decisions[1].memory.origin.message_indexes) == [2]
    assert first.origin.extractor == "verbatim" and first.origin.thread_id == "t-1"
    assert first.origin.writer_key_id
    m = meta(done)
    assert m.state == memory_pb2.AddMessagesMetadata.SUCCEEDED and m.progress_percent == 100
    assert m.attempts == 1 and m.llm_input_tokens == 0
    assert {x.content for x in await listed(client)} == {
        "I moved to Lisbon in May",
        "My daughter is called Ana",
    }


async def test_a_message_time_becomes_the_memorys_valid_time(server: RunningServer) -> None:
    client = await data_client(server)
    when = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    request = memory_pb2.AddMessagesRequest(
        messages=[memory_pb2.Message(role="user", content="I started at Acme", create_time=when)]
    )
    done = await wait(client, await client.memory.AddMessages(request, metadata=client.md()))
    memory = result(done).decisions[0].memory
    assert memory.valid_time == when


async def test_get_and_list_operations(server: RunningServer) -> None:
    client = await data_client(server)
    first = await wait(client, await add(client, "one"))
    second = await wait(client, await add(client, "two"))
    got = await client.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=first.name), metadata=client.md()
    )
    assert got.done and result(got).decisions[0].memory.content == "one"
    page = await client.operations.ListOperations(
        operations_pb2.ListOperationsRequest(page_size=1), metadata=client.md()
    )
    assert [o.name for o in page.operations] == [second.name]
    rest = await client.operations.ListOperations(
        operations_pb2.ListOperationsRequest(page_size=1, page_token=page.next_page_token),
        metadata=client.md(),
    )
    assert [o.name for o in rest.operations] == [first.name]
    running = await client.operations.ListOperations(
        operations_pb2.ListOperationsRequest(filter="done = false"), metadata=client.md()
    )
    assert list(running.operations) == []
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.operations.ListOperations(
            operations_pb2.ListOperationsRequest(filter="owner = me"), metadata=client.md()
        ),
    )
    assert "filter" in violations(err)


async def test_a_done_operation_can_be_deleted_and_is_then_not_found(
    server: RunningServer,
) -> None:
    client = await data_client(server)
    done = await wait(client, await add(client, "remember me"))
    await client.operations.DeleteOperation(
        operations_pb2.DeleteOperationRequest(name=done.name), metadata=client.md()
    )
    await refused(
        grpc.StatusCode.NOT_FOUND,
        client.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=done.name), metadata=client.md()
        ),
    )
    # the memories it wrote stay
    assert [m.content for m in await listed(client)] == ["remember me"]


async def test_an_unknown_or_malformed_operation_name_is_not_found(
    server: RunningServer,
) -> None:
    client = await data_client(server)
    for name in ("operations/0123456789abcdef0123456789abcdef", "operations/../x", "nope"):
        await refused(
            grpc.StatusCode.NOT_FOUND,
            client.operations.GetOperation(
                operations_pb2.GetOperationRequest(name=name), metadata=client.md()
            ),
        )
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.operations.GetOperation(operations_pb2.GetOperationRequest(), metadata=client.md()),
    )
    assert "name" in violations(err)


# --- request ids -------------------------------------------------------------------------


async def test_a_retry_with_the_same_request_id_answers_the_first_operation(
    server: RunningServer,
) -> None:
    client = await data_client(server)
    first = await add(client, "once only", request_id="req-1")
    again = await add(client, "once only", request_id="req-1")
    assert again.name == first.name
    await wait(client, first)
    assert [m.content for m in await listed(client)] == ["once only"]
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT, add(client, "something else", request_id="req-1")
    )
    assert "request_id" in violations(err)
    # the same id from another end user is another request
    other = client.with_key(client.key, "bob")
    assert (await add(other, "once only", request_id="req-1")).name != first.name


# --- refused input -------------------------------------------------------------------------


async def test_bad_requests_are_refused_with_field_violations_and_store_nothing(
    server: RunningServer,
) -> None:
    client = await data_client(server)
    cases: list[tuple[memory_pb2.AddMessagesRequest, str]] = [
        (memory_pb2.AddMessagesRequest(), "messages"),
        (
            memory_pb2.AddMessagesRequest(messages=conversation(*(["x"] * 101))),
            "messages",
        ),
        (
            memory_pb2.AddMessagesRequest(messages=[memory_pb2.Message(role="robot", content="x")]),
            "messages[0].role",
        ),
        (
            memory_pb2.AddMessagesRequest(messages=[memory_pb2.Message(role="user", content=" ")]),
            "messages[0].content",
        ),
        (
            memory_pb2.AddMessagesRequest(messages=conversation("x" * 40_000)),
            "messages[0].content",
        ),
        (
            memory_pb2.AddMessagesRequest(messages=conversation("x"), request_id="r" * 101),
            "request_id",
        ),
        (
            memory_pb2.AddMessagesRequest(messages=conversation("x"), agent_id="a" * 300),
            "agent_id",
        ),
    ]
    for request, field in cases:
        err = await refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            client.memory.AddMessages(request, metadata=client.md()),
        )
        assert field in violations(err), (field, violations(err))
    page = await client.operations.ListOperations(
        operations_pb2.ListOperationsRequest(), metadata=client.md()
    )
    assert list(page.operations) == []


# --- scopes -------------------------------------------------------------------------------


async def test_scopes_of_add_messages_and_operations(server: RunningServer) -> None:
    project = await server.project("scoped")
    reader = await data_client(server, ("memory:read",), project=project)
    writer = await data_client(server, ("memory:add",), project=project)
    err = await refused(grpc.StatusCode.PERMISSION_DENIED, add(reader, "hello"))
    assert reason_of(err) == "SCOPE_MISSING"
    op = await add(writer, "hello")
    # reading operations needs memory:read; the writer alone cannot
    await refused(
        grpc.StatusCode.PERMISSION_DENIED,
        writer.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=op.name), metadata=writer.md()
        ),
    )
    done = await wait(reader, op)
    assert result(done).decisions[0].memory.content == "hello"
    # cancelling and deleting need the scope that made it
    await refused(
        grpc.StatusCode.PERMISSION_DENIED,
        reader.operations.DeleteOperation(
            operations_pb2.DeleteOperationRequest(name=op.name), metadata=reader.md()
        ),
    )
    org_key = server.owner
    err = await refused(
        grpc.StatusCode.PERMISSION_DENIED,
        org_key.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=op.name), metadata=org_key.md()
        ),
    )
    assert reason_of(err) == "DATA_KEY_REQUIRED"


# --- isolation ------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["other org", "other project", "other environment", "end user"])
async def test_another_tenants_operation_is_not_found_and_never_listed(
    server: RunningServer, who: str
) -> None:
    project = await server.project("home")
    owner = await data_client(server, project=project, end_user="alice")
    op = await wait(owner, await add(owner, "alice's secret", thread_id="t"))
    if who == "other org":
        org_b = await server.new_org("org-b")
        other_project = await server.project("home", client=org_b)
        intruder = server.client(await server.data_key(other_project, client=org_b), "alice")
    elif who == "other project":
        intruder = await data_client(server, name="elsewhere", end_user="alice")
    elif who == "other environment":
        env = await server.owner.admin.CreateEnvironment(
            _environment_request(project.id), metadata=server.owner.md()
        )
        key = await server.data_key(project, environment_id=env.id)
        intruder = server.client(key, "alice")
    else:
        intruder = owner.with_key(owner.key, "bob")
    for call in (
        intruder.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=op.name), metadata=intruder.md()
        ),
        intruder.operations.WaitOperation(
            operations_pb2.WaitOperationRequest(name=op.name), metadata=intruder.md()
        ),
        intruder.operations.CancelOperation(
            operations_pb2.CancelOperationRequest(name=op.name), metadata=intruder.md()
        ),
        intruder.operations.DeleteOperation(
            operations_pb2.DeleteOperationRequest(name=op.name), metadata=intruder.md()
        ),
    ):
        err = await refused(grpc.StatusCode.NOT_FOUND, call)
        assert op.name in (err.details() or "")
    page = await intruder.operations.ListOperations(
        operations_pb2.ListOperationsRequest(), metadata=intruder.md()
    )
    assert list(page.operations) == []
    # the owner still has it, whole
    got = await owner.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=op.name), metadata=owner.md()
    )
    assert result(got).decisions[0].memory.content == "alice's secret"


async def test_without_an_end_user_a_key_sees_only_operations_without_one_unless_all(
    server: RunningServer,
) -> None:
    project = await server.project("eu")
    alice = await data_client(
        server, ("memory:read", "memory:add"), project=project, end_user="alice"
    )
    op = await wait(alice, await add(alice, "alice only"))
    narrow = alice.with_key(alice.key)
    await refused(
        grpc.StatusCode.NOT_FOUND,
        narrow.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=op.name), metadata=narrow.md()
        ),
    )
    wide = await data_client(server, ("memory:read", "memory:all_end_users"), project=project)
    got = await wide.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=op.name), metadata=wide.md()
    )
    assert got.name == op.name


def _environment_request(project_id: str) -> admin_pb2.CreateEnvironmentRequest:
    return admin_pb2.CreateEnvironmentRequest(
        project_id=project_id,
        environment=admin_pb2.Environment(name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST),
    )
