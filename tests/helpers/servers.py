"""A real memoryd server on port 0 for tests, and stubs to call it.

`start_server` builds one from test defaults (hashing embedder, SQLite in
`data_dir`, generous grace periods); conftest's `make_server` fixture calls
it and stops every server it started.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.longrunning import operations_grpc_pb2
from grpc import aio

from memoryd.app import App, build_app
from memoryd.auth.hashing import Argon2Hasher
from memoryd.config import Settings
from memoryd.domain.clock import SystemClock
from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2_grpc,
    webhooks_pb2_grpc,
)


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
    operations: operations_grpc_pb2.OperationsStub = field(init=False)
    webhooks: webhooks_pb2_grpc.WebhookServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.memory = memory_pb2_grpc.MemoryServiceStub(self.channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.operations = operations_grpc_pb2.OperationsStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)

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

    async def stop(self) -> None:
        await self.channel.close()
        await self.app.stop(0)


MakeServer = Callable[..., Awaitable[RunningServer]]


async def start_server(
    data_dir: str,
    clock: Any = None,
    bootstrap_if_empty: bool = True,
    tracer_provider: Any = None,
    embedder: Any = None,
    engine_head_start: Any = None,
    **overrides: Any,
) -> RunningServer:
    """A started server with test defaults; `overrides` are Settings fields."""
    settings = server_settings(data_dir, **overrides)
    clock = clock or SystemClock()
    app = await build_app(
        settings,
        clock=clock,
        hasher=fast_hasher(),
        bootstrap_if_empty=bootstrap_if_empty,
        tracer_provider=tracer_provider,
        embedder=embedder,
        engine_head_start=engine_head_start,
    )
    await app.start()
    address = f"127.0.0.1:{app.port}"
    channel = aio.insecure_channel(address)
    if app.bootstrapped is not None:
        owner, org_id = app.bootstrapped.plaintext, app.bootstrapped.org.id
    else:
        owner, org_id = "", ""
    return RunningServer(app, address, owner, org_id, channel, clock)


def server_settings(data_dir: str, **overrides: Any) -> Settings:
    """The settings `start_server` starts a server with."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": data_dir,
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
    return settings
