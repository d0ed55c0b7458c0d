"""Export jobs on the wire: CreateExport's request to the domain's, an
export as `memoryd.v1.Export`, and an export operation's metadata and
response (`ExportView`, the operation kind's `Describe`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.longrunning import operations_pb2
from google.protobuf import json_format

from memoryd.api import convert
from memoryd.api.call import current_caller
from memoryd.api.memory import memory, to_filter
from memoryd.api.operations import operation_pb
from memoryd.domain.exports import NAME_PREFIX, Export, ExportRequest, ExportService
from memoryd.domain.memory import MemoryRecord
from memoryd.domain.operations import Operation, OpState
from memoryd.v1 import memory_pb2

_STATES = {
    OpState.PENDING: memory_pb2.ExportMetadata.PENDING,
    OpState.RUNNING: memory_pb2.ExportMetadata.RUNNING,
    OpState.SUCCEEDED: memory_pb2.ExportMetadata.SUCCEEDED,
    OpState.FAILED: memory_pb2.ExportMetadata.FAILED,
    OpState.CANCELLED: memory_pb2.ExportMetadata.CANCELLED,
}


def export_request(req: memory_pb2.CreateExportRequest) -> ExportRequest:
    return ExportRequest(
        filter=to_filter(req.filter),
        include_embeddings=req.include_embeddings,
        description=req.description,
        format="jsonl" if req.format in (0, memory_pb2.JSONL) else str(req.format),
    )


def export_pb(export: Export) -> memory_pb2.Export:
    op = export.operation
    out = memory_pb2.Export(
        name=NAME_PREFIX + export.id,
        state=_STATES[op.state],
        format=memory_pb2.JSONL,
        include_embeddings=export.request.include_embeddings,
        description=export.request.description,
        create_time=convert.ts(op.create_time),
        expire_time=convert.ts(export.expire_time),
        expired=export.expired,
    )
    if export.file is not None:
        out.memory_count = export.file.memory_count
        out.size_bytes = export.file.size_bytes
        out.sha256 = export.file.sha256
        out.complete_time.FromDatetime(export.file.complete_time)
    return out


def export_line(record: MemoryRecord, with_vector: bool) -> bytes:
    """One line of a JSONL export: the memory as ExportMemories streams it,
    in proto3 JSON (what ImportMemories reads back)."""
    text = json_format.MessageToJson(memory(record, with_vector=with_vector), indent=None)
    return text.encode() + b"\n"


class ExportView:
    """Describes export operations (`operations.Describe`)."""

    def __init__(self, exports: ExportService) -> None:
        self._exports = exports

    async def __call__(
        self, op: Operation
    ) -> tuple[memory_pb2.ExportMetadata, memory_pb2.Export | None]:
        info = op.info
        meta = memory_pb2.ExportMetadata(
            state=_STATES[op.state],
            memories_written=int(info.get("memories_written", 0)),
            bytes_written=int(info.get("bytes_written", 0)),
            create_time=convert.ts(op.create_time),
            start_time=convert.ts(op.start_time),
            end_time=convert.ts(op.end_time),
            attempts=op.attempts,
        )
        if op.state is not OpState.SUCCEEDED:
            return meta, None
        return meta, export_pb(self._exports.view(op))


class ExportEndpoints:
    """CreateExport, ListExports and ReadExport of MemoryService (the
    servicer delegates to this)."""

    def __init__(self, exports: ExportService, describe: ExportView) -> None:
        self._exports = exports
        self._describe = describe

    async def create(self, req: memory_pb2.CreateExportRequest) -> operations_pb2.Operation:
        op = await self._exports.create(current_caller(), export_request(req))
        return await operation_pb(op, self._describe)

    async def list(self, req: memory_pb2.ListExportsRequest) -> memory_pb2.ListExportsResponse:
        page = await self._exports.list(current_caller(), req.page_size, req.page_token)
        return memory_pb2.ListExportsResponse(
            exports=[export_pb(e) for e in page.exports], next_page_token=page.next_page_token
        )

    async def read(
        self, req: memory_pb2.ReadExportRequest
    ) -> AsyncIterator[memory_pb2.ReadExportResponse]:
        offset = req.offset
        async for piece in await self._exports.read(current_caller(), req.name, offset):
            yield memory_pb2.ReadExportResponse(offset=offset, data=piece)
            offset += len(piece)
