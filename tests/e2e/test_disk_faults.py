"""A full disk under the installed `memoryd serve` (issue 8, fault 1).

The data directory lives on a small tmpfs this test mounts (it needs root, or
CAP_SYS_ADMIN, and skips, saying so, where mounting is not permitted). The
file system is filled with a plain file while the server runs: before the
free-space floor existed, the first write after that died with SIGBUS (the
engine's sparse memory-mapped files cannot get a page), logging nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.errors import reason_of
from helpers.served import Served

from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)

FS_MB = 160
FLOOR_MB = 32


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of FS_MB MiB, unmounted afterwards."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_MB}m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN), so a full disk "
            f"cannot be made: {done.stderr.strip()}"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def serve(small_fs: Path, tmp_path: Path) -> Iterator[object]:
    started: list[Served] = []

    def start() -> Served:
        served = Served(
            small_fs / "data",
            tmp_path,
            len(started),
            "--min-free-disk-mb",
            str(FLOOR_MB),
            wait=False,
        )
        started.append(served)
        return served

    yield start
    for s in started:
        s.kill()


def fill(fs: Path) -> Path:
    """Writes one file until the file system has no byte left."""
    path = fs / "filler"
    chunk = b"\0" * (1024 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            try:
                if os.write(fd, chunk) == 0:
                    break
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    assert os.statvfs(fs).f_bavail == 0
    return path


async def health_of(channel: aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return resp.status


async def eventually_health(channel: aio.Channel, want: int) -> None:
    """Health reaches `want` (the server probes every 5 s, or at once on a change)."""
    deadline = time.monotonic() + 20
    while await health_of(channel) != want:
        assert time.monotonic() < deadline, f"health did not become {want}"
        await asyncio.sleep(0.2)


async def test_full_disk_refuses_writes_keeps_reads_and_health_then_recovers_losing_nothing(
    serve: object, small_fs: Path
) -> None:
    start = serve  # type: ignore[assignment]
    first: Served = start()  # type: ignore[operator]
    first.wait_listening()
    assert first.channel is not None
    owner_key = first.owner_key()
    assert owner_key is not None
    owner = (("x-api-key", owner_key),)
    admin = admin_pb2_grpc.AdminServiceStub(first.channel)
    project = await admin.CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="full")), metadata=owner
    )
    key = await keys_pb2_grpc.KeyServiceStub(first.channel).CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            name="w",
            project_id=project.id,
            environment_id=project.environments[0].id,
            scopes=["memory:*"],
        ),
        metadata=owner,
    )
    md = (("x-api-key", key.secret),)
    memory = memory_pb2_grpc.MemoryServiceStub(first.channel)

    async def create(content: str) -> str:
        resp = await memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content)),
            metadata=md,
            timeout=10,
        )
        return resp.memory.id

    acknowledged = {await create(f"before the disk filled {i}") for i in range(5)}

    # --- the disk fills up: writes refused, reads served, health says so -----------
    filler = fill(small_fs)
    for attempt in range(3):
        with pytest.raises(aio.AioRpcError) as refused:
            await create(f"while full {attempt}")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason_of(refused.value) == "DISK_FULL"
        details = refused.value.details() or ""
        assert str(small_fs / "data") in details and "MiB free" in details, details
    update = memory_pb2.UpdateMemoryRequest(
        memory=memory_pb2.Memory(id=next(iter(acknowledged)), content="edited while full")
    )
    update.update_mask.paths.append("content")
    with pytest.raises(aio.AioRpcError) as refused:
        await memory.UpdateMemory(update, metadata=md, timeout=10)
    assert reason_of(refused.value) == "DISK_FULL"
    assert first.proc.poll() is None, "the server is still running"

    listed = await memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=md, timeout=10)
    assert {m.id for m in listed.memories} == acknowledged
    found = await memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query="before the disk filled 3", top_k=5),
        metadata=md,
        timeout=10,
    )
    assert {r.memory.id for r in found.results} == acknowledged
    await eventually_health(first.channel, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await health_of(first.channel, "liveness") == health_pb2.HealthCheckResponse.SERVING

    # --- space is freed: writes work again ----------------------------------------------
    filler.unlink()
    await eventually_health(first.channel, health_pb2.HealthCheckResponse.SERVING)
    acknowledged |= {await create(f"after space was freed {i}") for i in range(5)}
    assert await first.stop(within_s=30) == 0
    err_text = first.err_path.read_text()
    assert "Traceback" not in err_text, err_text[: err_text.find("Traceback") + 2000]

    # --- a restart has every acknowledged write ---------------------------------------------
    second: Served = start()  # type: ignore[operator]
    second.wait_listening()
    assert second.channel is not None
    listed = await memory_pb2_grpc.MemoryServiceStub(second.channel).ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=100), metadata=md, timeout=10
    )
    assert {m.id for m in listed.memories} == acknowledged
    assert await second.stop(within_s=30) == 0

    # --- start-up on a full disk: exit 1, one line ---------------------------------------
    fill(small_fs)
    third: Served = start()  # type: ignore[operator]
    assert await asyncio.to_thread(third.proc.wait, 30) == 1
    lines = third.err_path.read_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert "cannot start" in lines[0] and str(small_fs / "data") in lines[0], lines[0]
    assert "full" in lines[0]
    with contextlib.suppress(FileNotFoundError):
        (small_fs / "filler").unlink()
