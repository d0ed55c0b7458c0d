"""Start-up over an existing vector store: the store opens while the rest of
the server (the embedding model above all) is built, and a start that fails
on either side leaves nothing behind: no engine process, no lock, no store
marked for a model that never loaded. `memoryd serve` begins that engine
even before it imports the server (`HeadStart`): the store adopts it when
it matches, and a start that does not leaves no engine either.

The engine runs in its own process here, as in the server's default.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers.real_model import real_model_dir as model_dir
from helpers.servers import MakeServer, RunningServer, server_settings, start_server

from memoryd import cli
from memoryd.domain.errors import FailedPrecondition
from memoryd.storage.vectors.edge_backends import HeadStart
from memoryd.v1 import memory_pb2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:  # reaped meanwhile
        return False


def _engines() -> list[int]:
    """This process's engine processes that are still alive."""
    me = str(os.getpid())
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"\nPPid:\t{me}\n" in status and b"edge_child" in cmdline and _alive(int(proc.name)):
            found.append(int(proc.name))
    return found


async def _remember(make_server: MakeServer, data_dir: Path, **settings: object) -> tuple[int, str]:
    """Starts a server on `data_dir`, stores one memory, stops it; answers
    its engine's process id and the key that stored the memory."""
    server = await make_server(str(data_dir), vector_engine_process=True, **settings)
    project = await server.project()
    client = server.client(await server.data_key(project))
    await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="Ana drinks tea")),
        metadata=client.md(),
    )
    pid = server.app.vectors.engine_pid  # type: ignore[attr-defined]
    assert pid is not None
    await server.stop()
    return int(pid), client.key


async def _finds_anas_memory(server: RunningServer, key: str) -> None:
    client = server.client(key)
    listed = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(), metadata=client.md()
    )
    assert [m.content for m in listed.memories] == ["Ana drinks tea"]


async def _refused_and_released(
    make_server: MakeServer, data_dir: Path, refused: FailedPrecondition
) -> None:
    """The start was refused for another model and left no engine: the
    right model opens the store at once."""
    assert refused.reason == "EMBEDDING_MODEL_MISMATCH"
    assert _engines() == []
    again = await make_server(str(data_dir), vector_engine_process=True)
    assert again.app.vectors.engine_pid is not None  # type: ignore[attr-defined]


async def test_a_restart_opens_the_store_for_its_model_and_finds_its_memories(
    make_server: MakeServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first_engine, key = await _remember(make_server, data_dir)
    assert not _alive(first_engine)
    assert _engines() == []

    again = await make_server(str(data_dir), vector_engine_process=True)
    await _finds_anas_memory(again, key)


async def test_a_restart_for_another_model_is_refused_and_releases_the_store(
    make_server: MakeServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    await _remember(make_server, data_dir)

    with pytest.raises(FailedPrecondition) as refused:
        await start_server(str(data_dir), vector_engine_process=True, embedding_dimension=32)
    await _refused_and_released(make_server, data_dir, refused.value)


async def test_a_model_that_fails_to_load_stops_the_store_opening_beside_it(
    make_server: MakeServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    real = {"embedding_provider": "fastembed", "embedding_dimension": 384}
    await _remember(make_server, data_dir, embedding_model_dir=str(model_dir()), **real)

    # the store (made for this model) starts opening, then the model fails
    # to load: its files are all there, but model.onnx is damaged
    damaged = tmp_path / "damaged-model"
    shutil.copytree(model_dir(), damaged)
    (damaged / "model.onnx").write_bytes(b"not a model" * 1000)
    with pytest.raises(Exception, match="INVALID_PROTOBUF"):
        await start_server(
            str(data_dir), vector_engine_process=True, embedding_model_dir=str(damaged), **real
        )
    # its engine was stopped and let go of the directory
    assert _engines() == []
    again = await make_server(
        str(data_dir), vector_engine_process=True, embedding_model_dir=str(model_dir()), **real
    )
    assert again.app.vectors.engine_pid is not None  # type: ignore[attr-defined]


async def test_a_model_that_fails_to_load_leaves_a_new_data_dir_unmarked(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    # the model loads (a while), then is refused: it makes 384-d vectors
    with pytest.raises(ValueError, match="384-d vectors, but the configured dimension is 128"):
        await start_server(
            str(data_dir),
            vector_engine_process=True,
            embedding_provider="fastembed",
            embedding_dimension=128,
            embedding_model_dir=str(model_dir()),
        )
    # no store was made for a model that never loaded: the next start may
    # choose any model
    assert not (data_dir / "vectors" / "memoryd.json").exists()
    assert _engines() == []


# --- the head start of `memoryd serve` ----------------------------------------------------


async def _head_start(data_dir: Path, tmp_path: Path, **overrides: object) -> HeadStart:
    """What `memoryd serve` begins before importing the server."""
    settings = server_settings(
        str(data_dir), vector_engine_process=True, kek_file=str(tmp_path / "kek.key"), **overrides
    )
    head = await cli._engine_head_start(settings)
    assert head is not None and head.pid is not None and _alive(head.pid)
    return head


async def test_the_store_adopts_the_engine_begun_before_the_server_was_built(
    make_server: MakeServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    _, key = await _remember(make_server, data_dir)
    head = await _head_start(data_dir, tmp_path)
    pid = head.pid

    server = await make_server(str(data_dir), vector_engine_process=True, engine_head_start=head)
    assert server.app.vectors.engine_pid == pid  # type: ignore[attr-defined]
    await head.discard()  # what `serve` does after the build: the store has it
    assert pid is not None and _alive(pid)
    await _finds_anas_memory(server, key)


async def test_an_engine_begun_for_another_model_fails_the_start_and_is_gone(
    make_server: MakeServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    await _remember(make_server, data_dir)
    head = await _head_start(data_dir, tmp_path, embedding_dimension=32)

    with pytest.raises(FailedPrecondition) as refused:
        await start_server(
            str(data_dir),
            vector_engine_process=True,
            embedding_dimension=32,
            engine_head_start=head,
        )
    await head.discard()  # what `serve` does after a failed build
    await _refused_and_released(make_server, data_dir, refused.value)


async def test_an_engine_begun_with_other_options_is_discarded_for_a_new_one(
    make_server: MakeServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    await _remember(make_server, data_dir)
    head = await _head_start(data_dir, tmp_path, vector_sync_writes=True)
    pid = head.pid
    assert pid is not None

    server = await make_server(str(data_dir), vector_engine_process=True, engine_head_start=head)
    assert server.app.vectors.engine_pid not in (None, pid)  # type: ignore[attr-defined]
    assert not _alive(pid)


async def test_an_engine_no_build_adopts_is_stopped(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = server_settings(str(data_dir), vector_engine_process=True)
    assert await cli._engine_head_start(settings) is None  # no store yet: nothing to open
    await (await start_server(str(data_dir), vector_engine_process=True)).stop()
    head = await _head_start(data_dir, tmp_path)
    pid = head.pid
    assert pid is not None
    await head.discard()
    assert not _alive(pid) and _engines() == []
    threaded = server_settings(str(data_dir), vector_engine_process=False)
    assert await cli._engine_head_start(threaded) is None
