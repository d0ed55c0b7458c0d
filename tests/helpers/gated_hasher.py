"""A hasher whose `verify` of chosen secrets waits for the test, and a server
built with it: a key verification provably in flight, with no timing."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from grpc import aio

from helpers.servers import RunningServer
from memoryd.app import build_app
from memoryd.auth.hashing import Argon2Hasher
from memoryd.config import Settings
from memoryd.domain.clock import SystemClock


class GatedHasher(Argon2Hasher):
    """`verify` of a gated secret waits until its gate opens."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost_kib=1024)
        self.gates: dict[str, asyncio.Event] = {}
        self.entered: dict[str, int] = {}

    def gate(self, secret: str) -> asyncio.Event:
        return self.gates.setdefault(secret, asyncio.Event())

    async def verify(self, secret: str, hashed: str) -> bool:
        self.entered[secret] = self.entered.get(secret, 0) + 1
        if secret in self.gates:
            await self.gates[secret].wait()
        return await super().verify(secret, hashed)

    async def entered_verify(self, secret: str, within: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not self.entered.get(secret):
            assert loop.time() < deadline, "the verification never started"
            await asyncio.sleep(0.005)


@asynccontextmanager
async def gated_server(
    hasher: GatedHasher, *, bootstrap: bool = True, **overrides: Any
) -> AsyncIterator[RunningServer]:
    """A real server on port 0 whose hasher is `hasher` (settings as the
    `make_server` fixture's, plus `overrides`)."""
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(
            host="127.0.0.1",
            port=0,
            data_dir=data,
            embedding_provider="hashing",
            embedding_dimension=64,
            shutdown_delay_s=0.0,
            log_level="WARNING",
            sweep_interval_s=3600.0,
            **overrides,
        )
        clock = SystemClock()
        app = await build_app(settings, clock=clock, hasher=hasher, bootstrap_if_empty=bootstrap)
        await app.start()
        channel = aio.insecure_channel(f"127.0.0.1:{app.port}")
        boot = app.bootstrapped
        server = RunningServer(
            app,
            f"127.0.0.1:{app.port}",
            boot.plaintext if boot else "",
            boot.org.id if boot else "",
            channel,
            clock,
        )
        try:
            yield server
        finally:
            await channel.close()
            await app.stop(0)
