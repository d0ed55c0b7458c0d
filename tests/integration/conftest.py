"""Fixtures of the integration tests of the control store: each test runs
on SQLite (a tmp file) and on PostgreSQL (a fresh database; the test FAILS
when PostgreSQL is unreachable)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from memoryd.storage.sql import SqlControlStore


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite+aiosqlite:///{tmp_path / 'control.db'}"


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlControlStore]:
    """An open control store on `database_url`."""
    s = SqlControlStore(database_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
