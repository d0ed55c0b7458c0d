"""`memoryd serve --workers 2` (the installed command) on the embedded store:

- connections spread over both workers (seen from /proc: which worker
  process holds each accepted connection), and a memory written through
  one worker is read and found through the other;
- a WatchMemories stream on one worker sees a write made through the other;
- SIGTERM: exit status 0, and no worker or engine process is left;
- kill -9 of a worker: the parent starts another, the server keeps answering.

Waits are bounded (a busy machine only makes them take longer).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from grpc import aio
from helpers.served import Served
from helpers.stores import REDIS_URL
from test_operations_durability import data_key
from test_watch_durability import take

from memoryd.v1 import admin_pb2_grpc, keys_pb2_grpc, memory_pb2, memory_pb2_grpc

WITHIN_S = 30.0


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


def workers_of(served: Served) -> list[int]:
    """The parent's worker processes (not its engine hosts)."""
    out = []
    for child in children(served.proc.pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"memoryd.cli" in cmdline:
            out.append(child)
    return out


def accepted_by(pids: list[int], port: int) -> dict[int, int]:
    """How many established connections on `port` each process holds."""
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except FileNotFoundError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    held = dict.fromkeys(pids, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                held[inodes[fields[9]]] += 1
    return held


class Client:
    def __init__(self, channel: aio.Channel, key: str) -> None:
        self.md: tuple[tuple[str, str], ...] = (("x-api-key", key),)
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)


async def spread(served: Served, key: str) -> dict[int, Client]:
    """A client on each worker: new connections until every worker holds one
    (the kernel hashes each to a worker; 64 all on one has odds 2^-63)."""
    on: dict[int, Client] = {}
    pids = workers_of(served)
    for _ in range(64):
        # a subchannel pool of its own: channels to one target otherwise share a connection
        channel = aio.insecure_channel(
            f"127.0.0.1:{served.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        client = Client(channel, key)
        before = accepted_by(pids, served.port)
        await client.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=client.md)
        after = accepted_by(pids, served.port)
        grew = [pid for pid in pids if after[pid] > before[pid]]
        if len(grew) == 1 and grew[0] not in on:
            on[grew[0]] = client
        else:
            await channel.close()
        if len(on) == len(pids):
            return on
    raise AssertionError(f"connections never reached every worker: {on.keys()} of {pids}")


def start(tmp_path: Path) -> Served:
    return Served(tmp_path / "data", tmp_path, 0, "--workers", "2", "--redis-url", REDIS_URL)


async def until_two_workers(served: Served, listening: int = 2) -> list[int]:
    """The two workers, once `listening` of them have said they listen."""
    async with asyncio.timeout(WITHIN_S):
        while True:
            pids = workers_of(served)
            said = served.err_path.read_text().count("memoryd listening on")
            if len(pids) == 2 and said >= listening:
                return pids
            await asyncio.sleep(0.1)


def gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


async def test_two_workers_share_one_store_and_stop_cleanly(tmp_path: Path) -> None:
    served = start(tmp_path)
    try:
        owner_key = served.owner_key()
        assert owner_key
        assert served.channel is not None
        key = await data_key(_Owner(served.channel, owner_key))
        await until_two_workers(served)
        a, b = (await spread(served, key)).values()

        watch_b = b.memory.WatchMemories(
            memory_pb2.WatchMemoriesRequest(start_time={"seconds": 946684800}), metadata=b.md
        )
        created = await a.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(content="the deploy runs on fridays")
            ),
            metadata=a.md,
        )
        got = await b.memory.GetMemory(
            memory_pb2.GetMemoryRequest(id=created.memory.id), metadata=b.md
        )
        assert got.content == "the deploy runs on fridays"
        found = await b.memory.SearchMemories(
            memory_pb2.SearchMemoriesRequest(query="when does the deploy run"), metadata=b.md
        )
        assert [r.memory.id for r in found.results] == [created.memory.id]
        [event] = await take(watch_b, 1)
        assert event.memory_id == created.memory.id
        watch_b.cancel()

        everyone = children(served.proc.pid)
        assert len(everyone) == 4  # two workers, the two stores' engine hosts
        assert await served.stop(within_s=60) == 0
        assert gone(everyone)
    finally:
        served.kill()


async def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    served = start(tmp_path)
    try:
        owner_key = served.owner_key()
        assert owner_key and served.channel is not None
        owner = _Owner(served.channel, owner_key)
        key = await data_key(owner)
        first = await until_two_workers(served)
        os.kill(first[1], signal.SIGKILL)
        await until_two_workers(served, listening=3)  # the replacement listens too
        assert gone([first[1]])
        assert first[0] in workers_of(served)
        on = await spread(served, key)
        for client in on.values():  # both answer, the new one included
            await client.memory.CreateMemory(
                memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="still here")),
                metadata=client.md,
            )
        listed = await owner_list(on, key)
        assert len(listed) == 2
        assert await served.stop(within_s=60) == 0
    finally:
        served.kill()


async def owner_list(on: dict[int, Client], key: str) -> list[memory_pb2.Memory]:
    client = next(iter(on.values()))
    resp = await client.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=client.md)
    return list(resp.memories)


class _Owner(Client):
    """What `data_key` needs: admin and keys stubs with the owner key."""
