"""Mesh citizenship: TLS and mTLS, metrics, graceful drain on stop, deadlines
that stop backend work, and the liveness health entry."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.certs import make_pki
from helpers.errors import reason_of
from helpers.polling import wait_for
from helpers.servers import Client, MakeServer

from memoryd.api.observe import COUNTERS
from memoryd.v1 import keys_pb2, memory_pb2

# --- TLS and mTLS -------------------------------------------------------------------------


async def _whoami(channel: aio.Channel, key: str) -> keys_pb2.WhoAmIResponse:
    return await Client(channel, key).keys.WhoAmI(
        keys_pb2.WhoAmIRequest(), metadata=(("x-api-key", key),), timeout=5
    )


async def test_tls_serves_tls_clients_and_refuses_plaintext(
    make_server: MakeServer, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    server = await make_server(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    target = f"localhost:{server.app.port}"
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    async with aio.secure_channel(target, creds) as channel:
        me = await _whoami(channel, server.owner_key)
    assert me.organization_id == server.org_id

    async with aio.insecure_channel(target) as plain:
        with pytest.raises(aio.AioRpcError) as caught:
            await _whoami(plain, server.owner_key)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_from_the_configured_ca(
    make_server: MakeServer, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    server = await make_server(
        tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca)
    )
    target = f"localhost:{server.app.port}"
    ca = pki.ca.read_bytes()

    good = grpc.ssl_channel_credentials(
        ca, pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    async with aio.secure_channel(target, good) as channel:
        assert (await _whoami(channel, server.owner_key)).key_id

    for creds in (
        grpc.ssl_channel_credentials(ca),  # no client certificate
        grpc.ssl_channel_credentials(ca, pki.rogue_key.read_bytes(), pki.rogue_cert.read_bytes()),
    ):
        async with aio.secure_channel(target, creds) as channel:
            with pytest.raises(aio.AioRpcError) as caught:
                await _whoami(channel, server.owner_key)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# --- metrics --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_endpoint_exposes_the_named_series_after_traffic(
    make_server: MakeServer,
) -> None:
    port = _free_port()
    server = await make_server(metrics_port=port)
    project = await server.project()
    client = server.client(await server.data_key(project))
    await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="tea")),
        metadata=client.md(),
    )
    with pytest.raises(aio.AioRpcError):
        await server.client("ms_live_nope").keys.WhoAmI(
            keys_pb2.WhoAmIRequest(), metadata=(("x-api-key", "ms_live_nope"),)
        )
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    )
    text = body.decode()
    assert (
        'memoryd_requests_total{code="OK",method="CreateMemory",service="MemoryService"} 1.0'
        in text
    )
    assert 'memoryd_request_duration_seconds_bucket{le="0.0005",method="CreateMemory"' in text
    assert 'memoryd_auth_failures_total{reason="API_KEY_MALFORMED"} 1.0' in text
    assert 'memoryd_backend_duration_seconds_count{backend="qdrant",operation="upsert"}' in text
    assert 'memoryd_backend_duration_seconds_count{backend="embedder",operation="embed"}' in text
    assert 'memoryd_backend_duration_seconds_count{backend="sql",operation="get_key"}' in text
    assert "memoryd_key_cache_hits_total" in text
    assert 'memoryd_environment_memories_bucket{le="10.0"} 1.0' in text  # 0 before the write
    assert 'memoryd_rate_limit_decisions_total{decision="allowed"}' in text
    # the counters other parts keep: every family, Redis's at 0 without Redis
    for name in COUNTERS:
        assert f"\n{name}_total " in text, name
    assert "\nmemoryd_rate_limit_script_loads_total 0.0" in text
    # no tenant labels, no secrets
    assert project.id not in text and server.owner_key not in text


# --- a slow embeddings endpoint: drain and deadlines -----------------------------------------


@dataclass
class SlowEmbeddings:
    """An OpenAI-compatible endpoint that answers after `delay` seconds, and
    records requests whose client hung up before the answer."""

    delay: float
    url: str = ""
    answered: int = 0
    abandoned: int = 0
    events: list[asyncio.Event] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        body = json.loads(await reader.readexactly(length))
        try:
            gone = await asyncio.wait_for(reader.read(1), self.delay)
        except TimeoutError:
            gone = None
        if gone == b"":
            self.abandoned += 1
            writer.close()
            return
        data = [{"index": i, "embedding": [1.0] + [0.0] * 63} for i, _ in enumerate(body["input"])]
        payload = json.dumps({"data": data}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        self.answered += 1
        writer.close()


@pytest.fixture
async def slow_embeddings() -> AsyncIterator[SlowEmbeddings]:
    stub = SlowEmbeddings(delay=1.0)
    server = await asyncio.start_server(stub.handle, "127.0.0.1", 0)
    stub.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    async with server:
        yield stub


async def test_a_passed_deadline_stops_the_backend_work(
    make_server: MakeServer, slow_embeddings: SlowEmbeddings
) -> None:
    server = await make_server(
        embedding_provider="openai",
        openai_base_url=slow_embeddings.url,
        openai_model="stub",
        embedding_dimension=64,
    )
    project = await server.project()
    client = server.client(await server.data_key(project))
    with pytest.raises(aio.AioRpcError) as caught:
        await client.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="slow")),
            metadata=client.md(),
            timeout=0.2,
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_for(lambda: slow_embeddings.abandoned > 0, within=3.0)
    assert slow_embeddings.abandoned == 1, "the embedding request went on after the deadline"
    assert slow_embeddings.answered == 0
    listed = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(), metadata=client.md()
    )
    assert list(listed.memories) == []  # nothing half-written


async def test_stop_flips_health_first_then_drains_in_flight_calls_and_refuses_new_ones(
    make_server: MakeServer, slow_embeddings: SlowEmbeddings
) -> None:
    server = await make_server(
        embedding_provider="openai",
        openai_base_url=slow_embeddings.url,
        openai_model="stub",
        embedding_dimension=64,
        shutdown_delay_s=1.5,  # room for the calls below on a busy machine
    )
    project = await server.project()
    client = server.client(await server.data_key(project))
    health = health_pb2_grpc.HealthStub(server.channel)

    in_flight = asyncio.ensure_future(
        client.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="in flight")),
            metadata=client.md(),
        )
    )
    await asyncio.sleep(0.2)  # the call is waiting on the slow embedder
    stopping = asyncio.ensure_future(server.app.stop(grace=3.0))
    await asyncio.sleep(0.05)
    status = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    # still served while the load balancers catch up...
    assert (await _whoami(server.channel, server.owner_key)).key_id
    await asyncio.sleep(1.6)  # ...then new calls are refused

    async with aio.insecure_channel(server.address) as fresh:
        with pytest.raises(aio.AioRpcError) as caught:
            await Client(fresh, server.owner_key).keys.WhoAmI(
                keys_pb2.WhoAmIRequest(), metadata=(("x-api-key", server.owner_key),), timeout=2
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    created = await in_flight  # completes within the grace
    assert created.memory.content == "in flight"
    await stopping


async def test_liveness_entry_is_serving(make_server: MakeServer) -> None:
    server = await make_server()
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "liveness", "memoryd.v1.MemoryService"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service


class _HangingShard:
    """Fault injection at the engine boundary: once `hang` is set, the next
    engine call blocks on the engine thread until `release` is set (a disk
    that stops answering). A real hang inside Qdrant Edge holds the GIL,
    which this wait (like any Python wait) releases: with the engine on a
    thread only this timeout logic is testable; the frozen engine process
    below is the real thing."""

    def __init__(self, shard: Any) -> None:
        self._shard = shard
        self.hang = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._shard, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.hang.is_set() and not self.entered.is_set():
                self.entered.set()
                self.release.wait(60)
            return attr(*args, **kwargs)

        return call


async def test_a_hung_vector_store_times_out_while_health_and_liveness_keep_answering(
    make_server: MakeServer,
) -> None:
    server = await make_server(storage_timeout_s=1.0, vector_engine_process=False)
    client = server.client(await server.data_key(await server.project()))
    health = health_pb2_grpc.HealthStub(server.channel)
    engine = server.app.vectors._backend.engine  # type: ignore[attr-defined]
    shard = _HangingShard(engine._shard)
    engine._shard = shard

    async def status(service: str = "") -> int:
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return resp.status

    async def create(content: str) -> memory_pb2.CreateMemoryResponse:
        return await client.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content)),
            metadata=client.md(),
            timeout=20,
        )

    shard.hang.set()
    try:
        hung = asyncio.ensure_future(create("into a hung disk"))
        assert await asyncio.to_thread(shard.entered.wait, 10), "the engine call did not start"
        # the process answers while an engine call is blocked
        assert await status("liveness") == health_pb2.HealthCheckResponse.SERVING
        await status()
        with pytest.raises(aio.AioRpcError) as timed_out:
            await hung
        assert timed_out.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(timed_out.value) == "STORAGE_TIMEOUT"

        async def not_serving() -> bool:
            return await status() == health_pb2.HealthCheckResponse.NOT_SERVING

        await wait_for(not_serving, within=10)
        assert await status("liveness") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(aio.AioRpcError) as refused:
            await create("while stuck")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(refused.value) == "STORAGE_STUCK"
    finally:
        shard.release.set()

    async def serving() -> bool:
        return await status() == health_pb2.HealthCheckResponse.SERVING

    await wait_for(serving, within=10)
    assert (await create("after the disk came back")).memory.content == "after the disk came back"


async def test_a_frozen_engine_process_times_out_while_health_and_liveness_keep_answering(
    make_server: MakeServer,
) -> None:
    """The whole engine stops (SIGSTOP of its process: what a disk that stops
    answering does to a call blocked in the engine, GIL and all) while a
    write is in flight. The server keeps answering health and liveness, the
    write answers UNAVAILABLE after storage_timeout_s, health is NOT_SERVING
    until the engine moves again, and nothing acknowledged is lost."""
    server = await make_server(storage_timeout_s=1.0, vector_engine_process=True)
    client = server.client(await server.data_key(await server.project()))
    health = health_pb2_grpc.HealthStub(server.channel)
    pid = server.app.vectors.engine_pid  # type: ignore[attr-defined]
    assert pid is not None and pid != os.getpid()

    async def status(service: str = "") -> int:
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return resp.status

    async def create(content: str) -> memory_pb2.CreateMemoryResponse:
        return await client.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content)),
            metadata=client.md(),
            timeout=20,
        )

    before = await create("acknowledged before the freeze")
    os.kill(pid, signal.SIGSTOP)
    try:
        hung = asyncio.ensure_future(create("into a frozen engine"))
        # the process answers while the engine cannot
        assert await status("liveness") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(aio.AioRpcError) as timed_out:
            await hung
        assert timed_out.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(timed_out.value) == "STORAGE_TIMEOUT"

        async def not_serving() -> bool:
            return await status() == health_pb2.HealthCheckResponse.NOT_SERVING

        await wait_for(not_serving, within=10)
        assert await status("liveness") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(aio.AioRpcError) as refused:
            await create("while frozen")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(refused.value) == "STORAGE_STUCK"
    finally:
        os.kill(pid, signal.SIGCONT)

    async def serving() -> bool:
        return await status() == health_pb2.HealthCheckResponse.SERVING

    await wait_for(serving, within=10)
    after = await create("after the engine came back")
    assert server.app.vectors.engine_pid == pid  # type: ignore[attr-defined]
    for kept in (before, after):
        got = await client.memory.GetMemory(
            memory_pb2.GetMemoryRequest(id=kept.memory.id), metadata=client.md(), timeout=20
        )
        assert got.content == kept.memory.content


async def test_tracing_records_a_span_per_call(make_server: MakeServer) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = await make_server(tracer_provider=provider)
    await _whoami(server.channel, server.owner_key)
    names = [span.name for span in exporter.get_finished_spans()]
    assert "/memoryd.v1.KeyService/WhoAmI" in names
    # no secret in any attribute
    for span in exporter.get_finished_spans():
        assert server.owner_key not in repr(dict(span.attributes or {}))
