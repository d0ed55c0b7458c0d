"""KnowledgeService servicer, the protobuf ⇄ domain conversions of
documents and folders, and the ingest operations' view (`IngestView`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, json_format, struct_pb2

from memoryd.api import convert
from memoryd.api.call import current_caller
from memoryd.api.memory import _normalize, to_filter
from memoryd.api.operations import Describe, operation_pb
from memoryd.domain.errors import InvalidArgument
from memoryd.domain.knowledge.job import ingest_info
from memoryd.domain.knowledge.model import DOCUMENT_PREFIX, DocState, Document, Folder
from memoryd.domain.knowledge.service import KnowledgeService, NewDocument
from memoryd.domain.operations import Operation, OpState
from memoryd.v1 import knowledge_pb2, knowledge_pb2_grpc

_STATES = {
    DocState.PROCESSING: knowledge_pb2.Document.PROCESSING,
    DocState.READY: knowledge_pb2.Document.READY,
    DocState.FAILED: knowledge_pb2.Document.FAILED,
}
_OP_STATES = {
    OpState.PENDING: knowledge_pb2.IngestMetadata.PENDING,
    OpState.RUNNING: knowledge_pb2.IngestMetadata.RUNNING,
    OpState.SUCCEEDED: knowledge_pb2.IngestMetadata.SUCCEEDED,
    OpState.FAILED: knowledge_pb2.IngestMetadata.FAILED,
    OpState.CANCELLED: knowledge_pb2.IngestMetadata.CANCELLED,
}


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    def __init__(self, knowledge: KnowledgeService, describe: Describe) -> None:
        self._k = knowledge
        self._describe = describe

    async def CreateDocument(
        self, request: knowledge_pb2.CreateDocumentRequest, context: Any
    ) -> operations_pb2.Operation:
        new = NewDocument(
            display_name=request.display_name,
            folder=request.folder,
            mime_type=request.mime_type,
            metadata=_struct(request, "metadata"),
            replace=request.replace,
            source_uri=request.source_uri,
        )
        op = await self._k.create_from_text(current_caller(), new, request.text)
        return await operation_pb(op, self._describe)

    async def UploadDocument(
        self,
        request_iterator: AsyncIterator[knowledge_pb2.UploadDocumentRequest],
        context: Any,
    ) -> operations_pb2.Operation:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument.field("header", "the first message must be the header")
        h = first.header
        new = NewDocument(
            display_name=h.display_name,
            folder=h.folder,
            mime_type=h.mime_type,
            metadata=_struct(h, "header.metadata"),
            replace=h.replace,
        )

        async def data() -> AsyncIterator[bytes]:
            async for m in messages:
                if m.HasField("header"):
                    raise InvalidArgument.field("header", "only the first message is the header")
                yield m.data

        op = await self._k.upload(current_caller(), new, data())
        return await operation_pb(op, self._describe)

    async def GetDocument(
        self, request: knowledge_pb2.GetDocumentRequest, context: Any
    ) -> knowledge_pb2.Document:
        return document_pb(await self._k.get(current_caller(), request.name))

    async def ListDocuments(
        self, request: knowledge_pb2.ListDocumentsRequest, context: Any
    ) -> knowledge_pb2.ListDocumentsResponse:
        page = await self._k.list_documents(
            current_caller(),
            request.folder,
            to_filter(request.filter),
            request.page_size,
            request.page_token,
        )
        return knowledge_pb2.ListDocumentsResponse(
            documents=[document_pb(d) for d in page.documents],
            next_page_token=page.next_page_token,
        )

    async def UpdateDocument(
        self, request: knowledge_pb2.UpdateDocumentRequest, context: Any
    ) -> knowledge_pb2.Document:
        d = request.document
        changes = {
            "display_name": d.display_name,
            "folder": d.folder,
            "metadata": _struct(d, "document.metadata"),
        }
        updated = await self._k.update(
            current_caller(), d.name or d.id, list(request.update_mask.paths), changes
        )
        return document_pb(updated)

    async def DeleteDocument(
        self, request: knowledge_pb2.DeleteDocumentRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._k.delete(current_caller(), request.name)
        return empty_pb2.Empty()

    async def SearchKnowledge(
        self, request: knowledge_pb2.SearchKnowledgeRequest, context: Any
    ) -> knowledge_pb2.SearchKnowledgeResponse:
        found = await self._k.search(
            current_caller(),
            request.query,
            list(request.query_embedding) or None,
            to_filter(request.filter),
            request.folder,
            request.top_k,
            request.min_score if request.HasField("min_score") else None,
        )
        out = knowledge_pb2.SearchKnowledgeResponse()
        for f in found:
            c = out.results.add(
                document=DOCUMENT_PREFIX + f.document.id,
                document_id=f.document.id,
                document_name=f.document.display_name,
                folder=f.document.folder,
                chunk_index=f.index,
                start_offset=f.start,
                end_offset=f.end,
                text=f.text,
                score=f.score,
            )
            c.metadata.update(dict(f.document.metadata))
        return out

    async def CreateFolder(
        self, request: knowledge_pb2.CreateFolderRequest, context: Any
    ) -> knowledge_pb2.Folder:
        f = request.folder
        return folder_pb(await self._k.create_folder(current_caller(), f.name, f.description))

    async def ListFolders(
        self, request: knowledge_pb2.ListFoldersRequest, context: Any
    ) -> knowledge_pb2.ListFoldersResponse:
        page = await self._k.list_folders(current_caller(), request.page_size, request.page_token)
        return knowledge_pb2.ListFoldersResponse(
            folders=[folder_pb(f) for f in page.folders], next_page_token=page.next_page_token
        )

    async def DeleteFolder(
        self, request: knowledge_pb2.DeleteFolderRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._k.delete_folder(current_caller(), request.name, request.force)
        return empty_pb2.Empty()


class IngestView:
    """Describes ingest operations (`operations.Describe`): the document
    as it is now, read from the operation's own tenant."""

    def __init__(self, knowledge: KnowledgeService) -> None:
        self._k = knowledge

    async def __call__(
        self, op: Operation
    ) -> tuple[knowledge_pb2.IngestMetadata, knowledge_pb2.Document | None]:
        info = op.info
        doc_id = str(info.get("document_id", ""))
        counts = ingest_info(info)
        meta = knowledge_pb2.IngestMetadata(
            state=_OP_STATES[op.state],
            document=DOCUMENT_PREFIX + doc_id if doc_id else "",
            bytes_read=counts["bytes_read"],
            pages=counts["pages"],
            chunks=counts["chunks"],
            chunks_embedded=counts["chunks_embedded"],
            progress_percent=counts["progress_percent"],
            create_time=convert.ts(op.create_time),
            start_time=convert.ts(op.start_time),
            end_time=convert.ts(op.end_time),
            attempts=op.attempts,
        )
        if op.state is not OpState.SUCCEEDED:
            return meta, None
        doc = await self._k.document_of(op.tenant, doc_id)
        if doc is None:  # deleted since
            return meta, knowledge_pb2.Document(name=DOCUMENT_PREFIX + doc_id, id=doc_id)
        return meta, document_pb(doc)


def document_pb(d: Document) -> knowledge_pb2.Document:
    out = knowledge_pb2.Document(
        name=DOCUMENT_PREFIX + d.id,
        id=d.id,
        display_name=d.display_name,
        folder=d.folder,
        mime_type=d.mime_type,
        size_bytes=d.size_bytes,
        sha256=d.sha256,
        chunk_count=d.chunk_count,
        page_count=d.page_count,
        state=_STATES[d.state],
        source_uri=d.source_uri,
        end_user_id=d.tenant.end_user_id,
        error=d.error,
        operation="operations/" + d.operation_id,
        create_time=convert.ts(d.create_time),
        update_time=convert.ts(d.update_time),
    )
    out.metadata.update(dict(d.metadata))
    return out


def folder_pb(f: Folder) -> knowledge_pb2.Folder:
    return knowledge_pb2.Folder(
        name=f.name,
        description=f.description,
        document_count=f.document_count,
        create_time=convert.ts(f.create_time),
    )


def _struct(msg: Any, name: str) -> dict[str, Any]:
    if not msg.HasField("metadata"):
        return {}
    value: struct_pb2.Struct = msg.metadata
    try:
        out: dict[str, Any] = _normalize(json_format.MessageToDict(value))
    except ValueError:
        raise InvalidArgument.field(name, "numbers must be finite (no NaN or infinity)") from None
    return out
