"""EraseEndUser survives kill -9, with the installed `memoryd serve` on
PostgreSQL: the test holds a lock on the change log, so the erasure stops
deterministically at the first store that reads it (webhook deliveries),
after the operations and the memories were erased and checkpointed; the
server is killed there, the lock let go, and a new server takes the job
over (once its lease ran out) and completes it. The receipt counts each
store once: what the first attempt erased is not lost, nor counted again."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa
from google.longrunning import operations_grpc_pb2, operations_pb2
from google.protobuf import duration_pb2
from helpers.polling import wait_for
from helpers.served import Served
from sqlalchemy.ext.asyncio import create_async_engine

from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)

DONE_WITHIN_S = 120.0


class Api:
    def __init__(self, served: Served, key: str, end_user: str = "") -> None:
        assert served.channel is not None
        self.md: tuple[tuple[str, str], ...] = (("x-api-key", key),)
        if end_user:
            self.md += (("x-end-user-id", end_user),)
        self.memory = memory_pb2_grpc.MemoryServiceStub(served.channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(served.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(served.channel)
        self.operations = operations_grpc_pb2.OperationsStub(served.channel)


async def state(api: Api, name: str) -> operations_pb2.Operation:
    return await api.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=name), metadata=api.md
    )


async def test_kill_9_mid_erasure_completes_after_restart_counting_each_store_once(
    tmp_path: Path, pg_url: str
) -> None:
    options = ("--database-url", pg_url, "--job-lease-s", "3", "--job-poll-interval-s", "0.2")
    first = Served(tmp_path / "data", tmp_path, 0, *options)
    engine = create_async_engine(pg_url)
    try:
        owner_key = first.owner_key()
        assert owner_key
        owner = Api(first, owner_key)
        project = await owner.admin.CreateProject(
            admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="app")),
            metadata=owner.md,
        )
        created = await owner.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(
                project_id=project.id,
                environment_id=project.environments[0].id,
                name="runtime",
                scopes=["memory:*"],
            ),
            metadata=owner.md,
        )
        alice = Api(first, created.secret, "alice")
        await alice.memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(
                requests=[
                    memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=f"fact {i}"))
                    for i in range(300)
                ]
            ),
            metadata=alice.md,
        )
        async with engine.connect() as lock:
            tx = await lock.begin()
            await lock.execute(sa.text("LOCK TABLE change_events IN ACCESS EXCLUSIVE MODE"))
            op = await alice.memory.EraseEndUser(
                memory_pb2.EraseEndUserRequest(), metadata=alice.md
            )

            async def stopped_at_the_change_log() -> bool:
                meta = memory_pb2.EraseEndUserMetadata()
                (await state(alice, op.name)).metadata.Unpack(meta)
                return "memories" in meta.stores_done

            await wait_for(stopped_at_the_change_log, within=DONE_WITHIN_S)
            first.kill()  # SIGKILL mid-erasure: the lease stays with the dead process
            await tx.rollback()
    finally:
        first.kill()
        await engine.dispose()

    second = Served(tmp_path / "data", tmp_path, 1, *options, "--bootstrap", "false")
    try:
        alice = Api(second, created.secret, "alice")
        deadline = time.monotonic() + DONE_WITHIN_S
        while not (done := await state(alice, op.name)).done:
            assert time.monotonic() < deadline, "the erasure did not complete after restart"
            await alice.operations.WaitOperation(
                operations_pb2.WaitOperationRequest(
                    name=op.name, timeout=duration_pb2.Duration(seconds=5)
                ),
                metadata=alice.md,
            )
        receipt = memory_pb2.ErasureReceipt()
        assert done.response.Unpack(receipt), done.error
        meta = memory_pb2.EraseEndUserMetadata()
        done.metadata.Unpack(meta)
        assert meta.attempts == 2
        assert receipt.verified
        assert receipt.memories == 300
        assert receipt.change_events == 300
        listed = await alice.memory.ListMemories(
            memory_pb2.ListMemoriesRequest(page_size=10), metadata=alice.md
        )
        assert list(listed.memories) == []
    finally:
        second.kill()
