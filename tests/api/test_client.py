"""memoryd.client against a real server (and, for retries, a tiny fake one)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status
from helpers.servers import MakeServer, RunningServer

from memoryd.client import (
    AsyncMemorydClient,
    FieldViolation,
    MemorydClient,
    MemorydError,
    RetryPolicy,
    TlsConfig,
    where,
)
from memoryd.v1 import keys_pb2, memory_pb2


async def _data_key(
    server: RunningServer, scopes: tuple[str, ...] = ("memory:*",)
) -> tuple[str, str]:
    project = await server.project(f"p-{uuid.uuid4().hex[:8]}")
    return await server.data_key(project, scopes), project.id


async def test_async_round_trip(make_server: MakeServer) -> None:
    server = await make_server()
    key, project_id = await _data_key(server)
    async with AsyncMemorydClient(server.address, key, end_user_id="ana") as client:
        me = await client.whoami()
        assert (me.project_id, me.end_user_id) == (project_id, "ana")
        assert me.kind == keys_pb2.KEY_KIND_DATA

        created = await client.create_memory(
            "Ana prefers green tea over coffee",
            tags=["drinks"],
            metadata={"confidence": 0.9},
            thread_id="t1",
        )
        await client.create_memory("Ana's flight leaves on Monday", tags=["travel"])
        memory = created.memory
        assert memory.id and memory.end_user_id == "ana" and memory.revision == 1

        hits = await client.search_memories("green tea over coffee", top_k=2)
        assert hits[0].memory.id == memory.id
        assert hits[0].score >= hits[-1].score

        filtered = await client.search_memories("anything", filter=where({"tags": "travel"}))
        assert [h.memory.tags[0] for h in filtered] == ["travel"]

        by_word = await client.search_memories("flight", mode="keyword")
        assert [h.memory.tags[0] for h in by_word] == ["travel"]
        recent = await client.search_memories(
            "tea", mode="hybrid", recency_half_life=dt.timedelta(days=7), diversity=0.5
        )
        assert recent[0].memory.id == memory.id

        got = await client.get_memory(memory.id)
        assert got.content == memory.content
        assert dict(got.metadata) == {"confidence": 0.9}

        listed = [m.id async for m in client.iter_memories(page_size=1)]
        assert len(listed) == 2 and memory.id in listed

        updated = await client.update_memory(memory.id, content="Ana now prefers mint tea")
        assert (updated.content, updated.revision, list(updated.tags)) == (
            "Ana now prefers mint tea",
            2,
            ["drinks"],
        )

        await client.delete_memory(memory.id)
        with pytest.raises(MemorydError) as caught:
            await client.get_memory(memory.id)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND

        assert await client.purge_memories(everything=True, dry_run=True) == 1
        assert await client.purge_memories(everything=True) == 1
        assert (await client.list_memories()).memories == []


async def test_end_user_header_scopes_reads(make_server: MakeServer) -> None:
    server = await make_server()
    key, _ = await _data_key(server)
    async with (
        AsyncMemorydClient(server.address, key, end_user_id="ana") as ana,
        AsyncMemorydClient(server.address, key, end_user_id="bob") as bob,
    ):
        mine = (await ana.create_memory("Ana's secret: she likes jazz")).memory
        assert (await bob.list_memories()).memories == []
        with pytest.raises(MemorydError) as caught:
            await bob.get_memory(mine.id)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        # A header set on the call wins over the client's own.
        got = await bob.get_memory(mine.id, call_metadata=(("x-end-user-id", "ana"),))
        assert got.id == mine.id


async def test_sync_client_round_trip(make_server: MakeServer) -> None:
    server = await make_server()
    key, project_id = await _data_key(server)
    owner_key = server.owner_key

    def work() -> tuple[str, list[str], str]:
        # Blocking calls: run off the event loop that serves them.
        with MemorydClient(server.address, key) as client:
            me = client.whoami()
            created = client.create_memory("the build server is called hermes", tags=["ops"])
            hits = client.search_memories("what is the build server called")
            ids = [m.id for m in client.iter_memories(filter=where({"tags": ["ops", "x"]}))]
            assert ids == [created.memory.id]
            assert hits[0].memory.id == created.memory.id
        with MemorydClient(server.address, owner_key) as owner:
            made = owner.create_api_key(
                "ci", project_id=me.project_id, environment_id=me.environment_id
            )
            revoked = owner.revoke_api_key(made.api_key.id)
        with MemorydClient(server.address, made.secret) as gone:
            try:
                gone.whoami()
                raise AssertionError("a revoked key worked")
            except MemorydError as err:
                code = f"{err.code.name}/{err.reason}"
        return me.project_id, list(made.api_key.scopes), f"{revoked.state}:{code}"

    project, scopes, outcome = await asyncio.to_thread(work)
    assert project == project_id
    assert sorted(scopes) == ["memory:add", "memory:read"]
    assert outcome == f"{keys_pb2.KEY_STATE_REVOKED}:UNAUTHENTICATED/API_KEY_REVOKED"


async def test_invalid_argument_decodes_field_violations(make_server: MakeServer) -> None:
    server = await make_server()
    key, _ = await _data_key(server)
    async with AsyncMemorydClient(server.address, key) as client:
        with pytest.raises(MemorydError) as caught:
            await client.create_memory("   ")
    err = caught.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.domain, err.reason) == ("memoryd", "INVALID_ARGUMENT")
    assert [v.field for v in err.field_violations] == ["memory.content"]
    assert isinstance(err.field_violations[0], FieldViolation)
    assert err.request_id
    assert "memory.content" in str(err)


async def test_not_found_and_unauthenticated_are_decoded(make_server: MakeServer) -> None:
    server = await make_server()
    key, _ = await _data_key(server)
    async with AsyncMemorydClient(server.address, key) as client:
        with pytest.raises(MemorydError) as caught:
            await client.get_memory(str(uuid.uuid4()))
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert caught.value.reason == "NOT_FOUND" and caught.value.field_violations == ()

    async with AsyncMemorydClient(server.address, "ms_live_not-a-real-key") as stranger:
        with pytest.raises(MemorydError) as caught:
            await stranger.whoami()
    err = caught.value
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert err.reason.startswith("API_KEY_") and err.request_id
    assert "ms_live_not-a-real-key" not in str(err)

    # Raw stubs raise plain gRPC errors; from_rpc_error decodes them the same way.
    async with AsyncMemorydClient(server.address, key) as client:
        with pytest.raises(grpc.RpcError) as raw:
            await client.memory.GetMemory(memory_pb2.GetMemoryRequest(id=str(uuid.uuid4())))
        assert isinstance(raw.value, grpc.RpcError)
        assert MemorydError.from_rpc_error(raw.value).code == grpc.StatusCode.NOT_FOUND


def test_retry_policy_service_config() -> None:
    config = RetryPolicy(max_attempts=3, initial_backoff_s=0.05).service_config()
    by_name = {
        (n["service"], n.get("method", "")): m["retryPolicy"]
        for m in config["methodConfig"]
        for n in m["name"]
    }
    write = by_name[("memoryd.v1.MemoryService", "")]
    read = by_name[("memoryd.v1.MemoryService", "SearchMemories")]
    assert write["retryableStatusCodes"] == ["RESOURCE_EXHAUSTED"]
    assert read["retryableStatusCodes"] == ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]
    assert ("memoryd.v1.MemoryService", "CreateMemory") not in by_name
    assert by_name[("memoryd.v1.AdminService", "GetPrompt")] == read
    assert ("memoryd.v1.AdminService", "UpdatePrompt") not in by_name
    assert write["maxAttempts"] == 3 and write["initialBackoff"] == "0.050s"
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=9)


# --- retries, against a tiny in-test server -------------------------------------------------


class FlakyServer:
    """Answers KeyService/WhoAmI and MemoryService/CreateMemory; the first
    `failures` attempts of each fail with `status` (a google.rpc.Status) and
    `trailers`. Records every attempt's time and metadata."""

    def __init__(
        self, status: status_pb2.Status, trailers: tuple[tuple[str, str], ...], failures: int = 1
    ) -> None:
        self.status = status
        self.trailers = trailers
        self.failures = failures
        self.attempts: list[tuple[float, str, dict[str, str]]] = []

    def _handler(self, method: str, reply: Callable[[], Any]) -> Any:
        async def handle(request: Any, context: aio.ServicerContext) -> Any:
            md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            self.attempts.append((time.monotonic(), method, md))
            if sum(1 for _, m, _ in self.attempts if m == method) <= self.failures:
                status = rpc_status.to_status(self.status)
                await context.abort(
                    status.code,
                    status.details,
                    trailing_metadata=(*self.trailers, *status.trailing_metadata),
                )
            return reply()

        return handle

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "memoryd.v1.KeyService",
            {
                "WhoAmI": grpc.unary_unary_rpc_method_handler(
                    self._handler("WhoAmI", lambda: keys_pb2.WhoAmIResponse(key_id="k1")),
                    request_deserializer=keys_pb2.WhoAmIRequest.FromString,
                    response_serializer=keys_pb2.WhoAmIResponse.SerializeToString,
                )
            },
        )

    def memory_handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "memoryd.v1.MemoryService",
            {
                "CreateMemory": grpc.unary_unary_rpc_method_handler(
                    self._handler(
                        "CreateMemory",
                        lambda: memory_pb2.CreateMemoryResponse(memory=memory_pb2.Memory(id="m1")),
                    ),
                    request_deserializer=memory_pb2.CreateMemoryRequest.FromString,
                    response_serializer=memory_pb2.CreateMemoryResponse.SerializeToString,
                )
            },
        )


def _pack(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


RATE_LIMITED = status_pb2.Status(
    code=code_pb2.RESOURCE_EXHAUSTED,
    message="rate limit of this key exceeded; retry after 200 ms",
    details=[
        _pack(error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="memoryd")),
        _pack(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject="key:k1", description="100 requests per second"
                    )
                ]
            )
        ),
        _pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=200_000_000))),
    ],
)
PUSHBACK = (
    ("grpc-retry-pushback-ms", "200"),
    ("retry-after", "1"),
    ("x-ratelimit-remaining", "0"),
)
UNAVAILABLE = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="vector store unreachable")


@pytest.fixture
async def flaky() -> AsyncIterator[Callable[..., Any]]:
    servers: list[aio.Server] = []

    async def start(fake: FlakyServer) -> str:
        server = aio.server()
        server.add_generic_rpc_handlers((fake.handlers(), fake.memory_handlers()))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(0)


FAST_BACKOFF = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02)


async def test_retry_waits_for_the_servers_pushback(flaky: Callable[..., Any]) -> None:
    fake = FlakyServer(RATE_LIMITED, PUSHBACK)
    address = await flaky(fake)
    async with AsyncMemorydClient(address, "ms_live_x", retry=FAST_BACKOFF, timeout=5) as client:
        start = time.monotonic()
        me = await client.whoami()
    assert me.key_id == "k1"
    (t1, _, md1), (t2, _, md2) = fake.attempts
    # The backoff alone would be ≤ 10 ms: the 200 ms are the server's pushback.
    assert t2 - t1 >= 0.19, t2 - t1
    assert time.monotonic() - start >= 0.19
    assert md1["x-api-key"] == md2["x-api-key"] == "ms_live_x"
    assert md2.get("grpc-previous-rpc-attempts") == "1"


async def test_rate_limit_error_details_without_retries(flaky: Callable[..., Any]) -> None:
    fake = FlakyServer(RATE_LIMITED, PUSHBACK)
    address = await flaky(fake)
    async with AsyncMemorydClient(address, "ms_live_x", retry=None) as client:
        with pytest.raises(MemorydError) as caught:
            await client.whoami()
    err = caught.value
    assert len(fake.attempts) == 1
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.reason == "RATE_LIMITED"
    assert err.retry_delay == pytest.approx(0.2)
    assert [(q.subject, q.description) for q in err.quota_violations] == [
        ("key:k1", "100 requests per second")
    ]
    assert err.trailers["retry-after"] == "1"
    assert err.trailers["x-ratelimit-remaining"] == "0"


async def test_negative_pushback_stops_retries(flaky: Callable[..., Any]) -> None:
    # gRFC A6: a negative pushback means "do not retry" (e.g. a quota refusal,
    # which waiting does not cure).
    quota = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="memory quota reached")
    fake = FlakyServer(quota, (("grpc-retry-pushback-ms", "-1"),), failures=5)
    address = await flaky(fake)
    async with AsyncMemorydClient(address, "ms_live_x", retry=FAST_BACKOFF, timeout=5) as client:
        with pytest.raises(MemorydError) as caught:
            await client.create_memory("x")
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_delay is None
    assert len(fake.attempts) == 1


async def test_unavailable_is_retried_for_reads_only(flaky: Callable[..., Any]) -> None:
    fake = FlakyServer(UNAVAILABLE, ())
    address = await flaky(fake)
    async with AsyncMemorydClient(address, "ms_live_x", retry=FAST_BACKOFF, timeout=5) as client:
        assert (await client.whoami()).key_id == "k1"
        with pytest.raises(MemorydError) as caught:
            await client.create_memory("a write that may have been applied")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert [m for _, m, _ in fake.attempts] == ["WhoAmI", "WhoAmI", "CreateMemory"]


async def test_sync_client_retries_too(flaky: Callable[..., Any]) -> None:
    fake = FlakyServer(RATE_LIMITED, PUSHBACK, failures=2)
    address = await flaky(fake)

    def call() -> str:
        with MemorydClient(address, "ms_live_x", retry=FAST_BACKOFF, timeout=5) as client:
            return client.create_memory("x").memory.id

    assert await asyncio.to_thread(call) == "m1"
    times = [t for t, _, _ in fake.attempts]
    assert len(times) == 3
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.19


# --- TLS: the key travels as call credentials ------------------------------------------------


def _make_certs(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost/127.0.0.1, with openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (tmp / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.pem")  # fmt: skip
    return tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"


async def test_tls_channel_sends_the_key_as_call_credentials(
    make_server: MakeServer, tmp_path: Path
) -> None:
    ca, cert, key_file = _make_certs(tmp_path)
    server = await make_server(tls_cert=str(cert), tls_key=str(key_file))
    tls = TlsConfig(root_certificates=ca.read_bytes(), server_name="localhost")
    async with AsyncMemorydClient(
        f"localhost:{server.app.port}", server.owner_key, end_user_id="ana", tls=tls
    ) as client:
        me = await client.whoami()
    assert me.kind == keys_pb2.KEY_KIND_ORG and me.end_user_id == "ana"

    async with AsyncMemorydClient(
        f"localhost:{server.app.port}", "ms_org_wrong", tls=tls
    ) as client:
        with pytest.raises(MemorydError) as caught:
            await client.whoami()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_the_async_clients_streams_carry_the_key(make_server: MakeServer) -> None:
    # grpc.aio files a multi-kind interceptor under its first kind only: the
    # key must reach server streams (ExportMemories, WatchMemories) and
    # client streams (ImportMemories), not only unary calls
    server = await make_server()
    key, _ = await _data_key(server)
    async with AsyncMemorydClient(server.address, key, end_user_id="ana") as client:
        await client.create_memory("streamed out")
        exported = [
            m async for m in client.memory.ExportMemories(memory_pb2.ExportMemoriesRequest())
        ]
        assert [m.content for m in exported] == ["streamed out"]

        async def items() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
            yield memory_pb2.ImportMemoriesRequest(memory=memory_pb2.Memory(content="streamed in"))

        summary = await client.memory.ImportMemories(items())
        assert summary.imported_count == 1


KNOWING = ("knowledge:read", "knowledge:write", "knowledge:delete", "ingest:read", "ingest:write")


async def test_async_knowledge_round_trip(make_server: MakeServer) -> None:
    from memoryd.v1 import knowledge_pb2

    server = await make_server()
    key, _ = await _data_key(server, KNOWING)
    async with AsyncMemorydClient(server.address, key) as client:
        op = await client.create_document(
            "The loading dock opens at seven.", display_name="dock.txt", folder="site"
        )
        done = await client.wait_operation(op.name)
        doc = knowledge_pb2.Document()
        assert done.response.Unpack(doc) and doc.state == knowledge_pb2.Document.READY
        uploaded = await client.upload_document(
            [b"# Gate\n\n", b"The north gate closes at ten."], display_name="gate.md"
        )
        assert (await client.wait_operation(uploaded.name)).done
        [hit] = await client.search_knowledge("when does the loading dock open", folder="site")
        assert hit.document == doc.name and "seven" in hit.text
        assert (await client.get_document(doc.name)).display_name == "dock.txt"
        await client.delete_document(doc.name)
        with pytest.raises(MemorydError) as err:
            await client.get_document(doc.name)
        assert err.value.code == grpc.StatusCode.NOT_FOUND


async def test_sync_knowledge_round_trip(make_server: MakeServer) -> None:
    server = await make_server()
    key, _ = await _data_key(server, KNOWING)

    def run() -> list[str]:
        with MemorydClient(server.address, key) as client:
            op = client.upload_document(b"Visitors sign in at the front desk.", display_name="v")
            assert client.wait_operation(op.name).done
            return [c.text for c in client.search_knowledge("where do visitors sign in")]

    assert await asyncio.to_thread(run) == ["Visitors sign in at the front desk."]
