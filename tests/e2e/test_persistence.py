"""The installed `memoryd serve` keeps what it acknowledged: after a clean stop
(SIGTERM) everything is there on the next start on the same data directory,
and after `kill -9` every write that was acknowledged is there too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from helpers.served import Served

from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)

MEMORYD = Path(sys.executable).parent / "memoryd"


class Api:
    def __init__(self, served: Served, key: str, end_user: str = "") -> None:
        self.md: tuple[tuple[str, str], ...] = (("x-api-key", key),)
        if end_user:
            self.md += (("x-end-user-id", end_user),)
        self.memory = memory_pb2_grpc.MemoryServiceStub(served.channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(served.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(served.channel)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []
    data_dir = tmp_path / "data"

    def start() -> Served:
        served = Served(data_dir, tmp_path, len(started))
        started.append(served)
        return served

    yield start
    for s in started:
        s.kill()


async def export_all(api: Api) -> list[tuple[Any, ...]]:
    """Every memory as a comparable tuple, with its vector, in id order."""
    stream = api.memory.ExportMemories(
        memory_pb2.ExportMemoriesRequest(include_embeddings=True), metadata=api.md
    )
    out = [
        (
            m.id,
            m.content,
            json_format.MessageToJson(m.metadata, sort_keys=True),
            tuple(m.tags),
            m.end_user_id,
            m.revision,
            m.create_time.ToJsonString(),
            m.update_time.ToJsonString(),
            tuple(round(x, 6) for x in m.embedding),
        )
        async for m in stream
    ]
    return sorted(out)


async def revisions(api: Api, mid: str) -> list[tuple[int, str]]:
    resp = await api.memory.ListMemoryRevisions(
        memory_pb2.ListMemoryRevisionsRequest(id=mid), metadata=api.md
    )
    return [(r.revision, r.content) for r in resp.revisions]


async def writer_key(owner: Api, project_name: str) -> str:
    """The secret of a new `memory:*` key for a new project's first environment."""
    project = await owner.admin.CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name=project_name)),
        metadata=owner.md,
    )
    made = await owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            name="writer",
            project_id=project.id,
            environment_id=project.environments[0].id,
            scopes=["memory:*"],
        ),
        metadata=owner.md,
    )
    return made.secret


async def write_some(api: Api, tag: str) -> dict[str, str]:
    """A mix of every kind of write; answers the ids of what it left behind."""
    created: dict[str, str] = {}
    for i in range(5):
        m = memory_pb2.Memory(content=f"{tag} single {i}", tags=[tag])
        m.metadata.update({"i": i, "tag": tag, "ok": True})
        resp = await api.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=m), metadata=api.md
        )
        created[f"single-{i}"] = resp.memory.id
    batch = await api.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(
                    memory=memory_pb2.Memory(content=f"{tag} batch {i}", tags=[tag])
                )
                for i in range(40)
            ]
        ),
        metadata=api.md,
    )
    assert batch.succeeded_count == 40
    for i, r in enumerate(batch.results):
        created[f"batch-{i}"] = r.memory.id
    req = memory_pb2.UpdateMemoryRequest(
        memory=memory_pb2.Memory(id=created["single-0"], content=f"{tag} single 0, edited")
    )
    req.update_mask.paths.append("content")
    await api.memory.UpdateMemory(req, metadata=api.md)
    await api.memory.DeleteMemory(
        memory_pb2.DeleteMemoryRequest(id=created.pop("single-1")), metadata=api.md
    )
    purged = await api.memory.PurgeMemories(
        memory_pb2.PurgeMemoriesRequest(
            filter=memory_pb2.MemoryFilter(
                must=[memory_pb2.Condition(field="metadata.i", range=memory_pb2.NumberRange(gte=3))]
            )
        ),
        metadata=api.md,
    )
    assert purged.purged_count == 2
    created.pop("single-3")
    created.pop("single-4")
    return created


async def test_everything_survives_a_clean_stop_and_acknowledged_writes_survive_kill_9(
    servers: Any,
) -> None:
    first = servers()
    owner_key = first.owner_key()
    assert owner_key, "the first start prints the owner key"
    key = await writer_key(Api(first, owner_key), "persist")
    api = Api(first, key)
    ids = await write_some(api, "before")
    ana = Api(first, key, "ana")
    ana_id = (
        await ana.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="ana's own")),
            metadata=ana.md,
        )
    ).memory.id
    state = await export_all(api)
    assert len(state) == len(ids) + 1 == 43
    history = await revisions(api, ids["single-0"])
    assert history == [(1, "before single 0")]
    # while it runs, no other server may open the same data directory
    with pytest.raises(AssertionError, match="open in another process"):
        servers()

    # --- a clean stop, then a start on the same data directory ---------------------
    assert await first.stop(signal.SIGTERM) == 0
    second = servers()
    assert second.owner_key() is None, "an existing data directory is not bootstrapped again"
    api, ana = Api(second, key), Api(second, key, "ana")
    assert await export_all(api) == state
    assert await revisions(api, ids["single-0"]) == history
    page = await ana.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=ana.md)
    assert [m.id for m in page.memories] == [ana_id]
    found = await api.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(
            query="before single 0, edited", top_k=5, mode=memory_pb2.SEMANTIC
        ),
        metadata=api.md,
    )
    assert ids["single-0"] in [r.memory.id for r in found.results if r.score > 0.999]
    who = await Api(second, owner_key).keys.WhoAmI(
        keys_pb2.WhoAmIRequest(), metadata=(("x-api-key", owner_key),)
    )
    assert list(who.scopes) == ["*"]

    # --- acknowledged writes, then kill -9 at once ------------------------------------
    more = await write_some(api, "after")
    req = memory_pb2.UpdateMemoryRequest(
        memory=memory_pb2.Memory(id=ids["batch-0"], tags=["retagged"])
    )
    req.update_mask.paths.append("tags")
    await api.memory.UpdateMemory(req, metadata=api.md)
    await api.memory.DeleteMemory(
        memory_pb2.DeleteMemoryRequest(id=ids.pop("batch-1")), metadata=api.md
    )
    acknowledged = await export_all(api)
    assert len(acknowledged) == len(ids) + len(more) + 1
    second.proc.kill()  # SIGKILL: no shutdown, no flush
    assert second.proc.wait(10) == -signal.SIGKILL

    third = servers()
    api = Api(third, key)
    assert await export_all(api) == acknowledged
    assert await revisions(api, more["single-0"]) == [(1, "after single 0")]
    assert await revisions(api, ids["batch-0"]) == [(1, "before batch 0")]
    assert await third.stop(signal.SIGTERM) == 0


async def test_a_failed_first_start_keeps_the_owner_key_for_the_next_start(
    tmp_path: Path,
) -> None:
    """Nothing is bootstrapped before the port, the model and the stores are
    in hand: after a first start that fails, the next one prints the key."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORYD_")}
    base = [str(MEMORYD), "serve", "--data-dir", str(data_dir), "--log-level", "WARNING"]
    hashing = ["--embedding-provider", "hashing", "--embedding-dimension", "64"]

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        failed = await asyncio.to_thread(serve, *hashing, "--port", str(busy.getsockname()[1]))
    assert failed.returncode == 1 and "ms_org_" not in failed.stdout, failed.stderr
    no_model = str(tmp_path / "no-model")
    bad_model = await asyncio.to_thread(serve, "--port", "0", "--embedding-model-dir", no_model)
    assert bad_model.returncode == 1 and "ms_org_" not in bad_model.stdout, bad_model.stderr

    served = Served(data_dir, tmp_path, 1)
    try:
        key = served.owner_key()
        assert key is not None, served.out_path.read_text()
        owner = Api(served, key)
        projects = await owner.admin.ListProjects(
            admin_pb2.ListProjectsRequest(), metadata=owner.md
        )
        assert list(projects.projects) == []
    finally:
        await served.channel.close()
        served.kill()


async def test_a_compacted_data_directory_keeps_everything_and_takes_writes(
    servers: Any, tmp_path: Path
) -> None:
    """`memoryd compact-vectors` between two runs: it refuses while the server
    runs, seals the stopped server's store, and the next start reads every
    memory, revision and search as before, and keeps what it writes next
    (to sealed memories too) across kill -9."""
    first = servers()
    key = await writer_key(Api(first, first.owner_key() or ""), "compact")
    api = Api(first, key)
    ids = await write_some(api, "before")
    state = await export_all(api)
    data_dir = tmp_path / "data"
    compact = [
        str(MEMORYD),
        "compact-vectors",
        "--data-dir",
        str(data_dir),
        *("--embedding-provider", "hashing", "--embedding-dimension", "64"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORYD_")}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            compact, capture_output=True, text=True, env=env, timeout=120, check=False
        )

    busy = await asyncio.to_thread(run)
    assert busy.returncode == 1, busy.stdout
    assert "open in another process" in busy.stderr and "Traceback" not in busy.stderr

    assert await first.stop(signal.SIGTERM) == 0
    done = await asyncio.to_thread(run)
    assert done.returncode == 0, done.stderr
    assert f"vectors: {len(state)} points in" in done.stdout, done.stdout

    second = servers()
    api = Api(second, key)
    assert await export_all(api) == state
    assert await revisions(api, ids["single-0"]) == [(1, "before single 0")]
    found = await api.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query="before batch 7", top_k=3),
        metadata=api.md,
    )
    assert found.results[0].memory.id == ids["batch-7"]
    more = await write_some(api, "after")  # updates and deletes sealed memories too
    req = memory_pb2.UpdateMemoryRequest(
        memory=memory_pb2.Memory(id=ids["batch-0"], content="before batch 0, edited")
    )
    req.update_mask.paths.append("content")
    await api.memory.UpdateMemory(req, metadata=api.md)
    await api.memory.DeleteMemory(
        memory_pb2.DeleteMemoryRequest(id=ids.pop("batch-1")), metadata=api.md
    )
    acknowledged = await export_all(api)
    assert len(acknowledged) == len(ids) + len(more)
    second.proc.kill()
    assert second.proc.wait(10) == -signal.SIGKILL

    third = servers()
    api = Api(third, key)
    assert await export_all(api) == acknowledged
    assert await revisions(api, ids["batch-0"]) == [(1, "before batch 0")]  # the one before
    assert "before batch 0, edited" in {m[1] for m in acknowledged}
    assert await third.stop(signal.SIGTERM) == 0
