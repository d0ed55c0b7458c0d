"""Shared fixtures: a real memoryd server on port 0 over real stores.

- `server`: an in-process server (SQLite in tmp_path, hashing embedder,
  in-process limiter) with a bootstrapped org; `server.owner_key`.
- `pg_url`: a fresh PostgreSQL database for one test (dropped after); the
  test FAILS when PostgreSQL is unreachable (never skips).
- `make_server(**settings)`: builds more servers (other settings, a shared
  database for replicas). Their Qdrant Edge engine runs on a thread unless
  `vector_engine_process=True` (or MEMORYD_TEST_VECTOR_ENGINE_PROCESS=1).

What tests import (Client, RunningServer, error decoders...) is in `helpers/`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers.servers import MakeServer, RunningServer, start_server
from helpers.stores import fresh_pg_database

from memoryd.domain.clock import ManualClock


@pytest.fixture
async def make_server(tmp_path: Any) -> AsyncIterator[MakeServer]:
    started: list[RunningServer] = []

    async def make(data_dir: str | None = None, **options: Any) -> RunningServer:
        # the servers of one test are replicas of one deployment: they share
        # the key-encryption key (as replicas share MEMORYD_KEK_FILE)
        options.setdefault("kek_file", str(tmp_path / "kek.key"))
        server = await start_server(data_dir or str(tmp_path / f"data-{len(started)}"), **options)
        started.append(server)
        return server

    yield make
    for s in reversed(started):
        await s.stop()


@pytest.fixture
async def server(make_server: MakeServer) -> RunningServer:
    return await make_server()


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database, as a SQLAlchemy asyncpg URL."""
    async with fresh_pg_database() as url:
        yield url
