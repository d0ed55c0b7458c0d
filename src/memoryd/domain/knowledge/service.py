"""KnowledgeService's rules: documents accepted as ingest operations,
read, changed and deleted; folders; and the search over chunks.

Accepting a document stores its bytes in the spool (an upload is written
as it arrives, never held whole in memory), then the document row and its
ingest operation in one transaction, before the call answers; the job
(`memoryd.domain.knowledge.job`) reads, chunks and embeds it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from memoryd.domain import paging
from memoryd.domain.audit import Auditor, PendingEvent
from memoryd.domain.changes import EventType, NewEvent
from memoryd.domain.clock import Clock
from memoryd.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
    Violations,
)
from memoryd.domain.knowledge.model import (
    CHUNK_SOURCE,
    DOCUMENT_PREFIX,
    KIND,
    DocState,
    Document,
    Folder,
    KnowledgeStore,
)
from memoryd.domain.knowledge.reading import DocumentReader
from memoryd.domain.memories import MemoryService
from memoryd.domain.memories.export_import import EVERY_TIME
from memoryd.domain.memories.filters import validate_filter
from memoryd.domain.memories.matching import matches
from memoryd.domain.memories.recording import ChangeRecorder
from memoryd.domain.memories.validation import check_metadata
from memoryd.domain.memory import Filter, Match, MemoryRecord, VectorStore
from memoryd.domain.operations import Operation, OpState, new_operation_id
from memoryd.domain.tenancy import Caller, Scope, Tenant

MAX_NAME_CHARS = 200
MAX_TOP_K = 100
DEFAULT_TOP_K = 10
# The first bytes of a document that decide its type.
HEAD_BYTES = 8192
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
# Chunks asked of the engine per result wanted: stale generations are
# dropped after the search (see `search`).
_OVERFETCH = 2
_OVERFETCH_EXTRA = 10


class SpoolFile(Protocol):
    def write(self, data: bytes) -> None: ...

    @property
    def size(self) -> int: ...

    @property
    def head(self) -> bytes: ...

    def finish(self) -> str:
        """Syncs the file; answers its SHA-256 (hex)."""
        ...

    def discard(self) -> None: ...


class Spool(Protocol):
    """Where a document's bytes wait for its job (by operation id)."""

    def create(self, op_id: str) -> SpoolFile: ...

    def path(self, op_id: str) -> Any:
        """The file's path (a `pathlib.Path`)."""
        ...

    def remove(self, op_id: str) -> None: ...


@dataclass(frozen=True)
class NewDocument:
    """A document to ingest: its bytes come from `text`, an upload, or
    `source_uri` (fetched by the job)."""

    display_name: str = ""
    folder: str = ""
    mime_type: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    replace: bool = False
    source_uri: str = ""


@dataclass(frozen=True)
class FoundChunk:
    document: Document
    index: int
    start: int
    end: int
    text: str
    score: float


@dataclass(frozen=True)
class DocumentPage:
    documents: list[Document]
    next_page_token: str


@dataclass(frozen=True)
class FolderPage:
    folders: list[Folder]
    next_page_token: str


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int
    max_documents: int  # per environment (0: no limit)
    max_bytes: int  # per environment (0: no limit)


class KnowledgeService:
    def __init__(
        self,
        store: KnowledgeStore,
        chunks: VectorStore,
        memories: MemoryService,
        reader: DocumentReader,
        spool: Spool,
        clock: Clock,
        limits: Limits,
        *,
        auditor: Auditor | None = None,
        on_stored: Callable[[], None] = lambda: None,
        changes: ChangeRecorder | None = None,
    ) -> None:
        """`memories` gives a call's tenant (the end-user rules) and embeds
        queries; `chunks` is the knowledge vector store."""
        self._store = store
        self._chunks = chunks
        self._memories = memories
        self._reader = reader
        self._spool = spool
        self._clock = clock
        self.limits = limits
        self._auditor = auditor
        self._on_stored = on_stored
        self._changes = changes or ChangeRecorder()

    # --- accepting documents --------------------------------------------------------

    async def create_from_text(self, caller: Caller, new: NewDocument, text: str) -> Operation:
        tenant = await self._writer(caller)
        self._validate(new)
        if not new.source_uri and not text.strip():
            raise InvalidArgument.field("text", "is required (or give source_uri)")
        if new.source_uri:
            if not new.source_uri.startswith(("http://", "https://")):
                raise InvalidArgument.field("source_uri", "must be an http:// or https:// URL")
            return await self._accept(caller, tenant, new, None)
        data = text.encode()
        self._check_size(len(data))
        op_id = new_operation_id()
        spooled = self._spool.create(op_id)
        try:
            spooled.write(data)
            return await self._accept(caller, tenant, new, spooled, op_id)
        except BaseException:
            spooled.discard()
            raise

    async def upload(
        self, caller: Caller, new: NewDocument, chunks: AsyncIterator[bytes]
    ) -> Operation:
        """`chunks`: the upload's bytes as they arrive."""
        tenant = await self._writer(caller)
        self._validate(new)
        op_id = new_operation_id()
        spooled = self._spool.create(op_id)
        try:
            async for data in chunks:
                spooled.write(data)
                self._check_size(spooled.size)
            if not spooled.size:
                raise InvalidArgument.field("data", "the upload holds no bytes")
            return await self._accept(caller, tenant, new, spooled, op_id)
        except BaseException:
            spooled.discard()
            raise

    async def _accept(
        self,
        caller: Caller,
        tenant: Tenant,
        new: NewDocument,
        spooled: SpoolFile | None,
        op_id: str = "",
    ) -> Operation:
        op_id = op_id or new_operation_id()
        mime, sha = "", ""
        if spooled is not None:
            mime = self._reader.detect(spooled.head, new.mime_type, new.display_name)
            sha = spooled.finish()
        await self._check_quota(tenant, spooled.size if spooled else 0)
        now = self._clock.now()
        name = new.display_name or _default_name(new.source_uri)
        existing = None
        if new.replace:
            existing = await self._store.find_document(tenant, new.folder, display_name=name)
        elif sha:
            same = await self._store.find_document(tenant, new.folder, sha256=sha)
            if same is not None:
                if spooled is not None:
                    spooled.discard()
                return await self._existing(caller, tenant, same, now)
        doc = Document(
            id=existing.id if existing else str(uuid.uuid4()),
            tenant=tenant,
            display_name=name,
            folder=new.folder,
            state=DocState.PROCESSING,
            create_time=now,
            update_time=now,
            operation_id=op_id,
            mime_type=mime,
            size_bytes=spooled.size if spooled else 0,
            sha256=sha,
            metadata=dict(new.metadata),
            source_uri=new.source_uri,
        )
        op = Operation(
            id=op_id,
            kind=KIND,
            tenant=tenant,
            key_id=caller.principal.key_id,
            scopes=caller.principal.scopes,
            state=OpState.PENDING,
            payload=_json(
                {
                    "document_id": doc.id,
                    "mime_type": new.mime_type,
                    "display_name": name,
                    "source_uri": new.source_uri,
                    "spooled": spooled is not None,
                    "size_bytes": doc.size_bytes,
                    "sha256": sha,
                }
            ),
            create_time=now,
            update_time=now,
            info={"document_id": doc.id, "bytes_read": doc.size_bytes},
        )
        folder = Folder(new.folder, "", now) if new.folder else None
        async with self._audited(caller, tenant, "document.create", doc.id):
            await self._store.create_document(doc, op, new_folder=folder)
        self._on_stored()
        return op

    async def _existing(
        self, caller: Caller, tenant: Tenant, doc: Document, now: datetime
    ) -> Operation:
        """The same content already in the folder: an operation, done at
        once, whose response is that document."""
        op = Operation(
            id=new_operation_id(),
            kind=KIND,
            tenant=tenant,
            key_id=caller.principal.key_id,
            scopes=caller.principal.scopes,
            state=OpState.SUCCEEDED,
            payload=_json({"document_id": doc.id, "existing": True}),
            create_time=now,
            update_time=now,
            info={"document_id": doc.id, "existing": True, "progress_percent": 100},
            result=_json({"document_id": doc.id}),
            start_time=now,
            end_time=now,
        )
        await self._store.create_document(doc, op, new_folder=None)
        return op

    # --- reading and changing ---------------------------------------------------------

    async def get(self, caller: Caller, name: str) -> Document:
        tenant = await self._reader_tenant(caller)
        return await self._read(tenant, name)

    async def document_of(self, tenant: Tenant, doc_id: str) -> Document | None:
        """The document an ingest operation of `tenant` names (for its view)."""
        return await self._store.get_document(tenant, doc_id)

    async def list_documents(
        self, caller: Caller, folder: str, flt: Filter, page_size: int, page_token: str
    ) -> DocumentPage:
        tenant = await self._reader_tenant(caller)
        validate_filter(flt)
        _check_metadata_only(flt)
        size = paging.page_size(page_size)
        fp = paging.fingerprint("documents", tenant.end_user_id, folder + repr(flt))
        raw = paging.decode_keyset(page_token, fp)
        before = (datetime.fromisoformat(raw[0]), raw[1]) if raw else None
        out: list[Document] = []
        more = False
        while True:
            batch = await self._store.list_documents(tenant, folder or None, size + 1, before)
            for d in batch:
                if flt.empty or matches(flt, _as_record(d)):
                    if len(out) == size:
                        more = True
                        break
                    out.append(d)
            if more or len(batch) <= size:
                break
            before = (batch[-1].create_time, batch[-1].id)
        token = ""
        if more:
            last = out[-1]
            token = paging.encode_keyset(fp, (last.create_time.isoformat(), last.id))
        return DocumentPage(out, token)

    async def update(
        self, caller: Caller, name: str, paths: Sequence[str], changes: Mapping[str, Any]
    ) -> Document:
        tenant = await self._writer(caller, Scope.KNOWLEDGE_WRITE, ingest=False)
        v = Violations()
        allowed = {"display_name", "folder", "metadata"}
        for p in paths:
            if p not in allowed:
                v.add(
                    "update_mask", f"cannot change {p!r}; changeable: {', '.join(sorted(allowed))}"
                )
        if not paths:
            v.add("update_mask", "names no field to change")
        wanted = {p: changes[p] for p in paths if p in allowed}
        self._validate(
            NewDocument(
                display_name=str(wanted.get("display_name", "x")),
                folder=str(wanted.get("folder", "")),
                metadata=wanted.get("metadata", {}),
            ),
            v,
        )
        doc = await self._read(tenant, name)
        async with self._audited(caller, tenant, "document.update", doc.id):
            if wanted.get("folder"):
                await self._ensure_folder(doc.tenant, str(wanted["folder"]))
            updated = await self._store.update_document(tenant, doc.id, wanted, self._clock.now())
            if updated is None:
                raise _not_found(name)
            if {"folder", "metadata"} & wanted.keys():
                await self._restamp(updated)
        return updated

    async def delete(self, caller: Caller, name: str) -> None:
        tenant = await self._writer(caller, Scope.KNOWLEDGE_DELETE, ingest=False)
        doc = await self._read(tenant, name)
        async with self._audited(caller, tenant, "document.delete", doc.id):
            if not await self._store.delete_document(tenant, doc.id):
                raise _not_found(name)
            await self.delete_chunks(doc.tenant, doc.id)
            await self.record(EventType.DOCUMENT_DELETED, doc, request_id=caller.request_id)

    async def delete_chunks(
        self, tenant: Tenant, doc_id: str, *, keep: str | None = None, only: str | None = None
    ) -> int:
        """Deletes the document's chunks: all, all but those of generation
        `keep`, or only those of generation `only`."""
        flt = Filter(must=(Match("thread_id", doc_id),))
        if keep is None and only is None:
            return await self._chunks.delete_matching(tenant, flt, self._clock.now())
        stale: list[str] = []
        now = self._clock.now()
        after = None
        while True:
            page = await self._chunks.scroll(tenant, flt, 256, now, after, EVERY_TIME)
            stale += [
                r.id
                for r in page.records
                if (keep is not None and r.origin.operation_id != keep)
                or (only is not None and r.origin.operation_id == only)
            ]
            if page.next_cursor is None:
                break
            after = page.next_cursor
        if stale:
            await self._chunks.delete(tenant, stale)
        return len(stale)

    async def record(
        self, kind: EventType, doc: Document, *, operation_id: str = "", request_id: str = ""
    ) -> None:
        """Appends a document event to the change log (webhooks that name it)."""
        await self._changes.record_events(
            [self._event(kind, doc, operation_id=operation_id, request_id=request_id)]
        )

    def _event(
        self, kind: EventType, doc: Document, *, operation_id: str = "", request_id: str = ""
    ) -> NewEvent:
        return NewEvent(
            type=kind,
            tenant=doc.tenant,
            memory_id="",
            time=self._clock.now(),
            operation_id=operation_id,
            request_id=request_id,
            details={
                "document": DOCUMENT_PREFIX + doc.id,
                "document_id": doc.id,
                "display_name": doc.display_name,
                "folder": doc.folder,
                "state": doc.state.value,
                "mime_type": doc.mime_type,
                "chunk_count": doc.chunk_count,
                "error": doc.error,
            },
        )

    async def _restamp(self, doc: Document) -> None:
        """Writes a document's folder and metadata onto its chunks, which
        SearchKnowledge filters by."""
        flt = Filter(must=(Match("thread_id", doc.id),))
        now = self._clock.now()
        after = None
        while True:
            page = await self._chunks.scroll(doc.tenant, flt, 256, now, after, EVERY_TIME)
            if page.records:
                full = await self._chunks.get(
                    doc.tenant, [r.id for r in page.records], now, with_vectors=True
                )
                await self._chunks.upsert(
                    doc.tenant,
                    [
                        replace(
                            r, agent_id=doc.folder, metadata=dict(doc.metadata), update_time=now
                        )
                        for r in full
                    ],
                )
            if page.next_cursor is None:
                return
            after = page.next_cursor

    # --- search -----------------------------------------------------------------------

    async def search(
        self,
        caller: Caller,
        query: str,
        vector: Sequence[float] | None,
        flt: Filter,
        folder: str,
        top_k: int,
        min_score: float | None,
    ) -> list[FoundChunk]:
        tenant = await self._reader_tenant(caller)
        v = Violations()
        if not query.strip() and not vector:
            v.add("query", "is required (or give query_embedding)")
        if not 0 <= top_k <= MAX_TOP_K:
            v.add("top_k", f"must be 1 to {MAX_TOP_K} (0: {DEFAULT_TOP_K})")
        if min_score is not None and not -1.0 <= min_score <= 1.0:
            v.add("min_score", "must be between -1 and 1")
        v.raise_if_any("the SearchKnowledge request has invalid fields")
        validate_filter(flt)
        _check_metadata_only(flt)
        k = top_k or DEFAULT_TOP_K
        vector = await self._memories.query_vector(caller, query, vector)
        must = flt.must + ((Match("agent_id", folder),) if folder else ())
        scoped = replace(flt, must=must)
        hits = await self._chunks.search(
            [tenant],
            vector,
            scoped,
            k * _OVERFETCH + _OVERFETCH_EXTRA,
            self._clock.now(),
            min_score=min_score,
        )
        docs = await self._store.documents(tenant, [h.record.thread_id for h in hits])
        found: list[FoundChunk] = []
        for h in hits:
            r = h.record
            doc = docs.get(r.thread_id)
            # all or nothing: only the current generation of a READY document
            if doc is None or doc.state is not DocState.READY:
                continue
            if r.origin.operation_id != doc.generation or len(r.origin.message_indexes) != 3:
                continue
            index, start, end = r.origin.message_indexes
            found.append(FoundChunk(doc, index, start, end, r.content, h.score))
            if len(found) == k:
                break
        return found

    # --- folders ------------------------------------------------------------------------

    async def create_folder(self, caller: Caller, name: str, description: str) -> Folder:
        tenant = await self._writer(caller, Scope.KNOWLEDGE_WRITE, ingest=False)
        v = Violations()
        _check_folder(v, "folder.name", name, required=True)
        if len(description) > 1000:
            v.add("folder.description", "is longer than 1000 characters")
        v.raise_if_any("the folder has invalid fields")
        made = Folder(name, description, self._clock.now())
        async with self._audited(caller, tenant, "folder.create", name):
            try:
                return await self._store.create_folder(tenant, made)
            except AlreadyExists:
                raise AlreadyExists(
                    f"the folder '{name}' already exists", reason="ALREADY_EXISTS"
                ) from None

    async def list_folders(self, caller: Caller, page_size: int, page_token: str) -> FolderPage:
        tenant = await self._reader_tenant(caller)
        size = paging.page_size(page_size)
        fp = paging.fingerprint("folders", tenant.end_user_id, "")
        raw = paging.decode_keyset(page_token, fp)
        after = raw[0] if raw else None
        folders = await self._store.list_folders(tenant, size + 1, after)
        page, more = folders[:size], len(folders) > size
        token = paging.encode_keyset(fp, (page[-1].name, "")) if more else ""
        return FolderPage(page, token)

    async def delete_folder(self, caller: Caller, name: str, force: bool) -> None:
        tenant = await self._writer(caller, Scope.KNOWLEDGE_DELETE, ingest=False)
        folder = await self._store.get_folder(tenant, name)
        if folder is None:
            raise NotFound(f"folder '{name}' not found", reason="NOT_FOUND")
        if folder.document_count and not force:
            raise FailedPrecondition(
                f"the folder '{name}' holds {folder.document_count} documents: delete them "
                "first, or delete the folder with force",
                reason="FOLDER_NOT_EMPTY",
            )
        async with self._audited(caller, tenant, "folder.delete", name):
            docs = await self._store.documents(
                tenant, await self._store.delete_folder(tenant, name)
            )
            for doc in docs.values():
                await self.delete_chunks(doc.tenant, doc.id)
            await self._changes.record_events(
                [
                    self._event(EventType.DOCUMENT_DELETED, d, request_id=caller.request_id)
                    for d in docs.values()
                ]
            )

    async def _ensure_folder(self, tenant: Tenant, name: str) -> None:
        if await self._store.get_folder(tenant, name) is None:
            with suppress(AlreadyExists):
                await self._store.create_folder(tenant, Folder(name, "", self._clock.now()))

    # --- rules --------------------------------------------------------------------------

    async def _writer(
        self, caller: Caller, scope: str = Scope.KNOWLEDGE_WRITE, *, ingest: bool = True
    ) -> Tenant:
        tenant = await self._reader_tenant(caller, scope)
        if ingest:
            caller.principal.require(Scope.INGEST_WRITE)
        return _own(tenant)

    async def _reader_tenant(self, caller: Caller, scope: str = Scope.KNOWLEDGE_READ) -> Tenant:
        tenant, _ = await self._memories.authorize(caller, scope)
        return await self._memories.reach(caller, tenant, "knowledge")

    async def _read(self, tenant: Tenant, name: str) -> Document:
        doc = await self._store.get_document(tenant, document_id(name))
        if doc is None:
            raise _not_found(name)
        return doc

    def _validate(self, new: NewDocument, v: Violations | None = None) -> None:
        own = v is None
        v = v or Violations()
        if len(new.display_name) > MAX_NAME_CHARS:
            v.add("display_name", f"is longer than {MAX_NAME_CHARS} characters")
        _check_folder(v, "folder", new.folder, required=False)
        check_metadata(v, "metadata", new.metadata)
        if own:
            v.raise_if_any("the document has invalid fields")
        else:
            v.raise_if_any("the update has invalid fields")

    def _check_size(self, size: int) -> None:
        if size > self.limits.max_upload_bytes:
            raise InvalidArgument.field(
                "data",
                f"the document is larger than {self.limits.max_upload_bytes} bytes, the "
                "server's limit (MEMORYD_KNOWLEDGE_MAX_UPLOAD_BYTES)",
            )

    async def _check_quota(self, tenant: Tenant, adding: int) -> None:
        lim = self.limits
        if not lim.max_documents and not lim.max_bytes:
            return
        used = await self._store.knowledge_usage(tenant)
        if lim.max_documents and used.documents + 1 > lim.max_documents:
            raise ResourceExhausted(
                f"this environment holds {used.documents} documents, its quota is "
                f"{lim.max_documents}; delete documents first",
                [QuotaViolation("environment.documents", f"max_documents={lim.max_documents}")],
                reason="DOCUMENT_QUOTA_EXCEEDED",
            )
        if lim.max_bytes and used.bytes + adding > lim.max_bytes:
            raise ResourceExhausted(
                f"this environment holds {used.bytes} bytes of documents; adding {adding} "
                f"would pass its quota of {lim.max_bytes}; delete documents first",
                [QuotaViolation("environment.document_bytes", f"max_bytes={lim.max_bytes}")],
                reason="DOCUMENT_BYTES_QUOTA_EXCEEDED",
            )

    def _audited(
        self, caller: Caller, tenant: Tenant, action: str, target: str
    ) -> AbstractAsyncContextManager[PendingEvent]:
        if self._auditor is None:
            return _unaudited()
        return self._auditor.action(
            caller,
            action,
            target=target,
            project_id=tenant.project_id,
            environment_id=tenant.environment_id,
        )


@asynccontextmanager
async def _unaudited() -> AsyncIterator[PendingEvent]:
    yield PendingEvent("", "", "")


def document_id(name: str) -> str:
    return name.removeprefix(DOCUMENT_PREFIX)


def _own(tenant: Tenant) -> Tenant:
    """What a new document belongs to: the environment and the call's end
    user (none when it names none)."""
    return Tenant(tenant.org_id, tenant.project_id, tenant.environment_id, tenant.end_user_id)


def _check_folder(v: Violations, name: str, folder: str, *, required: bool) -> None:
    if not folder:
        if required:
            v.add(name, "is required")
        return
    if not _FOLDER.match(folder) or ".." in folder or folder.endswith("/"):
        v.add(
            name,
            "must start with a letter or digit and hold only letters, digits, '.', '_', "
            "'-' and '/' (no '..', no trailing '/'), at most 200 characters",
        )


def _check_metadata_only(flt: Filter) -> None:
    """A knowledge filter names document metadata only."""

    def fields(f: Filter) -> list[str]:
        out: list[str] = []
        for c in (*f.must, *f.should, *f.must_not):
            out += fields(c) if isinstance(c, Filter) else [c.field]
        return out

    bad = sorted({f for f in fields(flt) if not f.startswith("metadata.")})
    if bad:
        raise InvalidArgument.field(
            "filter", f"may name document metadata only (metadata.<key>), not {', '.join(bad)}"
        )


def _as_record(d: Document) -> MemoryRecord:
    """A document as the filter matcher reads one (metadata only)."""
    return MemoryRecord(
        id=d.id,
        tenant=d.tenant,
        content="",
        metadata=d.metadata,
        agent_id=d.folder,
        thread_id=d.id,
        source=CHUNK_SOURCE,
        tags=(),
        create_time=d.create_time,
        update_time=d.update_time,
        expire_time=None,
        revision=1,
    )


def _default_name(uri: str) -> str:
    """A URL's last path segment, else "document"."""
    tail = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] if uri else ""
    return tail[:MAX_NAME_CHARS] or "document"


def _not_found(name: str) -> NotFound:
    return NotFound(f"document '{name}' not found", reason="NOT_FOUND")


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
