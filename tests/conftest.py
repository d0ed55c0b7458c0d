"""Shared fixtures: a real memoryd server on port 0 over real stores.

- `server`: an in-process server (SQLite in tmp_path, hashing embedder,
  in-process limiter) with a bootstrapped org; `server.owner_key`.
- `pg_url`: a fresh PostgreSQL database for one test (dropped after); the
  test FAILS when PostgreSQL is unreachable (never skips).
- `make_server(**settings)`: builds more servers (other settings, a shared
  database for replicas). Their Qdrant Edge engine runs on a thread unless
  `vector_engine_process=True` (or MEMORYD_TEST_VECTOR_ENGINE_PROCESS=1).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from grpc import aio

from memoryd.app import App, build_app
from memoryd.auth.hashing import Argon2Hasher
from memoryd.config import Settings
from memoryd.domain.clock import ManualClock, SystemClock
from memoryd.v1 import admin_pb2, admin_pb2_grpc, keys_pb2, keys_pb2_grpc, memory_pb2_grpc

PG_ADMIN_DSN = os.environ.get(
    "MEMORYD_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("MEMORYD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def fast_hasher() -> Argon2Hasher:
    """argon2id with small parameters: same code path, faster tests."""
    return Argon2Hasher(time_cost=1, memory_cost_kib=1024)


@dataclass
class Client:
    """Stubs on one channel, with a key."""

    channel: aio.Channel
    key: str
    end_user: str = ""
    memory: memory_pb2_grpc.MemoryServiceStub = field(init=False)
    keys: keys_pb2_grpc.KeyServiceStub = field(init=False)
    admin: admin_pb2_grpc.AdminServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.memory = memory_pb2_grpc.MemoryServiceStub(self.channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    def md(self, **extra: str) -> tuple[tuple[str, str], ...]:
        out = [("x-api-key", self.key)]
        if self.end_user:
            out.append(("x-end-user-id", self.end_user))
        out.extend((k.replace("_", "-"), v) for k, v in extra.items())
        return tuple(out)

    def with_key(self, key: str, end_user: str = "") -> Client:
        return Client(self.channel, key, end_user)


@dataclass
class RunningServer:
    app: App
    address: str
    owner_key: str
    org_id: str
    channel: aio.Channel
    clock: Any

    @property
    def owner(self) -> Client:
        return Client(self.channel, self.owner_key)

    def client(self, key: str, end_user: str = "") -> Client:
        return Client(self.channel, key, end_user)

    async def new_org(self, name: str = "other") -> Client:
        """Another organization on the same server, with its owner client."""
        from memoryd.domain.bootstrap import bootstrap_org

        boot = await bootstrap_org(self.app.store, fast_hasher(), self.clock, name)
        return Client(self.channel, boot.plaintext)

    async def project(self, name: str = "app", client: Client | None = None) -> admin_pb2.Project:
        client = client or self.owner
        return await client.admin.CreateProject(
            admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name=name)),
            metadata=client.md(),
        )

    async def data_key(
        self,
        project: admin_pb2.Project,
        scopes: tuple[str, ...] = ("memory:*",),
        client: Client | None = None,
        environment_id: str = "",
    ) -> str:
        client = client or self.owner
        resp = await client.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(
                project_id=project.id,
                environment_id=environment_id or project.environments[0].id,
                name="test key",
                scopes=list(scopes),
            ),
            metadata=client.md(),
        )
        return resp.secret


MakeServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def make_server(tmp_path: Any) -> AsyncIterator[MakeServer]:
    started: list[RunningServer] = []

    async def make(
        clock: Any = None,
        data_dir: str | None = None,
        bootstrap_if_empty: bool = True,
        tracer_provider: Any = None,
        **overrides: Any,
    ) -> RunningServer:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": data_dir or str(tmp_path / f"data-{len(started)}"),
            "embedding_provider": "hashing",
            "embedding_dimension": 64,
            "grace_period_s": 1.0,
            "shutdown_delay_s": 0.0,
            "log_level": "WARNING",
            "sweep_interval_s": 3600.0,
            # The engine on a thread: faster to start and call. The server's
            # default (a child process) is what tests/e2e runs, and what the
            # vector store contract and the hang tests run explicitly;
            # MEMORYD_TEST_VECTOR_ENGINE_PROCESS=1 runs every test so.
            "vector_engine_process": os.environ.get("MEMORYD_TEST_VECTOR_ENGINE_PROCESS") == "1",
        }
        values.update(overrides)
        settings = Settings(**values)
        settings.validate()
        clock = clock or SystemClock()
        app = await build_app(
            settings,
            clock=clock,
            hasher=fast_hasher(),
            bootstrap_if_empty=bootstrap_if_empty,
            tracer_provider=tracer_provider,
        )
        await app.start()
        address = f"127.0.0.1:{app.port}"
        channel = aio.insecure_channel(address)
        if app.bootstrapped is not None:
            owner, org_id = app.bootstrapped.plaintext, app.bootstrapped.org.id
        else:
            owner, org_id = "", ""
        server = RunningServer(app, address, owner, org_id, channel, clock)
        started.append(server)
        return server

    yield make
    for s in reversed(started):
        await s.channel.close()
        await s.app.stop(0)


@pytest.fixture
async def server(make_server: MakeServer) -> RunningServer:
    return await make_server()


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database, as a SQLAlchemy asyncpg URL."""
    name = f"memoryd_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def code_of(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, aio.AioRpcError), exc
    return exc.code()


async def wait_for(predicate: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
