"""SearchKnowledge with the real default model (all-MiniLM-L6-v2): a
handbook uploaded as a DOCX and a policy as Markdown are read, cut into
chunks sized by the model's own tokenizer, and a paraphrased question finds
the chunk that answers it (its text and offsets in the document)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2
from helpers.servers import MakeServer
from test_real_model_server import model_dir

from memoryd.v1 import knowledge_pb2, knowledge_pb2_grpc

pytestmark = pytest.mark.slow

SECTIONS = {
    "Parking": "Staff may park in the underground garage on level minus two; visitors "
    "use the surface lot next to the main entrance.",
    "Holidays": "Every employee has twenty-five days of paid vacation per calendar year, "
    "and unused days may be carried over until the end of March.",
    "Equipment": "Laptops are replaced every three years; broken screens are repaired by "
    "the IT service desk within two working days.",
    "Expenses": "Receipts for travel and meals must be submitted through the finance "
    "portal within thirty days of the purchase.",
}
QUESTIONS = {
    "how much time off do I get each year": "Holidays",
    "where should guests leave their cars": "Parking",
    "my monitor cracked, who fixes it": "Equipment",
    "deadline for handing in a restaurant bill": "Expenses",
}


def handbook() -> bytes:
    import docx

    d = docx.Document()
    d.add_heading("Employee handbook", level=1)
    for title, text in SECTIONS.items():
        d.add_heading(title, level=2)
        d.add_paragraph(text)
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


async def test_a_paraphrase_finds_the_chunk_that_answers_it(make_server: MakeServer) -> None:
    server = await make_server(
        embedding_provider="fastembed",
        embedding_dimension=384,
        embedding_model_dir=model_dir(),
        knowledge_chunk_tokens=40,
    )
    project = await server.project("docs")
    key = await server.data_key(
        project, ("knowledge:read", "knowledge:write", "ingest:read", "ingest:write")
    )
    client = server.client(key)
    k = knowledge_pb2_grpc.KnowledgeServiceStub(client.channel)
    data = handbook()

    async def messages() -> AsyncIterator[knowledge_pb2.UploadDocumentRequest]:
        yield knowledge_pb2.UploadDocumentRequest(
            header=knowledge_pb2.UploadHeader(display_name="handbook.docx")
        )
        yield knowledge_pb2.UploadDocumentRequest(data=data)

    op = await k.UploadDocument(messages(), metadata=client.md())
    done = await client.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(
            name=op.name, timeout=duration_pb2.Duration(seconds=60)
        ),
        metadata=client.md(),
    )
    doc = knowledge_pb2.Document()
    assert done.response.Unpack(doc), done.error
    assert doc.chunk_count >= 2

    for question, section in QUESTIONS.items():
        found = await k.SearchKnowledge(
            knowledge_pb2.SearchKnowledgeRequest(query=question, top_k=3), metadata=client.md()
        )
        best = found.results[0]
        assert SECTIONS[section][:40] in best.text, (question, [r.text for r in found.results])
        assert best.document_name == "handbook.docx" and best.score > 0.2
