"""Export jobs: every memory matching a filter written to a JSON-lines file
on the server by a long-running operation, listed and downloaded until it
expires.

An export is its operation (kind "export", id = the export's id): the
request is the operation's payload, the finished file's size, digest and
count its result, so an export is stored, confined to its tenant and
deleted with its environment exactly like any operation. The file lives in
`ExportFiles` (a directory per environment, see
`memoryd.storage.export_files`), written under a temporary name and renamed
when complete: a download never sees half a file. Files are deleted when
they expire, when their environment or project is deleted, and when the
job fails or is cancelled.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from memoryd.domain.clock import Clock
from memoryd.domain.errors import InvalidArgument, NotFound, ResourceExhausted, Violations
from memoryd.domain.filter_json import filter_from_json, filter_to_json
from memoryd.domain.memories import MemoryService
from memoryd.domain.memories.filters import validate_filter
from memoryd.domain.memory import Filter, MemoryRecord
from memoryd.domain.operation_service import OperationService
from memoryd.domain.operations import (
    JobControl,
    JobOutcome,
    Operation,
    OperationStore,
    OpState,
    new_operation_id,
)
from memoryd.domain.tenancy import Caller, Scope, Tenant

KIND = "export"
NAME_PREFIX = "exports/"
JSONL = "jsonl"
MAX_DESCRIPTION_CHARS = 500
# Memories between two checkpoints of a running export's progress.
PROGRESS_EVERY = 1000


@dataclass(frozen=True)
class ExportRequest:
    filter: Filter = field(default_factory=Filter)
    include_embeddings: bool = False
    description: str = ""
    format: str = JSONL

    def payload(self, tenant: Tenant) -> str:
        """The operation's payload: the request, and whether the job reads
        every end user's memories (an operation's tenant names one end
        user or none)."""
        return json.dumps(
            {
                "filter": filter_to_json(self.filter),
                "include_embeddings": self.include_embeddings,
                "description": self.description,
                "format": self.format,
                "all_end_users": tenant.all_end_users,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @staticmethod
    def of(op: Operation) -> ExportRequest:
        data = json.loads(op.payload)
        return ExportRequest(
            filter=filter_from_json(data["filter"]),
            include_embeddings=bool(data["include_embeddings"]),
            description=str(data["description"]),
            format=str(data["format"]),
        )


@dataclass(frozen=True)
class ExportFile:
    """A complete export file."""

    memory_count: int
    size_bytes: int
    sha256: str
    complete_time: datetime

    def result(self) -> str:
        return json.dumps(
            {
                "memory_count": self.memory_count,
                "size_bytes": self.size_bytes,
                "sha256": self.sha256,
                "complete_time": self.complete_time.isoformat(),
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @staticmethod
    def of(op: Operation) -> ExportFile | None:
        if op.state is not OpState.SUCCEEDED or not op.result:
            return None
        data = json.loads(op.result)
        return ExportFile(
            int(data["memory_count"]),
            int(data["size_bytes"]),
            str(data["sha256"]),
            datetime.fromisoformat(data["complete_time"]),
        )


@dataclass(frozen=True)
class Export:
    """An export as its caller sees it."""

    operation: Operation
    request: ExportRequest
    file: ExportFile | None
    expire_time: datetime | None
    expired: bool

    @property
    def id(self) -> str:
        return self.operation.id


@dataclass(frozen=True)
class ExportPage:
    exports: list[Export]
    next_page_token: str


class ExportWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def commit(self) -> tuple[int, str]:
        """Makes the file complete (synced, renamed); answers its size and
        SHA-256 (hex)."""
        ...

    def abort(self) -> None:
        """Removes what was written."""
        ...


class ExportFiles(Protocol):
    """Where export files are kept, one directory per environment."""

    async def prepare(self, tenant: Tenant) -> None:
        """Loads what writing the tenant's files needs (its data key when
        files are sealed); raises Unavailable when it cannot be had."""
        ...

    def writer(self, tenant: Tenant, export_id: str) -> ExportWriter:
        """A new file for the export (starting over any earlier attempt's);
        `prepare` was awaited for the tenant."""
        ...

    def read(self, tenant: Tenant, export_id: str, offset: int) -> AsyncIterator[bytes]:
        """The complete file's bytes from `offset`, in pieces of at most 64
        KiB; NotFound when there is no such complete file."""
        ...

    def remove(self, tenant: Tenant, export_id: str) -> None: ...

    def remove_scope(self, org_id: str, project_id: str, environment_id: str | None) -> int:
        """Deletes every file of a project (or one of its environments)."""
        ...

    def sweep(self, written_before: datetime) -> int:
        """Deletes the files completed before the time; answers how many."""
        ...

    def check_space(self) -> None:
        """Raises ResourceExhausted when the disk is too full to go on."""
        ...


class ExportService:
    """CreateExport, ListExports and ReadExport."""

    def __init__(
        self,
        memories: MemoryService,
        operations: OperationStore,
        reads: OperationService,
        files: ExportFiles,
        clock: Clock,
        retention: timedelta,
        on_stored: Callable[[], None] = lambda: None,
    ) -> None:
        self._memories = memories
        self._ops = operations
        self._reads = reads
        self._files = files
        self._clock = clock
        self._retention = retention
        self._on_stored = on_stored

    async def create(self, caller: Caller, request: ExportRequest) -> Operation:
        v = Violations()
        if len(request.description) > MAX_DESCRIPTION_CHARS:
            v.add("description", f"is longer than {MAX_DESCRIPTION_CHARS} characters")
        if request.format != JSONL:
            v.add("format", "must be JSONL")
        v.raise_if_any("the CreateExport request has invalid fields")
        tenant = await self._memories.export_tenant(caller, Scope.EXPORT_WRITE)
        validate_filter(request.filter)  # now, not when the job runs
        now = self._clock.now()
        op = Operation(
            id=new_operation_id(),
            kind=KIND,
            tenant=_owner(tenant),
            key_id=caller.principal.key_id,
            scopes=caller.principal.scopes,
            state=OpState.PENDING,
            payload=request.payload(tenant),
            create_time=now,
            update_time=now,
            info={"memories_written": 0, "bytes_written": 0},
        )
        stored = await self._ops.create_operation(op, [])
        self._on_stored()
        return stored

    async def list(self, caller: Caller, page_size: int, page_token: str) -> ExportPage:
        page = await self._reads.list(caller, f'kind = "{KIND}"', page_size, page_token)
        return ExportPage([self.view(op) for op in page.operations], page.next_page_token)

    async def read(self, caller: Caller, name: str, offset: int) -> AsyncIterator[bytes]:
        if offset < 0:
            raise InvalidArgument.field("offset", "must not be negative")
        op = await self._reads.get(caller, "operations/" + export_id(name))
        if op.kind != KIND:
            raise _not_found(name)
        export = self.view(op)
        if export.file is None:
            raise NotFound(
                f"the export '{name}' has no file: it is not finished (wait for its "
                "operation) or it failed",
                reason="EXPORT_NOT_READY",
            )
        if export.expired:
            raise NotFound(f"the export '{name}' expired", reason="EXPORT_EXPIRED")
        if offset > export.file.size_bytes:
            raise InvalidArgument.field(
                "offset", f"is past the file's end ({export.file.size_bytes} bytes)"
            )
        return self._files.read(op.tenant, op.id, offset)

    def view(self, op: Operation) -> Export:
        file = ExportFile.of(op)
        expire = file.complete_time + self._retention if file else None
        return Export(
            operation=op,
            request=ExportRequest.of(op),
            file=file,
            expire_time=expire,
            expired=expire is not None and expire <= self._clock.now(),
        )


class ExportJob:
    """Runs export operations: the memories, oldest first, one JSON line
    each, into a new file; a re-run (after a crash) starts the file over."""

    def __init__(
        self,
        memories: MemoryService,
        files: ExportFiles,
        serialize: Callable[[MemoryRecord, bool], bytes],
        clock: Clock,
        max_memories: int,
    ) -> None:
        """`serialize(record, with_vector)` is one line of the file,
        newline included."""
        self._memories = memories
        self._files = files
        self._serialize = serialize
        self._clock = clock
        self._max = max_memories

    async def run(self, job: JobControl) -> JobOutcome:
        op = job.operation
        request = ExportRequest.of(op)
        all_end_users = bool(json.loads(op.payload).get("all_end_users"))
        tenant = op.tenant.across_end_users() if all_end_users else op.tenant
        await self._files.prepare(op.tenant)
        writer = self._files.writer(op.tenant, op.id)
        count = written = 0
        try:
            records = self._memories.export_records(
                tenant, request.filter, request.include_embeddings
            )
            async for record in records:
                if count >= self._max:
                    raise ResourceExhausted(
                        f"the export holds more than {self._max} memories, the server's "
                        "limit per export; narrow it with a filter",
                        reason="EXPORT_TOO_LARGE",
                    )
                line = self._serialize(record, request.include_embeddings)
                writer.write(line)
                count += 1
                written += len(line)
                if count % PROGRESS_EVERY == 0:
                    self._files.check_space()
                    await job.checkpoint(_progress(count, written), "")
            self._files.check_space()
            size, digest = writer.commit()
        except BaseException:
            writer.abort()
            raise
        file = ExportFile(count, size, digest, self._clock.now())
        return JobOutcome(OpState.SUCCEEDED, _progress(count, size), file.result())


def _progress(count: int, written: int) -> Mapping[str, Any]:
    return {"memories_written": count, "bytes_written": written}


def _owner(tenant: Tenant) -> Tenant:
    """The operation's own tenant: its environment and end user (none when
    the call named none)."""
    return Tenant(tenant.org_id, tenant.project_id, tenant.environment_id, tenant.end_user_id)


def export_id(name: str) -> str:
    """The id of `exports/{id}` (or a bare id)."""
    return name.removeprefix(NAME_PREFIX)


def _not_found(name: str) -> NotFound:
    return NotFound(f"export '{name}' not found", reason="NOT_FOUND")
