"""Document events on a real server, delivered to real endpoints that check
each signature with `standardwebhooks`: DOCUMENT_READY when an ingest
succeeds, DOCUMENT_FAILED when it fails, DOCUMENT_DELETED on deletion; only
to webhooks that name them and reach the document's end user; never to
another environment's webhooks, nor to a webhook naming no types (a
receiver syncing memories is not sent documents)."""

from __future__ import annotations

from typing import Any

from google.longrunning import operations_pb2
from google.protobuf import duration_pb2
from helpers.servers import Client, MakeServer
from helpers.webhook_receiver import Receiver
from test_alerts import FAST, _create, _settled

from memoryd.v1 import knowledge_pb2, knowledge_pb2_grpc
from memoryd.v1.webhooks_pb2 import Webhook

SCOPES = (
    "memory:read",
    "webhook:read",
    "webhook:write",
    "knowledge:read",
    "knowledge:write",
    "knowledge:delete",
    "ingest:read",
    "ingest:write",
)
DOCUMENTS = [Webhook.DOCUMENT_READY, Webhook.DOCUMENT_FAILED, Webhook.DOCUMENT_DELETED]


async def _ingest(c: Client, **fields: Any) -> operations_pb2.Operation:
    k = knowledge_pb2_grpc.KnowledgeServiceStub(c.channel)
    op = await k.CreateDocument(knowledge_pb2.CreateDocumentRequest(**fields), metadata=c.md())
    return await c.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(
            name=op.name, timeout=duration_pb2.Duration(seconds=30)
        ),
        metadata=c.md(),
    )


async def test_document_events_reach_the_webhooks_that_name_them(make_server: MakeServer) -> None:
    server = await make_server(**FAST)
    project = await server.project("app")
    key = await server.data_key(project, SCOPES)
    ana, bob = server.client(key, "ana"), server.client(key, "bob")
    other = server.client(await server.data_key(await server.project("other"), SCOPES), "ana")
    with Receiver() as hook, Receiver() as plain_hook, Receiver() as bobs, Receiver() as foreign:
        docs = await _create(ana, hook.url, event_types=DOCUMENTS)
        plain = await _create(ana, plain_hook.url)
        bob_hook = await _create(bob, bobs.url, event_types=DOCUMENTS)
        await _create(other, foreign.url, event_types=DOCUMENTS)

        done = await _ingest(ana, text="The roof terrace closes at sunset.", folder="rules")
        doc = knowledge_pb2.Document()
        assert done.response.Unpack(doc)
        failed = await _ingest(ana, text="{not json", mime_type="application/json")
        assert failed.WhichOneof("result") == "error"
        await knowledge_pb2_grpc.KnowledgeServiceStub(ana.channel).DeleteDocument(
            knowledge_pb2.DeleteDocumentRequest(name=doc.name), metadata=ana.md()
        )
        bodies = await hook.wait_verified(docs.secret, 3)
        await _settled(server)

    # deliveries are sent in parallel: in order per document, not across them
    by_type = {b["type"]: b["data"] for b in bodies}
    assert sorted(by_type) == ["document.deleted", "document.failed", "document.ready"]
    ready = by_type["document.ready"]
    assert ready["document"] == doc.name and ready["folder"] == "rules"
    assert ready["state"] == "READY" and ready["chunk_count"] == doc.chunk_count
    assert ready["end_user_id"] == "ana" and ready["operation_id"] == done.name.split("/")[1]
    assert by_type["document.failed"]["state"] == "FAILED" and by_type["document.failed"]["error"]
    assert by_type["document.deleted"]["document_id"] == doc.id
    assert len(hook.requests) == 3
    assert not plain_hook.verified(plain.secret)  # names no types: memory events only
    assert not bobs.verified(bob_hook.secret)  # another end user's documents
    assert not foreign.requests  # another project's environment


async def test_a_watcher_that_names_document_events_gets_them(make_server: MakeServer) -> None:
    import asyncio

    import grpc
    from helpers.errors import refused

    from memoryd.v1 import memory_pb2

    server = await make_server()
    project = await server.project("app")
    ana = server.client(await server.data_key(project, (*SCOPES, "memory:add")), "ana")
    named = [
        memory_pb2.MemoryEvent.DOCUMENT_READY,
        memory_pb2.MemoryEvent.DOCUMENT_DELETED,
        memory_pb2.MemoryEvent.CREATED,
    ]
    stream = ana.memory.WatchMemories(
        memory_pb2.WatchMemoriesRequest(event_types=named), metadata=ana.md()
    )
    plain = ana.memory.WatchMemories(memory_pb2.WatchMemoriesRequest(), metadata=ana.md())
    done = await _ingest(ana, text="Bikes are stored in the courtyard shed.", folder="rules")
    doc = knowledge_pb2.Document()
    assert done.response.Unpack(doc)
    await knowledge_pb2_grpc.KnowledgeServiceStub(ana.channel).DeleteDocument(
        knowledge_pb2.DeleteDocumentRequest(name=doc.name), metadata=ana.md()
    )
    await ana.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="a memory")),
        metadata=ana.md(),
    )
    events = [await asyncio.wait_for(stream.read(), 20) for _ in range(3)]
    assert [e.type for e in events] == named
    ready = events[0].document
    assert (ready.document, ready.folder, ready.state) == (doc.name, "rules", "READY")
    assert ready.chunk_count == doc.chunk_count and not events[0].memory_id
    assert events[1].document.document_id == doc.id and events[2].memory.content == "a memory"
    # a watcher naming no types gets the memory events only
    first = await asyncio.wait_for(plain.read(), 20)
    assert first.type == memory_pb2.MemoryEvent.CREATED
    stream.cancel()
    plain.cancel()

    # document events need knowledge:read
    memory_only = server.client(await server.data_key(project, ("memory:read",)), "ana")
    call = memory_only.memory.WatchMemories(
        memory_pb2.WatchMemoriesRequest(event_types=named[:1]), metadata=memory_only.md()
    )
    await refused(grpc.StatusCode.PERMISSION_DENIED, call.read())
