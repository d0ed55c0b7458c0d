"""A real PostgreSQL outage: a private cluster the test stops and starts.

While it is down: control-plane calls answer UNAVAILABLE (DATABASE_UNAVAILABLE)
with a RetryInfo hint, never INTERNAL; memory calls keep working from the
last known project settings for the stale window, then answer UNAVAILABLE;
health is NOT_SERVING; one log line says it went down, one that it is back.
A connection dropped in the middle of a call answers UNAVAILABLE too, and
the pool does not hand the broken connection to the next call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.errors import reason_of, retry_delay
from helpers.polling import wait_for
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.domain.clock import ManualClock
from memoryd.v1 import admin_pb2, memory_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        pytest.fail("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A throw-away cluster on its own port; initdb refuses root, so as root
    it runs as the `postgres` user."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="memoryd-pg-"))
        self.port = _free_port()
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_user:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self._as_user, str(self.bin / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{tool} failed: {done.stdout}\n{done.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.root / "data"), "-o", options,
            "-l", str(self.root / "log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        # immediate: connections are cut as by a crash or a network failure
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [*self._as_user, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"),
             "-m", "immediate", "stop"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


async def _assert_database_unavailable(call: object) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert reason_of(err.value) == "DATABASE_UNAVAILABLE"
    assert retry_delay(err.value) > 0


async def _health(srv: RunningServer) -> int:
    resp = await health_pb2_grpc.HealthStub(srv.channel).Check(health_pb2.HealthCheckRequest())
    return int(resp.status)


async def _remember(client: Client, text: str) -> memory_pb2.Memory:
    resp = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=text)),
        metadata=client.md(),
    )
    return resp.memory


@pytest.fixture
async def outage_server(
    make_server: MakeServer, private_pg: PrivatePostgres
) -> AsyncIterator[tuple[RunningServer, Client, ManualClock]]:
    clock = ManualClock()
    # keys stay verified across the test: the project cache's window is under test
    srv = await make_server(
        clock=clock,
        database_url=private_pg.url,
        key_cache_ttl_s=100_000.0,
        project_cache_stale_s=300.0,
    )
    project = await srv.project("app")
    app = srv.client(await srv.data_key(project))
    yield srv, app, clock


async def test_a_database_outage_answers_unavailable_serves_stale_settings_and_recovers(
    outage_server: tuple[RunningServer, Client, ManualClock],
    private_pg: PrivatePostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    srv, app, clock = outage_server
    owner = srv.owner
    await _remember(app, "before the outage")  # reads the project: t = 0
    assert await _health(srv) == SERVING
    caplog.clear()

    await asyncio.to_thread(private_pg.stop)
    for _ in range(5):
        await _assert_database_unavailable(
            owner.admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=owner.md())
        )

    async def not_serving() -> bool:
        return await _health(srv) == NOT_SERVING

    await wait_for(not_serving, within=15.0)

    clock.advance(10)  # past the 5 s project cache: stale settings are used
    for i in range(3):
        assert (await _remember(app, f"during the outage {i}")).id

    clock.advance(300)  # the settings are now 310 s old: past the window
    await _assert_database_unavailable(
        app.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="too late")),
            metadata=app.md(),
        )
    )

    await asyncio.to_thread(private_pg.start)
    projects = await owner.admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=owner.md())
    assert [p.name for p in projects.projects] == ["app"]
    assert (await _remember(app, "after the outage")).id

    async def serving() -> bool:
        return await _health(srv) == SERVING

    await wait_for(serving, within=15.0)

    database = [r for r in caplog.records if r.name == "memoryd.database"]
    assert [r.levelno for r in database] == [logging.ERROR, logging.WARNING], [
        r.getMessage() for r in database
    ]
    assert "unreachable" in database[0].getMessage()
    assert "reachable again" in database[1].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "no traceback during an outage"
    assert not [r for r in caplog.records if "INTERNAL" in r.getMessage()]


async def test_a_connection_dropped_in_the_middle_of_a_call_answers_unavailable(
    outage_server: tuple[RunningServer, Client, ManualClock],
    private_pg: PrivatePostgres,
) -> None:
    srv, _app, _clock = outage_server
    owner = srv.owner
    # hold a lock so that ListProjects is in the middle of its query when the
    # server goes away
    blocker = await asyncpg.connect(private_pg.dsn)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
    call = asyncio.ensure_future(
        owner.admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=owner.md())
    )

    async def waiting_on_the_lock() -> bool:
        n = await blocker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        )
        return bool(n)

    await wait_for(waiting_on_the_lock, within=10.0)
    await asyncio.to_thread(private_pg.stop)
    await _assert_database_unavailable(call)
    blocker.terminate()

    await asyncio.to_thread(private_pg.start)
    # the broken connection is not handed out again: the next calls succeed
    for _ in range(3):
        projects = await owner.admin.ListProjects(
            admin_pb2.ListProjectsRequest(), metadata=owner.md()
        )
        assert [p.name for p in projects.projects] == ["app"]
