"""KnowledgeService on a real server: documents from text and from uploads
become searchable chunks through their ingest operation; Get/List/Update/
Delete; folders; the same content answers the existing document; replace
swaps generations; refusals (type, size, quota, scopes, bad fields); and
chunks and memories never meet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, field_mask_pb2
from helpers.errors import quota_violations, reason_of, refused, violations
from helpers.servers import Client, RunningServer

from memoryd.domain.memory import Filter, Match
from memoryd.domain.tenancy import Tenant
from memoryd.v1 import knowledge_pb2, knowledge_pb2_grpc, memory_pb2

WAIT = duration_pb2.Duration(seconds=30)  # an upper bound: done long before on any box
KNOWING = (
    "memory:*",
    "knowledge:read",
    "knowledge:write",
    "knowledge:delete",
    "ingest:read",
    "ingest:write",
)
GUIDE = """# Onboarding guide

## Laptops

Every new engineer receives a laptop on the first day. The IT desk on the
third floor sets it up with disk encryption and the VPN client.

## Payroll

Salaries are paid on the last working day of each month. Expense claims
go through the finance portal before the twentieth.
"""


def stub(client: Client) -> knowledge_pb2_grpc.KnowledgeServiceStub:
    return knowledge_pb2_grpc.KnowledgeServiceStub(client.channel)


async def knowing(
    server: RunningServer, scopes: tuple[str, ...] = KNOWING, end_user: str = "", **kw: Any
) -> Client:
    project = kw.pop("project", None) or await server.project(kw.pop("name", "app"))
    return server.client(await server.data_key(project, scopes, **kw), end_user)


async def wait(client: Client, op: operations_pb2.Operation) -> operations_pb2.Operation:
    done = await client.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=op.name, timeout=WAIT), metadata=client.md()
    )
    assert done.done, "the ingest did not finish within the wait"
    return done


def document(op: operations_pb2.Operation) -> knowledge_pb2.Document:
    assert op.WhichOneof("result") == "response", op.error
    out = knowledge_pb2.Document()
    assert op.response.Unpack(out)
    return out


def meta(op: operations_pb2.Operation) -> knowledge_pb2.IngestMetadata:
    out = knowledge_pb2.IngestMetadata()
    assert op.metadata.Unpack(out)
    return out


async def ingest(client: Client, text: str = GUIDE, **fields: Any) -> knowledge_pb2.Document:
    op = await stub(client).CreateDocument(
        knowledge_pb2.CreateDocumentRequest(text=text, **fields), metadata=client.md()
    )
    return document(await wait(client, op))


async def search(client: Client, query: str, **fields: Any) -> list[knowledge_pb2.KnowledgeChunk]:
    resp = await stub(client).SearchKnowledge(
        knowledge_pb2.SearchKnowledgeRequest(query=query, **fields), metadata=client.md()
    )
    return list(resp.results)


async def upload(
    client: Client, data: bytes, piece: int = 1000, **header: Any
) -> operations_pb2.Operation:
    async def messages() -> AsyncIterator[knowledge_pb2.UploadDocumentRequest]:
        yield knowledge_pb2.UploadDocumentRequest(header=knowledge_pb2.UploadHeader(**header))
        for i in range(0, len(data), piece):
            yield knowledge_pb2.UploadDocumentRequest(data=data[i : i + piece])

    return await stub(client).UploadDocument(messages(), metadata=client.md())


# --- ingest and search ------------------------------------------------------------------


async def test_a_text_document_becomes_searchable_chunks(server: RunningServer) -> None:
    client = await knowing(server)
    op = await stub(client).CreateDocument(
        knowledge_pb2.CreateDocumentRequest(
            text=GUIDE, display_name="guide.md", mime_type="text/markdown", folder="hr"
        ),
        metadata=client.md(),
    )
    assert op.name.startswith("operations/")
    done = await wait(client, op)
    doc = document(done)
    assert doc.state == knowledge_pb2.Document.READY
    assert (doc.display_name, doc.folder, doc.mime_type) == ("guide.md", "hr", "text/markdown")
    assert doc.size_bytes == len(GUIDE.encode()) and len(doc.sha256) == 64
    assert doc.chunk_count >= 1 and doc.operation == op.name
    m = meta(done)
    assert m.state == knowledge_pb2.IngestMetadata.SUCCEEDED and m.progress_percent == 100
    assert m.chunks == m.chunks_embedded == doc.chunk_count and m.document == doc.name

    found = await search(client, "laptop disk encryption VPN")
    assert found and found[0].document == doc.name and found[0].document_name == "guide.md"
    best = found[0]
    assert "laptop" in best.text and best.folder == "hr"
    # offsets index the document's text
    assert best.end_offset - best.start_offset == len(best.text)
    assert GUIDE[best.start_offset : best.end_offset] == best.text

    got = await stub(client).GetDocument(
        knowledge_pb2.GetDocumentRequest(name=doc.name), metadata=client.md()
    )
    assert got == doc
    listed = await stub(client).ListDocuments(
        knowledge_pb2.ListDocumentsRequest(), metadata=client.md()
    )
    assert [d.name for d in listed.documents] == [doc.name]


async def test_an_upload_is_streamed_and_read_by_its_type(server: RunningServer) -> None:
    client = await knowing(server)
    html = (
        "<html><head><title>Policy</title></head><body>"
        "<nav>Home | About | Careers | Contact</nav>"
        "<article><h1>Travel policy</h1>"
        + "".join(
            f"<p>Rule {i}: book trains for trips shorter than four hours, "
            f"and hotels within the nightly budget of the city.</p>"
            for i in range(40)
        )
        + "</article><footer>Copyright ACME</footer></body></html>"
    ).encode()
    op = await upload(client, html, display_name="policy.html", folder="travel")
    doc = document(await wait(client, op))
    assert doc.mime_type == "text/html" and doc.size_bytes == len(html)
    assert doc.chunk_count >= 1
    found = await search(client, "book trains for short trips", folder="travel")
    assert found and all(c.document == doc.name for c in found)
    assert not any("Careers" in c.text for c in found)  # navigation is not content


async def test_memory_calls_never_see_chunks_and_knowledge_calls_never_see_memories(
    server: RunningServer,
) -> None:
    client = await knowing(server)
    await ingest(client)
    await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="laptop on day one")),
        metadata=client.md(),
    )
    memories = await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query="laptop disk encryption", top_k=50),
        metadata=client.md(),
    )
    assert [m.memory.content for m in memories.results] == ["laptop on day one"]
    listed = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=100), metadata=client.md()
    )
    assert len(listed.memories) == 1
    assert all(c.text != "laptop on day one" for c in await search(client, "laptop"))


async def test_filters_and_folders_narrow_a_search(server: RunningServer) -> None:
    client = await knowing(server)
    a = await ingest(client, "Parking is free for visitors on weekends.", folder="a")
    b = await ingest(client, "Parking costs four euros per hour on weekdays.", folder="b")
    req = knowledge_pb2.CreateDocumentRequest(text="Parking permits renew every January.")
    req.metadata.update({"team": "facilities"})
    c = document(await wait(client, await stub(client).CreateDocument(req, metadata=client.md())))
    assert {x.document for x in await search(client, "parking")} == {a.name, b.name, c.name}
    assert {x.document for x in await search(client, "parking", folder="b")} == {b.name}
    flt = memory_pb2.MemoryFilter(must=[memory_pb2.Condition(field="metadata.team")])
    flt.must[0].equals.string_value = "facilities"
    assert {x.document for x in await search(client, "parking", filter=flt)} == {c.name}
    listed = await stub(client).ListDocuments(
        knowledge_pb2.ListDocumentsRequest(filter=flt), metadata=client.md()
    )
    assert [d.name for d in listed.documents] == [c.name]
    bad = memory_pb2.MemoryFilter(must=[memory_pb2.Condition(field="tags")])
    bad.must[0].equals.string_value = "x"
    err = await refused(grpc.StatusCode.INVALID_ARGUMENT, search(client, "parking", filter=bad))
    assert "filter" in violations(err)


async def test_update_moves_a_document_and_its_chunks(server: RunningServer) -> None:
    client = await knowing(server)
    doc = await ingest(client, folder="old")
    changed = knowledge_pb2.Document(name=doc.name, display_name="Guide", folder="new")
    changed.metadata.update({"lang": "en"})
    updated = await stub(client).UpdateDocument(
        knowledge_pb2.UpdateDocumentRequest(
            document=changed,
            update_mask=field_mask_pb2.FieldMask(paths=["display_name", "folder", "metadata"]),
        ),
        metadata=client.md(),
    )
    assert (updated.display_name, updated.folder) == ("Guide", "new")
    assert dict(updated.metadata) == {"lang": "en"}
    assert await search(client, "payroll salaries", folder="new")
    assert not await search(client, "payroll salaries", folder="old")
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub(client).UpdateDocument(
            knowledge_pb2.UpdateDocumentRequest(
                document=changed, update_mask=field_mask_pb2.FieldMask(paths=["sha256"])
            ),
            metadata=client.md(),
        ),
    )
    assert "update_mask" in violations(err)


async def test_delete_removes_every_chunk(server: RunningServer) -> None:
    project = await server.project()
    client = await knowing(server, project=project)
    doc = await ingest(client)
    assert await chunk_count(server, project, doc) == doc.chunk_count > 0
    await stub(client).DeleteDocument(
        knowledge_pb2.DeleteDocumentRequest(name=doc.name), metadata=client.md()
    )
    assert not await search(client, "laptop encryption")
    await refused(
        grpc.StatusCode.NOT_FOUND,
        stub(client).GetDocument(
            knowledge_pb2.GetDocumentRequest(name=doc.name), metadata=client.md()
        ),
    )
    # the chunks are gone from the engine too, not only hidden
    assert await chunk_count(server, project, doc) == 0


async def chunk_count(server: RunningServer, project: Any, doc: knowledge_pb2.Document) -> int:
    """The document's chunks in the knowledge vector store, whatever SQL says."""
    assert server.app.chunks is not None
    tenant = Tenant(server.org_id, project.id, project.environments[0].id, all_end_users=True)
    flt = Filter(must=(Match("thread_id", doc.id),))
    return await server.app.chunks.count(tenant, flt, datetime.now(UTC))


async def test_the_same_content_answers_the_existing_document(server: RunningServer) -> None:
    client = await knowing(server)
    first = await ingest(client, folder="f")
    again = await ingest(client, folder="f")
    assert again.name == first.name
    elsewhere = await ingest(client, folder="g")
    assert elsewhere.name != first.name
    listed = await stub(client).ListDocuments(
        knowledge_pb2.ListDocumentsRequest(folder="f"), metadata=client.md()
    )
    assert len(listed.documents) == 1


async def test_replace_swaps_the_generation(server: RunningServer) -> None:
    client = await knowing(server)
    old = await ingest(client, "The cafeteria opens at eight.", display_name="hours.txt")
    new = await ingest(
        client, "The cafeteria opens at nine thirty.", display_name="hours.txt", replace=True
    )
    assert new.name == old.name and new.sha256 != old.sha256
    found = await search(client, "when does the cafeteria open", top_k=10)
    assert [c.text for c in found] == ["The cafeteria opens at nine thirty."]


# --- folders ----------------------------------------------------------------------------


async def test_folders(server: RunningServer) -> None:
    client = await knowing(server)
    k = stub(client)
    made = await k.CreateFolder(
        knowledge_pb2.CreateFolderRequest(
            folder=knowledge_pb2.Folder(name="legal/contracts", description="signed")
        ),
        metadata=client.md(),
    )
    assert made.name == "legal/contracts" and made.document_count == 0
    await refused(
        grpc.StatusCode.ALREADY_EXISTS,
        k.CreateFolder(
            knowledge_pb2.CreateFolderRequest(folder=knowledge_pb2.Folder(name="legal/contracts")),
            metadata=client.md(),
        ),
    )
    for bad in ("../etc", "", "/abs", "a//"):
        await refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            k.CreateFolder(
                knowledge_pb2.CreateFolderRequest(folder=knowledge_pb2.Folder(name=bad)),
                metadata=client.md(),
            ),
        )
    doc = await ingest(client, folder="legal/contracts")
    await ingest(client, "Another text.", folder="auto")  # made on first use
    listed = await k.ListFolders(knowledge_pb2.ListFoldersRequest(), metadata=client.md())
    assert [(f.name, f.document_count) for f in listed.folders] == [
        ("auto", 1),
        ("legal/contracts", 1),
    ]
    err = await refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        k.DeleteFolder(
            knowledge_pb2.DeleteFolderRequest(name="legal/contracts"), metadata=client.md()
        ),
    )
    assert reason_of(err) == "FOLDER_NOT_EMPTY"
    await k.DeleteFolder(
        knowledge_pb2.DeleteFolderRequest(name="legal/contracts", force=True),
        metadata=client.md(),
    )
    await refused(
        grpc.StatusCode.NOT_FOUND,
        k.GetDocument(knowledge_pb2.GetDocumentRequest(name=doc.name), metadata=client.md()),
    )
    assert all(c.document != doc.name for c in await search(client, "laptop encryption"))


# --- refusals ---------------------------------------------------------------------------


async def test_a_binary_upload_is_refused_naming_its_type(server: RunningServer) -> None:
    client = await knowing(server)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        upload(client, png, display_name="photo.txt", mime_type="text/plain"),
    )
    assert "image/png" in err.details() and reason_of(err) == "UNSUPPORTED_DOCUMENT_TYPE"
    listed = await stub(client).ListDocuments(
        knowledge_pb2.ListDocumentsRequest(), metadata=client.md()
    )
    assert not listed.documents
    assert not list(server_uploads(server))


def server_uploads(server: RunningServer) -> list[Any]:
    from pathlib import Path

    root = Path(server.app.settings.data_dir, "uploads")
    return list(root.iterdir()) if root.is_dir() else []


async def test_an_upload_over_the_size_limit_stores_nothing(make_server: Any) -> None:
    server = await make_server(knowledge_max_upload_bytes=4000)
    client = await knowing(server)
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT, upload(client, b"word " * 2000, display_name="a.txt")
    )
    assert "4000" in err.details()
    assert not server_uploads(server)
    listed = await stub(client).ListDocuments(
        knowledge_pb2.ListDocumentsRequest(), metadata=client.md()
    )
    assert not listed.documents


async def test_quotas(make_server: Any) -> None:
    server = await make_server(knowledge_max_documents_per_environment=2)
    client = await knowing(server)
    await ingest(client, "one")
    await ingest(client, "two")
    err = await refused(grpc.StatusCode.RESOURCE_EXHAUSTED, ingest(client, "three"))
    assert reason_of(err) == "DOCUMENT_QUOTA_EXCEEDED"
    assert quota_violations(err)
    other = await make_server(knowledge_max_bytes_per_environment=10)
    c2 = await knowing(other)
    err = await refused(grpc.StatusCode.RESOURCE_EXHAUSTED, ingest(c2, "more than ten bytes"))
    assert reason_of(err) == "DOCUMENT_BYTES_QUOTA_EXCEEDED"


async def test_an_unreadable_document_fails_its_operation(server: RunningServer) -> None:
    client = await knowing(server)
    op = await upload(client, b"%PDF-1.7\n" + b"garbage" * 100, display_name="broken.pdf")
    done = await wait(client, op)
    assert done.WhichOneof("result") == "error"
    assert done.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    doc_name = meta(done).document
    got = await stub(client).GetDocument(
        knowledge_pb2.GetDocumentRequest(name=doc_name), metadata=client.md()
    )
    assert got.state == knowledge_pb2.Document.FAILED and got.error
    assert not server_uploads(server)


@pytest.mark.parametrize(
    ("scopes", "call"),
    [
        (("memory:*",), "search"),  # memory:* does not imply knowledge scopes
        (("knowledge:read",), "create"),
        (("knowledge:write",), "create"),  # ingest:write too
        (("knowledge:read", "knowledge:write"), "delete"),
        (("knowledge:read", "knowledge:write", "ingest:write"), "operation"),
    ],
)
async def test_scopes(server: RunningServer, scopes: tuple[str, ...], call: str) -> None:
    project = await server.project()
    owner = await knowing(server, project=project)
    doc = await ingest(owner)
    client = owner.with_key(await server.data_key(project, scopes))
    k = stub(client)
    attempt: Any
    if call == "search":
        attempt = search(client, "laptop")
    elif call == "create":
        attempt = k.CreateDocument(
            knowledge_pb2.CreateDocumentRequest(text="x"), metadata=client.md()
        )
    elif call == "delete":
        attempt = k.DeleteDocument(
            knowledge_pb2.DeleteDocumentRequest(name=doc.name), metadata=client.md()
        )
    else:
        attempt = client.operations.GetOperation(
            operations_pb2.GetOperationRequest(name=doc.operation), metadata=client.md()
        )
    err = await refused(grpc.StatusCode.PERMISSION_DENIED, attempt)
    assert reason_of(err) == "SCOPE_MISSING"


async def test_bad_requests_name_their_fields(server: RunningServer) -> None:
    client = await knowing(server)
    k = stub(client)
    cases = [
        (knowledge_pb2.CreateDocumentRequest(text=""), "text"),
        (knowledge_pb2.CreateDocumentRequest(text="x", folder="../up"), "folder"),
        (knowledge_pb2.CreateDocumentRequest(text="x", display_name="n" * 201), "display_name"),
        (knowledge_pb2.CreateDocumentRequest(source_uri="ftp://example.com/a"), "source_uri"),
    ]
    for req, field in cases:
        err = await refused(
            grpc.StatusCode.INVALID_ARGUMENT, k.CreateDocument(req, metadata=client.md())
        )
        assert field in violations(err), (field, err.details())
    err = await refused(grpc.StatusCode.INVALID_ARGUMENT, search(client, ""))
    assert "query" in violations(err)
    err = await refused(grpc.StatusCode.INVALID_ARGUMENT, search(client, "x", top_k=101))
    assert "top_k" in violations(err)


# --- cancelling -------------------------------------------------------------------------


class HeldEmbedder:
    """The hashing embedder, but its second call (a document's second batch
    of chunks) waits until the test lets it go: an ingest is caught half
    way, without depending on timing."""

    def __init__(self) -> None:
        from memoryd.embeddings.hashing import HashingEmbedder

        self._inner = HashingEmbedder(64)
        self.calls = 0
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    async def embed(self, texts: Sequence[str], *, fairness_key: str = "") -> list[list[float]]:
        self.calls += 1
        if self.calls == 2:
            self.held.set()
            await self.release.wait()
        return await self._inner.embed(texts, fairness_key=fairness_key)

    async def close(self) -> None:
        await self._inner.close()


async def test_a_cancelled_ingest_leaves_nothing_searchable(make_server: Any) -> None:
    held = HeldEmbedder()
    server = await make_server(embedder=held, knowledge_chunk_tokens=16, knowledge_chunk_overlap=0)
    project = await server.project()
    client = await knowing(server, project=project)
    text = "\n\n".join(
        f"Fact {i}: the blue lighthouse number {i} stands on a cliff." for i in range(200)
    )
    op = await stub(client).CreateDocument(
        knowledge_pb2.CreateDocumentRequest(text=text), metadata=client.md()
    )
    await asyncio.wait_for(held.held.wait(), 30)  # one batch stored, the second held
    running = await client.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=op.name), metadata=client.md()
    )
    assert meta(running).chunks_embedded == 64 and meta(running).chunks > 64
    await client.operations.CancelOperation(
        operations_pb2.CancelOperationRequest(name=op.name), metadata=client.md()
    )
    done = await wait(client, op)
    assert done.error.code == grpc.StatusCode.CANCELLED.value[0]
    held.release.set()

    doc = await stub(client).GetDocument(
        knowledge_pb2.GetDocumentRequest(name=meta(done).document), metadata=client.md()
    )
    assert doc.state == knowledge_pb2.Document.FAILED and "cancelled" in doc.error
    assert not await search(client, "blue lighthouse on a cliff")
    assert await chunk_count(server, project, doc) == 0
    assert not server_uploads(server)
