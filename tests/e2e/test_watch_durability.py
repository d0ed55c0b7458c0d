"""WatchMemories with the installed `memoryd serve`:

- kill -9 right after acknowledged writes: after a restart on the same data
  directory, a watcher resuming from a token of before the writes gets
  every one of them, in order (an acknowledged change is in the log);
- two `memoryd serve` processes on one PostgreSQL database: a watcher on
  one sees the writes made through the other.

Waits are bounded (a busy machine only makes them take longer); no
assertion depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers.served import Served
from test_operations_durability import Api, data_key

from memoryd.v1 import memory_pb2

WITHIN_S = 30.0


async def take(stream: object, n: int) -> list[memory_pb2.MemoryEvent]:
    out: list[memory_pb2.MemoryEvent] = []
    async with asyncio.timeout(WITHIN_S):
        while len(out) < n:
            out.append(await stream.read())  # type: ignore[attr-defined]
    return out


async def create(api: Api, content: str) -> memory_pb2.Memory:
    resp = await api.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content)), metadata=api.md
    )
    return resp.memory


async def test_kill_9_after_acknowledged_writes_a_resumed_watcher_gets_them(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = Served(data, tmp_path, 0)
    try:
        owner_key = first.owner_key()
        assert owner_key
        key = await data_key(Api(first, owner_key))
        api = Api(first, key)
        stream = api.memory.WatchMemories(
            memory_pb2.WatchMemoriesRequest(start_time={"seconds": 946684800}), metadata=api.md
        )
        before = await create(api, "before")
        [seen] = await take(stream, 1)
        assert seen.memory_id == before.id
        acknowledged = [await create(api, f"acknowledged {i}") for i in range(4)]
    finally:
        first.kill()  # SIGKILL right after the last acknowledgement

    second = Served(data, tmp_path, 1)
    try:
        api = Api(second, key)
        resumed = api.memory.WatchMemories(
            memory_pb2.WatchMemoriesRequest(resume_token=seen.resume_token), metadata=api.md
        )
        got = await take(resumed, 4)
        assert [(e.type, e.memory_id) for e in got] == [
            (memory_pb2.MemoryEvent.CREATED, m.id) for m in acknowledged
        ]
        resumed.cancel()
    finally:
        second.kill()


async def test_a_watcher_on_one_server_sees_writes_on_another_of_the_same_database(
    tmp_path: Path, pg_url: str
) -> None:
    # replicas of one deployment share the key-encryption key file
    common = ("--database-url", pg_url, "--kek-file", str(tmp_path / "kek.key"))
    a = Served(tmp_path / "a", tmp_path, 0, *common)
    b = Served(tmp_path / "b", tmp_path, 1, *common, "--bootstrap", "false")
    try:
        owner_key = a.owner_key()
        assert owner_key
        key = await data_key(Api(a, owner_key))
        on_a, on_b = Api(a, key), Api(b, key)
        watch_b = on_b.memory.WatchMemories(
            memory_pb2.WatchMemoriesRequest(start_time={"seconds": 946684800}), metadata=on_b.md
        )
        watch_a = on_a.memory.WatchMemories(
            memory_pb2.WatchMemoriesRequest(start_time={"seconds": 946684800}), metadata=on_a.md
        )
        written_on_a = await create(on_a, "written on a")
        [event] = await take(watch_b, 1)
        assert (event.memory_id, event.memory.content) == (written_on_a.id, "written on a")
        written_on_b = await create(on_b, "written on b")
        got = await take(watch_a, 2)
        assert [e.memory_id for e in got] == [written_on_a.id, written_on_b.id]
        [event] = await take(watch_b, 1)
        assert event.memory_id == written_on_b.id
        watch_a.cancel()
        watch_b.cancel()
    finally:
        a.kill()
        b.kill()
