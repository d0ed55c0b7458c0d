"""The `erasure` suite: EraseEndUser of one end user holding many memories
(and their change-log events) and knowledge documents (with their chunks),
on one `memoryd serve`: seconds from the call to the receipt."""

from __future__ import annotations

import time

from google.longrunning import operations_grpc_pb2, operations_pb2
from google.protobuf import duration_pb2
from grpc import aio

from benchmarks.harness import HIGH_LIMITS, ServerProcess
from memoryd.config import Settings
from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)

BATCH = 1000
# Each document: this many paragraphs of a few sentences (about ten chunks).
PARAGRAPHS = 10


async def run_erasure(settings: Settings, memories: int, documents: int) -> None:
    async with ServerProcess(settings, extra_env=HIGH_LIMITS) as server:
        channel = aio.insecure_channel(server.address)
        try:
            for line in await _erase(channel, server.owner_key, memories, documents):
                print(line, flush=True)
        finally:
            await channel.close(None)


async def _erase(channel: aio.Channel, owner_key: str, n: int, documents: int) -> list[str]:
    owner = (("x-api-key", owner_key),)
    project = await admin_pb2_grpc.AdminServiceStub(channel).CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="erasure")), metadata=owner
    )
    made = await keys_pb2_grpc.KeyServiceStub(channel).CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            project_id=project.id,
            environment_id=project.environments[0].id,
            name="bench",
            scopes=["memory:*", "knowledge:read", "knowledge:write", "ingest:read", "ingest:write"],
        ),
        metadata=owner,
    )
    md = (("x-api-key", made.secret), ("x-end-user-id", "ana"))
    memory = memory_pb2_grpc.MemoryServiceStub(channel)
    for start in range(0, n, BATCH):
        await memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(
                requests=[
                    memory_pb2.CreateMemoryRequest(
                        memory=memory_pb2.Memory(content=f"ana fact number {i}")
                    )
                    for i in range(start, min(n, start + BATCH))
                ]
            ),
            metadata=md,
        )
    ops = operations_grpc_pb2.OperationsStub(channel)
    knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
    ingests = [
        await knowledge.CreateDocument(
            knowledge_pb2.CreateDocumentRequest(
                text=_document(d), display_name=f"handbook-{d}", folder="handbooks"
            ),
            metadata=md,
        )
        for d in range(documents)
    ]
    for op in ingests:
        done = await _wait(ops, op, md)
        assert not done.HasField("error"), done.error
    began = time.perf_counter()
    op = await _wait(
        ops, await memory.EraseEndUser(memory_pb2.EraseEndUserRequest(), metadata=md), md
    )
    seconds = time.perf_counter() - began
    receipt = memory_pb2.ErasureReceipt()
    assert op.response.Unpack(receipt), op.error
    return [
        f"erasure: {receipt.memories} memories, {receipt.change_events} change events, "
        f"{receipt.documents} documents with {receipt.chunks} chunks of one end user erased "
        f"and verified={receipt.verified} in {seconds:.2f} s to the receipt "
        f"(vacuum: {receipt.vacuum})"
    ]


async def _wait(
    ops: operations_grpc_pb2.OperationsStub,
    op: operations_pb2.Operation,
    md: tuple[tuple[str, str], ...],
) -> operations_pb2.Operation:
    while not op.done:
        op = await ops.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=op.name, timeout=duration_pb2.Duration(seconds=10)
            ),
            metadata=md,
        )
    return op


def _document(d: int) -> str:
    """A Markdown handbook of `PARAGRAPHS` sections, distinct per `d`."""
    return "\n\n".join(
        f"## Section {p} of handbook {d}\n\n"
        + " ".join(
            f"Rule {p}.{s} of handbook {d}: the team reviews item {p * 7 + s} every week."
            for s in range(8)
        )
        for p in range(PARAGRAPHS)
    )
