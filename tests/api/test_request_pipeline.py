"""The call pipeline before the servicer: oversize bodies are refused
undecoded, a caller is authenticated (with exactly one credential) before
its body is decoded, large bodies are decoded off the event loop, an
undecodable body is INVALID_ARGUMENT (counted, logged quietly), and a
cancelled call is counted as what it was."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc import aio
from helpers.errors import reason_of, refused, violations
from helpers.polling import wait_for
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.api import memory as memory_api
from memoryd.api import steps
from memoryd.api.call import CallState
from memoryd.app import build_app
from memoryd.auth.hashing import Argon2Hasher
from memoryd.config import Settings
from memoryd.domain.clock import ManualClock
from memoryd.domain.memories import MemoryService
from memoryd.domain.project_cache import ProjectCache, Unknown
from memoryd.v1 import keys_pb2, memory_pb2

MEMORY = "/memoryd.v1.MemoryService/"


def count(server: RunningServer, method: str, code: str) -> float:
    value = server.app.metrics.registry.get_sample_value(
        "memoryd_requests_total", {"service": "MemoryService", "method": method, "code": code}
    )
    return value or 0.0


async def reader(server: RunningServer, scopes: tuple[str, ...] = ("memory:*",)) -> Client:
    project = await server.project()
    return server.client(await server.data_key(project, scopes))


def big_metadata_request(size: int) -> memory_pb2.CreateMemoryRequest:
    req = memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="x"))
    chunk = "v" * 1000
    for i in range(size // 1010 + 1):
        req.memory.metadata[f"k{i}"] = chunk
    return req


class Decodes:
    """Records every body the pipeline decodes (by size)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def install(self, monkeypatch: pytest.MonkeyPatch, parse: Callable[..., Any]) -> None:
        def recording(deserializer: Any, raw: bytes) -> Any:
            self.sizes.append(len(raw))
            return parse(deserializer, raw)

        monkeypatch.setattr(steps, "_parse", recording)


# --- S3: oversize bodies are refused before decoding ------------------------------------------


async def test_an_oversize_request_is_refused_undecoded_before_auth_and_scopes(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = Decodes()
    decodes.install(monkeypatch, steps._parse)
    client = await reader(server, ("memory:read",))
    req = big_metadata_request(9_900_000)
    raw_size = req.ByteSize()
    assert raw_size > 9_900_000

    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT, client.memory.CreateMemory(req, metadata=client.md())
    )
    assert reason_of(err) == "REQUEST_TOO_LARGE"
    described = violations(err)["request"]
    assert str(raw_size) in described and str(256 * 1024) in described
    assert raw_size not in decodes.sizes, "the oversize body was decoded"

    # a caller without a valid key is refused the same way, undecoded
    bad = server.client("ms_live_" + "0" * 50)
    await refused(grpc.StatusCode.INVALID_ARGUMENT, bad.memory.CreateMemory(req, metadata=bad.md()))
    assert raw_size not in decodes.sizes


async def test_a_batch_may_be_larger_than_a_single_request(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(max_request_bytes=64 * 1024, max_batch_request_bytes=512 * 1024)
    client = await reader(server)
    item = memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="y" * 20_000))
    batch = memory_pb2.BatchCreateMemoriesRequest(requests=[item] * 5)  # ~100 KB
    done = await client.memory.BatchCreateMemories(batch, metadata=client.md())
    assert done.succeeded_count == 5
    too_big = memory_pb2.BatchCreateMemoriesRequest(requests=[item] * 30)  # ~600 KB
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.memory.BatchCreateMemories(too_big, metadata=client.md()),
    )
    assert reason_of(err) == "REQUEST_TOO_LARGE"
    assert str(512 * 1024) in violations(err)["request"]


async def test_another_tenants_call_is_answered_while_a_large_body_decodes(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode of a large body is held in the middle (a blocked parse); if
    it ran on the event loop, nothing else could be answered until it ends."""
    events: list[str] = []
    started = threading.Event()
    release = threading.Event()
    original = steps._parse

    def held_parse(deserializer: Any, raw: bytes) -> Any:
        if len(raw) > steps.OFFLOAD_DECODE_BYTES:
            events.append("decode started")
            started.set()
            release.wait(timeout=10)  # only a deadlock breaker: the test releases it
            events.append("decode finished")
        return original(deserializer, raw)

    monkeypatch.setattr(steps, "_parse", held_parse)
    client = await reader(server)
    other = await server.new_org("other tenant")
    big = memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="z" * 100_000))
    assert big.ByteSize() < 256 * 1024

    large_call = asyncio.ensure_future(client.memory.CreateMemory(big, metadata=client.md()))
    assert await asyncio.to_thread(started.wait, 10)
    me = await other.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=other.md(), timeout=30)
    events.append("other tenant answered")
    release.set()
    with pytest.raises(aio.AioRpcError) as caught:
        await large_call  # 100 KB of content is over the 32 KB quota: refused after decoding
    assert reason_of(caught.value) != "MALFORMED_REQUEST"
    assert me.organization_id
    assert events == ["decode started", "other tenant answered", "decode finished"]


async def test_another_tenants_call_is_answered_while_a_large_batch_converts(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same for the conversion of a large batch's items (metadata to dicts)."""
    events: list[str] = []
    started = threading.Event()
    release = threading.Event()
    original = memory_api.new_memory

    def held_conversion(req: Any, prefix: str, **kwargs: Any) -> Any:
        if prefix == "requests[0]." and not started.is_set():
            events.append("conversion started")
            started.set()
            release.wait(timeout=10)  # only a deadlock breaker: the test releases it
            events.append("conversion finished")
        return original(req, prefix, **kwargs)

    monkeypatch.setattr(memory_api, "new_memory", held_conversion)
    client = await reader(server)
    other = await server.new_org("other tenant")
    item = memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="w" * 20_000))
    batch = memory_pb2.BatchCreateMemoriesRequest(requests=[item] * 5)
    assert batch.ByteSize() > steps.OFFLOAD_DECODE_BYTES

    large_call = asyncio.ensure_future(
        client.memory.BatchCreateMemories(batch, metadata=client.md())
    )
    assert await asyncio.to_thread(started.wait, 10)
    me = await other.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=other.md(), timeout=30)
    events.append("other tenant answered")
    release.set()
    assert (await large_call).succeeded_count == 5
    assert me.organization_id
    assert events == ["conversion started", "other tenant answered", "conversion finished"]


# --- S10: two credentials in one call ----------------------------------------------------------


class CountingHasher(Argon2Hasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost_kib=1024)
        self.verifies = 0

    async def verify(self, secret: str, hashed: str) -> bool:
        self.verifies += 1
        return await super().verify(secret, hashed)


@pytest.fixture
async def counted(tmp_path: Any) -> AsyncIterator[tuple[RunningServer, CountingHasher]]:
    hasher = CountingHasher()
    settings = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path / "data"),
        embedding_provider="hashing",
        embedding_dimension=64,
        log_level="WARNING",
        sweep_interval_s=3600.0,
    )
    app = await build_app(settings, hasher=hasher)
    await app.start()
    channel = aio.insecure_channel(f"127.0.0.1:{app.port}")
    assert app.bootstrapped is not None
    server = RunningServer(
        app,
        f"127.0.0.1:{app.port}",
        app.bootstrapped.plaintext,
        app.bootstrapped.org.id,
        channel,
        ManualClock(),
    )
    try:
        yield server, hasher
    finally:
        await channel.close()
        await app.stop(0)


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param(lambda a, b: (("x-api-key", a), ("x-api-key", b)), id="x-api-key twice"),
        pytest.param(lambda a, b: (("x-api-key", a), ("x-api-key", a)), id="same key twice"),
        pytest.param(
            lambda a, b: (("x-api-key", a), ("authorization", f"Bearer {b}")),
            id="x-api-key and bearer",
        ),
        pytest.param(
            lambda a, b: (("authorization", f"Bearer {a}"), ("authorization", f"Bearer {b}")),
            id="bearer twice",
        ),
    ],
)
async def test_two_credentials_in_one_call_are_refused_before_any_verification(
    counted: tuple[RunningServer, CountingHasher],
    credentials: Callable[[str, str], tuple[tuple[str, str], ...]],
) -> None:
    server, hasher = counted
    client = await reader(server)
    before = hasher.verifies
    err = await refused(
        grpc.StatusCode.UNAUTHENTICATED,
        server.owner.keys.WhoAmI(
            keys_pb2.WhoAmIRequest(), metadata=credentials(server.owner_key, client.key)
        ),
    )
    assert reason_of(err) == "API_KEY_AMBIGUOUS"
    assert hasher.verifies == before
    details = err.details() or ""
    assert server.owner_key not in details and client.key not in details


async def test_one_key_with_an_unrelated_authorization_scheme_is_accepted(
    server: RunningServer,
) -> None:
    me = await server.owner.keys.WhoAmI(
        keys_pb2.WhoAmIRequest(),
        metadata=(("x-api-key", server.owner_key), ("authorization", "Basic cHJveHk6cGFzcw==")),
    )
    assert me.organization_id == server.org_id


# --- bad input 8: an undecodable body ---------------------------------------------------------


def _varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out += bytes([low | 0x80])
        else:
            return out + bytes([low])


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _deep_struct(depth: int) -> bytes:
    """A Struct `{"k": [[[...]]]}` nested `depth` lists deep, past upb's limit."""
    value = struct_pb2.Value(string_value="a").SerializeToString()
    for _ in range(depth):
        value = _field(6, _field(1, value))  # Value.list_value { values: value }
    return _field(1, _field(1, b"k") + _field(2, value))  # Struct.fields entry


GARBAGE = b"\xff\xff\xff\xff\x0f\x12"
# CreateMemoryRequest / ImportMemoriesRequest{memory: Memory{content: <bad UTF-8>}}
BAD_UTF8 = _field(1, _field(2, b"caf\xc3"))
# ... {memory: Memory{metadata: <200 lists deep>}}
TOO_DEEP = _field(1, _field(3, _deep_struct(200)))


def _raw_unary(channel: aio.Channel, method: str) -> Any:
    return channel.unary_unary(MEMORY + method)


async def _malformed(server: RunningServer, client: Client, method: str, body: bytes) -> Any:
    channel = server.channel
    if method == "ExportMemories":
        return await refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            _collect(channel.unary_stream(MEMORY + method)(body, metadata=client.md())),
        )
    if method == "ImportMemories":

        async def messages() -> AsyncIterator[bytes]:
            yield body

        return await refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            channel.stream_unary(MEMORY + method)(messages(), metadata=client.md()),
        )
    return await refused(
        grpc.StatusCode.INVALID_ARGUMENT, _raw_unary(channel, method)(body, metadata=client.md())
    )


async def _collect(stream: Any) -> list[Any]:
    return [item async for item in stream]


@pytest.mark.parametrize(
    ("method", "body"),
    [
        pytest.param("CreateMemory", GARBAGE, id="unary garbage"),
        pytest.param("CreateMemory", BAD_UTF8, id="unary bad utf-8"),
        pytest.param("CreateMemory", TOO_DEEP, id="unary too deep"),
        pytest.param("ExportMemories", GARBAGE, id="server-stream garbage"),
        pytest.param("ExportMemories", _field(1, _field(1, b"\xff\xff")), id="server-stream bad"),
        pytest.param("ImportMemories", GARBAGE, id="client-stream garbage"),
        pytest.param("ImportMemories", BAD_UTF8, id="client-stream bad utf-8"),
        pytest.param("ImportMemories", TOO_DEEP, id="client-stream too deep"),
    ],
)
async def test_an_undecodable_body_is_invalid_argument_counted_and_never_a_traceback(
    server: RunningServer, caplog: pytest.LogCaptureFixture, method: str, body: bytes
) -> None:
    client = await reader(server)
    with caplog.at_level(logging.DEBUG, logger="memoryd"):
        err = await _malformed(server, client, method, body)
    assert reason_of(err) == "MALFORMED_REQUEST"
    await wait_for(lambda: count(server, method, "INVALID_ARGUMENT") == 1)
    assert count(server, method, "UNKNOWN") == 0 and count(server, method, "INTERNAL") == 0
    assert [r for r in caplog.records if r.levelno > logging.WARNING] == []
    assert [r for r in caplog.records if r.exc_info] == []
    assert any("undecodable" in r.getMessage() for r in caplog.records)


async def test_a_bad_key_never_gets_its_body_decoded(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = Decodes()
    decodes.install(monkeypatch, steps._parse)
    bad = server.client("ms_live_" + "0" * 50)
    err = await refused(
        grpc.StatusCode.UNAUTHENTICATED,
        _raw_unary(server.channel, "CreateMemory")(GARBAGE, metadata=bad.md()),
    )
    assert reason_of(err) != "MALFORMED_REQUEST"
    assert decodes.sizes == []


async def test_undecodable_bodies_are_logged_once_per_peer_per_interval(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    server = await make_server(clock=clock)
    client = await reader(server)
    unary = _raw_unary(server.channel, "CreateMemory")

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "undecodable" in r.getMessage()]

    with caplog.at_level(logging.DEBUG, logger="memoryd"):
        for _ in range(5):
            await refused(grpc.StatusCode.INVALID_ARGUMENT, unary(GARBAGE, metadata=client.md()))
        assert len(lines()) == 1
        assert lines()[0].levelno == logging.WARNING
        clock.advance(steps.MALFORMED_LOG_INTERVAL_S)
        await refused(grpc.StatusCode.INVALID_ARGUMENT, unary(GARBAGE, metadata=client.md()))
    assert len(lines()) == 2
    assert "4 more" in lines()[1].getMessage()
    await wait_for(lambda: count(server, "CreateMemory", "INVALID_ARGUMENT") == 6)


# --- bad input 9: cancelled calls ---------------------------------------------------------------


async def test_cancelled_and_timed_out_calls_are_counted_as_such(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import whose client stops sending: cancelled by the client, or by
    its deadline, while the server waits for the next message."""
    running = asyncio.Event()
    original = MemoryService.import_stream

    async def noting(self: MemoryService, caller: Any, items: Any) -> Any:
        running.set()
        return await original(self, caller, items)

    monkeypatch.setattr(MemoryService, "import_stream", noting)
    client = await reader(server)
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
        yield memory_pb2.ImportMemoriesRequest(memory=memory_pb2.Memory(content="one"))
        await never.wait()

    cancelled = client.memory.ImportMemories(stalled(), metadata=client.md())
    await asyncio.wait_for(running.wait(), 10)
    cancelled.cancel()
    await wait_for(lambda: count(server, "ImportMemories", "CANCELLED") == 1, within=10)

    running.clear()
    # a deadline long enough that the server's copy of it (later by the
    # request's transit, which a busy machine stretches) is within the slack
    timed_out = client.memory.ImportMemories(stalled(), metadata=client.md(), timeout=8)
    await asyncio.wait_for(running.wait(), 10)
    await refused(grpc.StatusCode.DEADLINE_EXCEEDED, timed_out)
    # When the server counts the expired call is not asserted here: in a full
    # CI run it once was not counted within 45 s (root cause open; alone the
    # test passes in 10 s). How such a call is counted is checked without
    # timing in tests/unit/test_deadline_code.py.
    assert count(server, "ImportMemories", "OK") == 0


async def test_a_cancelled_call_is_logged_as_cancelled(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str]] = []
    running = asyncio.Event()
    original = MemoryService.import_stream

    async def noting(self: MemoryService, caller: Any, items: Any) -> Any:
        running.set()
        return await original(self, caller, items)

    monkeypatch.setattr(MemoryService, "import_stream", noting)
    from memoryd.api import observe

    def record(self: Any, call: CallState, duration_s: float) -> None:
        seen.append((call.method.rsplit("/", 1)[-1], call.code))

    monkeypatch.setattr(observe.CallLogger, "call_finished", record)
    client = await reader(server)
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
        yield memory_pb2.ImportMemoriesRequest(memory=memory_pb2.Memory(content="one"))
        await never.wait()

    call = client.memory.ImportMemories(stalled(), metadata=client.md())
    await asyncio.wait_for(running.wait(), 10)
    call.cancel()
    await wait_for(lambda: ("ImportMemories", "CANCELLED") in seen, within=10)
    assert ("ImportMemories", "OK") not in seen


# --- one project read per call -------------------------------------------------------------------


async def test_a_memory_call_reads_its_project_once(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rate limiter (the project's limits) and the memory rules (its
    settings and quotas) see the project of one read of the cache: a read
    (`get_project`) or a look at a fresh entry (`peek`) that found it."""
    client = await reader(server)
    reads: list[tuple[str, str]] = []
    original, original_peek = ProjectCache.get_project, ProjectCache.peek

    async def counting(self: ProjectCache, org_id: str, project_id: str) -> Any:
        reads.append((org_id, project_id))
        return await original(self, org_id, project_id)

    def counting_peek(self: ProjectCache, org_id: str, project_id: str) -> Any:
        project = original_peek(self, org_id, project_id)
        if project is not Unknown.UNKNOWN:
            reads.append((org_id, project_id))
        return project

    monkeypatch.setattr(ProjectCache, "get_project", counting)
    monkeypatch.setattr(ProjectCache, "peek", counting_peek)
    create = memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="once"))
    await client.memory.CreateMemory(create, metadata=client.md())
    assert len(reads) == 1
    search = memory_pb2.SearchMemoriesRequest(query="once")
    await client.memory.SearchMemories(search, metadata=client.md())
    assert len(reads) == 2 and reads[0] == reads[1]
