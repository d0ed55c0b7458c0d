"""The MCP endpoint, through the `mcp` SDK's own client against a started
server: tools per scope, each tool's effect seen through gRPC, tenancy and
end users, keys refused with HTTP 401, rate limits and audit as for gRPC."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import httpx2
import pytest
from google.longrunning import operations_pb2
from grpc import aio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from memoryd.app import build_app
from memoryd.config import Settings
from memoryd.embeddings.hashing import HashingEmbedder
from memoryd.v1 import (
    admin_pb2,
    keys_pb2,
    knowledge_pb2,
    knowledge_pb2_grpc,
    memory_pb2,
    tenancy_pb2,
)
from tests.helpers.certs import make_pki
from tests.helpers.errors import refused
from tests.helpers.polling import wait_for
from tests.helpers.servers import Client as GrpcClient
from tests.helpers.servers import MakeServer, RunningServer, fast_hasher
from tests.helpers.stores import REDIS_URL

READ_TOOLS = {"search_memories", "get_memory", "list_memories", "get_operation"}
WRITE_TOOLS = {"add_memory", "add_messages", "update_memory", "delete_memory"}


def url(server: RunningServer) -> str:
    assert server.app.mcp is not None
    return f"{server.app.mcp.scheme}://127.0.0.1:{server.app.mcp.port}/mcp"


@asynccontextmanager
async def agent(
    server: RunningServer,
    key: str,
    end_user: str = "",
    *,
    header: str = "authorization",
    verify: ssl.SSLContext | bool = True,
) -> AsyncIterator[Client]:
    """The SDK's client, sending `key` as a bearer token (or in `x-api-key`)."""
    headers = {"Authorization": f"Bearer {key}"} if header == "authorization" else {header: key}
    if end_user:
        headers["x-end-user-id"] = end_user
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30, verify=verify) as http,
        Client(streamable_http_client(url(server), http_client=http)) as client,
    ):
        yield client


async def mcp_server(make_server: MakeServer, **options: Any) -> RunningServer:
    return await make_server(mcp_port="0", **options)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's structured result; the call must succeed."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def failed(client: Client, tool: str, code: str, **arguments: Any) -> dict[str, Any]:
    """A tool error's `error` object; it must carry gRPC code `code`."""
    result: CallToolResult = await client.call_tool(tool, arguments)
    assert result.is_error, result.content
    assert result.structured_content is not None
    error: dict[str, Any] = result.structured_content["error"]
    assert error["code"] == code, error
    return error


async def test_tools_listed_per_scope(make_server: MakeServer) -> None:
    server = await mcp_server(make_server)
    project = await server.project()
    everything = await server.data_key(project, ("memory:*",))
    read_only = await server.data_key(project, ("memory:read",))
    add_only = await server.data_key(project, ("memory:add",))

    async with agent(server, everything) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == READ_TOOLS | WRITE_TOOLS
        search = next(t for t in (await client.list_tools()).tools if t.name == "search_memories")
        assert search.description and "query" in search.input_schema["properties"]
        assert "query" in search.input_schema["required"]
    async with agent(server, read_only) as client:
        assert {t.name for t in (await client.list_tools()).tools} == READ_TOOLS
    async with agent(server, add_only, header="x-api-key") as client:
        assert {t.name for t in (await client.list_tools()).tools} == {
            "add_memory",
            "add_messages",
        }
    # an org key has no environment, so no memory tools
    async with agent(server, server.owner_key) as client:
        assert (await client.list_tools()).tools == []


async def test_a_tool_outside_the_scopes_is_refused_as_grpc_refuses_it(
    make_server: MakeServer,
) -> None:
    server = await mcp_server(make_server)
    project = await server.project()
    read_only = await server.data_key(project, ("memory:read",))
    async with agent(server, read_only) as client:
        error = await failed(client, "add_memory", "PERMISSION_DENIED", content="x")
        assert error["reason"] == "SCOPE_MISSING"


async def test_each_tool_acts_as_grpc_sees_it(make_server: MakeServer) -> None:
    server = await mcp_server(make_server)
    project = await server.project()
    key = await server.data_key(project, ("memory:*",))
    grpc_client = server.client(key)

    async with agent(server, key) as client:
        added = await call(
            client, "add_memory", content="likes green tea", tags=["drinks"], metadata={"n": 1}
        )
        memory_id = added["memory"]["id"]
        stored = await grpc_client.memory.GetMemory(
            memory_pb2.GetMemoryRequest(id=memory_id), metadata=grpc_client.md()
        )
        assert stored.content == "likes green tea" and list(stored.tags) == ["drinks"]

        got = await call(client, "get_memory", id=memory_id)
        assert got["memory"]["content"] == "likes green tea"

        found = await call(client, "search_memories", query="green tea", top_k=5)
        assert [r["memory"]["id"] for r in found["results"]] == [memory_id]
        assert found["results"][0]["score"] > 0

        listed = await call(
            client, "list_memories", filter={"must": [{"field": "tags", "equals": "drinks"}]}
        )
        assert [m["id"] for m in listed["memories"]] == [memory_id]

        updated = await call(client, "update_memory", id=memory_id, content="likes black tea")
        assert updated["memory"]["revision"] == "2"  # int64 in proto JSON
        stored = await grpc_client.memory.GetMemory(
            memory_pb2.GetMemoryRequest(id=memory_id), metadata=grpc_client.md()
        )
        assert stored.content == "likes black tea"

        op = await call(
            client,
            "add_messages",
            messages=[{"role": "user", "content": "I live in Lisbon"}],
            thread_id="t1",
        )
        assert op["done"] is True and op["state"] == "SUCCEEDED", op
        decisions = op["response"]["decisions"]
        assert decisions[0]["event"] == "ADD"
        assert decisions[0]["memory"]["content"] == "I live in Lisbon"
        again = await call(client, "get_operation", name=op["name"])
        assert again["done"] is True and again["state"] == "SUCCEEDED"

        deleted = await call(client, "delete_memory", id=memory_id)
        assert deleted == {"deleted": memory_id}
        await refused(
            grpc.StatusCode.NOT_FOUND,
            grpc_client.memory.GetMemory(
                memory_pb2.GetMemoryRequest(id=memory_id), metadata=grpc_client.md()
            ),
        )


async def test_bad_arguments_are_invalid_argument_with_field_violations(
    make_server: MakeServer,
) -> None:
    server = await mcp_server(make_server)
    project = await server.project()
    key = await server.data_key(project, ("memory:*",))
    async with agent(server, key) as client:
        error = await failed(client, "search_memories", "INVALID_ARGUMENT", query="x", top_k=500)
        assert [v["field"] for v in error["field_violations"]] == ["top_k"]
        error = await failed(
            client, "list_memories", "INVALID_ARGUMENT", filter={"must": [{"nope": 1}]}
        )
        assert [v["field"] for v in error["field_violations"]] == ["filter"]
        # the server's own validation, passed through with its field violations
        error = await failed(
            client,
            "list_memories",
            "INVALID_ARGUMENT",
            filter={"must": [{"field": "org_id", "equals": "x"}]},
        )
        assert error["field_violations"]
        error = await failed(client, "get_memory", "INVALID_ARGUMENT", id="m1", extra=1)
        assert [v["field"] for v in error["field_violations"]] == ["extra"]


async def test_tenants_and_end_users_are_isolated_through_mcp(make_server: MakeServer) -> None:
    server = await mcp_server(make_server)
    project = await server.project("one")
    # explicit scopes: `memory:*` would hold memory:all_end_users
    scopes = ("memory:read", "memory:add", "memory:update", "memory:delete")
    key = await server.data_key(project, scopes)
    other_project = await server.project("two")
    other_project_key = await server.data_key(other_project, ("memory:*",))
    environment = await server.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=server.owner.md(),
    )
    other_env_key = await server.data_key(project, ("memory:*",), environment_id=environment.id)
    other_org = await server.new_org("elsewhere")
    foreign_project = await server.project("three", client=other_org)
    other_org_key = await server.data_key(foreign_project, ("memory:*",), client=other_org)

    async with agent(server, key, end_user="alice") as alice:
        mine = (await call(alice, "add_memory", content="alice secret plan"))["memory"]["id"]

    outsiders = [
        (other_project_key, ""),
        (other_env_key, ""),
        (other_org_key, ""),
        (key, "bob"),  # same environment, another end user
        (key, ""),  # same environment, no end user
    ]
    for outsider_key, end_user in outsiders:
        async with agent(server, outsider_key, end_user=end_user) as client:
            await call(client, "add_memory", content="an outsider's secret plan")
            await failed(client, "get_memory", "NOT_FOUND", id=mine)
            await failed(client, "update_memory", "NOT_FOUND", id=mine, content="taken")
            await failed(client, "delete_memory", "NOT_FOUND", id=mine)
            found = await call(client, "search_memories", query="alice secret plan")
            assert mine not in [r["memory"]["id"] for r in found["results"]]
            listed = await call(client, "list_memories")
            assert mine not in [m["id"] for m in listed["memories"]]
            assert listed["memories"], "the outsider sees its own memory"

    async with agent(server, key, end_user="alice") as alice:
        kept = await call(alice, "get_memory", id=mine)
        assert kept["memory"]["content"] == "alice secret plan"


async def test_no_bad_or_revoked_key_is_http_401(make_server: MakeServer) -> None:
    server = await mcp_server(make_server)
    project = await server.project()
    revoked = await server.owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            project_id=project.id,
            environment_id=project.environments[0].id,
            name="soon revoked",
            scopes=["memory:*"],
        ),
        metadata=server.owner.md(),
    )
    async with agent(server, revoked.secret) as client:  # works before the revocation
        await call(client, "list_memories")
    await server.owner.keys.RevokeApiKey(
        keys_pb2.RevokeApiKeyRequest(id=revoked.api_key.id), metadata=server.owner.md()
    )
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(timeout=30) as http:
        cases = {
            "API_KEY_MISSING": {},
            "API_KEY_INVALID": {"Authorization": "Bearer ms_live_not_a_key"},
            "API_KEY_REVOKED": {"x-api-key": revoked.secret},
        }
        for reason, headers in cases.items():
            answer = await http.post(url(server), json=initialize, headers={**accept, **headers})
            assert answer.status_code == 401, (reason, answer.text)
            assert answer.headers["www-authenticate"].startswith('Bearer realm="memoryd"')
            assert answer.json()["error"]["code"] == "UNAUTHENTICATED"
            if reason != "API_KEY_INVALID":  # a malformed key has reasons of its own
                assert answer.json()["error"]["reason"] == reason
            assert revoked.secret not in answer.text


@pytest.mark.parametrize("backend", ["local", "redis"])
async def test_rate_limit_refusal_is_a_resource_exhausted_tool_error(
    make_server: MakeServer, backend: str
) -> None:
    server = await mcp_server(
        make_server,
        key_requests_per_second=0.01,
        key_burst=3,
        redis_url=REDIS_URL if backend == "redis" else "",
    )
    project = await server.project()
    key = await server.data_key(project, ("memory:*",))
    async with agent(server, key) as client:
        errors = []
        for _ in range(6):
            result = await client.call_tool("list_memories", {})
            if result.is_error:
                assert result.structured_content is not None
                errors.append(result.structured_content["error"])
    assert errors, "a burst of 3 lets 6 calls through"
    assert errors[0]["code"] == "RESOURCE_EXHAUSTED"
    assert errors[0]["reason"] == "RATE_LIMITED"
    assert errors[0]["retry_after_s"] > 0


async def test_mcp_mutations_are_audited(make_server: MakeServer) -> None:
    server = await mcp_server(make_server)
    project = await server.project()
    key = await server.data_key(project, ("memory:*",))
    async with agent(server, key, end_user="carol") as client:
        memory_id = (await call(client, "add_memory", content="to change"))["memory"]["id"]
        await call(client, "update_memory", id=memory_id, tags=["x"])
        await call(client, "delete_memory", id=memory_id)
    page = await server.owner.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(project_id=project.id), metadata=server.owner.md()
    )
    mine = [e for e in page.events if e.target == memory_id]
    assert sorted(e.action for e in mine) == ["memory.delete", "memory.update"], mine
    for event in mine:
        assert event.outcome == "OK"
        assert event.request_id.startswith("mcp-")  # an MCP call, told apart
        assert event.peer == "unix:"
        assert event.details["end_user_id"] == "carol"


async def test_add_messages_answers_the_operation_when_not_done_in_time(
    make_server: MakeServer,
) -> None:
    server = await mcp_server(make_server, mcp_add_messages_wait_s=0.0)
    project = await server.project()
    key = await server.data_key(project, ("memory:*",))
    async with agent(server, key) as client:
        op = await call(
            client, "add_messages", messages=[{"role": "user", "content": "I play the cello"}]
        )
        assert op["done"] is False and op["state"] in ("PENDING", "RUNNING"), op
        assert op["name"]

        async def done() -> bool:
            return bool((await call(client, "get_operation", name=op["name"]))["done"])

        await wait_for(done, within=30.0)
        finished = await call(client, "get_operation", name=op["name"])
        assert finished["state"] == "SUCCEEDED"
        assert finished["response"]["decisions"][0]["memory"]["content"] == "I play the cello"
        await failed(client, "get_operation", "NOT_FOUND", name="operations/nope")


async def test_with_mtls_the_endpoint_is_https_and_wants_a_client_certificate(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """The gRPC port's TLS settings hold for the endpoint; its tools still
    reach the gRPC services (over the private side channel)."""
    pki = make_pki(tmp_path)
    server = await mcp_server(
        make_server,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    )
    assert url(server).startswith("https://")
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    async with aio.secure_channel(f"localhost:{server.app.port}", credentials) as channel:
        owner = GrpcClient(channel, server.owner_key)
        project = await server.project(client=owner)
        key = await server.data_key(project, ("memory:*",), client=owner)

    with_certificate = ssl.create_default_context(cafile=str(pki.ca))
    with_certificate.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    async with agent(server, key, verify=with_certificate) as client:
        added = await call(client, "add_memory", content="over mTLS")
        found = await call(client, "get_memory", id=added["memory"]["id"])
        assert found["memory"]["content"] == "over mTLS"

    without_certificate = ssl.create_default_context(cafile=str(pki.ca))
    async with httpx.AsyncClient(verify=without_certificate, timeout=30) as http:
        with pytest.raises(httpx.HTTPError):
            await http.post(url(server), json={}, headers={"Authorization": f"Bearer {key}"})


class HeldEmbedder:
    """Hashing vectors, once the test lets embedding go on: a call can be
    held in flight."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.go = asyncio.Event()
        self._hashing = HashingEmbedder(8)

    @property
    def model_id(self) -> str:
        return "held:8"

    @property
    def dimension(self) -> int:
        return 8

    async def embed(self, texts: Sequence[str], *, fairness_key: str = "") -> list[list[float]]:
        self.waiting.set()
        await self.go.wait()
        return [self._hashing.embed_one(t) for t in texts]

    async def close(self) -> None:
        self.go.set()


async def test_stop_lets_a_call_in_flight_finish_and_takes_no_new_one(tmp_path: Path) -> None:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path / "data"),
        embedding_provider="hashing",
        embedding_dimension=8,
        shutdown_delay_s=0.0,
        log_level="WARNING",
        mcp_port="0",
    )
    embedder = HeldEmbedder()
    app = await build_app(settings, hasher=fast_hasher(), embedder=embedder)
    await app.start()
    assert app.bootstrapped is not None and app.mcp is not None
    try:
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            owner = GrpcClient(channel, app.bootstrapped.plaintext)
            project = await owner.admin.CreateProject(
                admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="p")),
                metadata=owner.md(),
            )
            key = await owner.keys.CreateApiKey(
                keys_pb2.CreateApiKeyRequest(
                    project_id=project.id,
                    environment_id=project.environments[0].id,
                    name="agent",
                    scopes=["memory:*"],
                ),
                metadata=owner.md(),
            )
        endpoint = f"http://127.0.0.1:{app.mcp.port}/mcp"
        headers = {"Authorization": f"Bearer {key.secret}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(endpoint, http_client=http)) as client,
        ):
            # listed first: the client reads the listing (kept a minute) after a call
            await client.list_tools()
            in_flight = asyncio.create_task(client.call_tool("add_memory", {"content": "last"}))
            await asyncio.wait_for(embedder.waiting.wait(), 10)
            stopping = asyncio.create_task(app.stop(grace=30))

            async def refused() -> bool:
                try:
                    async with httpx.AsyncClient(timeout=5) as fresh:
                        await fresh.post(endpoint, json={}, headers=headers)
                except httpx.ConnectError:
                    return True
                return False

            await wait_for(refused, within=10.0)
            assert not in_flight.done()
            embedder.go.set()
            result = await asyncio.wait_for(in_flight, 30)
            assert not result.is_error, result.content
            await asyncio.wait_for(stopping, 30)
    finally:
        embedder.go.set()
        await app.stop(0)


async def test_add_messages_whose_wait_is_refused_still_answers_its_operation(
    make_server: MakeServer,
) -> None:
    """The messages are stored: a rate-limited wait is not an error to retry."""
    server = await mcp_server(make_server)
    project = await server.owner.admin.CreateProject(
        admin_pb2.CreateProjectRequest(
            project=admin_pb2.Project(
                name="one-call",
                rate_limits=admin_pb2.RateLimits(key_requests_per_second=0.001, key_burst=1),
            )
        ),
        metadata=server.owner.md(),
    )
    key = await server.data_key(project, ("memory:*",))
    async with agent(server, key) as client:
        await client.list_tools()  # not a gRPC call: nothing charged
        op = await call(client, "add_messages", messages=[{"role": "user", "content": "hi"}])
        assert op["name"] and op["done"] is False, op
        # the burst is spent: the next call is refused, as the wait was
        await failed(client, "get_operation", "RESOURCE_EXHAUSTED", name=op["name"])


async def test_search_knowledge_finds_the_keys_own_documents(make_server: MakeServer) -> None:
    server = await mcp_server(make_server)
    project = await server.project()
    scopes = ("knowledge:read", "knowledge:write", "ingest:write", "ingest:read")
    key = await server.data_key(project, scopes)
    owner = server.client(key)
    k = knowledge_pb2_grpc.KnowledgeServiceStub(owner.channel)
    op = await k.CreateDocument(
        knowledge_pb2.CreateDocumentRequest(
            text="The boiler room key hangs behind the reception desk.", display_name="keys"
        ),
        metadata=owner.md(),
    )
    done = await owner.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=op.name, timeout={"seconds": 20}),
        metadata=owner.md(),
    )
    assert done.done and done.WhichOneof("result") == "response"

    async with agent(server, key) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "search_knowledge" in names and "search_memories" not in names
        found = await call(client, "search_knowledge", query="boiler room key", top_k=3)
        [hit] = found["results"]
        assert hit["document_name"] == "keys" and "reception desk" in hit["text"]
    # another project's key finds nothing of it
    other = await server.data_key(await server.project("other"), scopes)
    async with agent(server, other) as client:
        assert (await call(client, "search_knowledge", query="boiler room key"))["results"] == []
    # without knowledge:read the tool is not listed, and refused
    memory_only = await server.data_key(project, ("memory:read",))
    async with agent(server, memory_only) as client:
        assert "search_knowledge" not in {t.name for t in (await client.list_tools()).tools}
        await failed(client, "search_knowledge", "PERMISSION_DENIED", query="boiler")
