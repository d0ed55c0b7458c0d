"""Documents and folders as stored, and the store's port.

A document belongs to one tenant (organization, project, environment and
the end user of the call that made it, "" for none) from its first line;
every read of the store takes the tenant and confines itself to it, so
another tenant's document is NOT_FOUND like a missing one. Its chunks live
in the knowledge vector store (a store of its own, never the memories'),
each tagged with the *generation* that wrote it (the ingest operation's
id); only the chunks of a READY document's current generation are ever
returned, so a document is searchable all at once or not at all.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from memoryd.domain.operations import Operation
from memoryd.domain.tenancy import Tenant

KIND = "ingest_document"
DOCUMENT_PREFIX = "documents/"
# What a chunk record carries in `source` (chunks are `MemoryRecord`s of
# the knowledge vector store; see `memoryd.domain.knowledge.job`).
CHUNK_SOURCE = "knowledge"


class DocState(enum.Enum):
    PROCESSING = "PROCESSING"
    READY = "READY"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Document:
    id: str
    tenant: Tenant
    display_name: str
    folder: str
    state: DocState
    create_time: datetime
    update_time: datetime
    operation_id: str  # the last ingest operation
    mime_type: str = ""
    size_bytes: int = 0
    sha256: str = ""
    chunk_count: int = 0
    page_count: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source_uri: str = ""
    error: str = ""
    # the ingest operation whose chunks are searchable ("" until READY)
    generation: str = ""


@dataclass(frozen=True)
class Folder:
    name: str
    description: str
    create_time: datetime
    document_count: int = 0


@dataclass(frozen=True)
class Ready:
    """What a finished ingest sets on its document."""

    generation: str
    mime_type: str
    size_bytes: int
    sha256: str
    chunk_count: int
    page_count: int


@dataclass(frozen=True)
class Usage:
    documents: int
    bytes: int


class KnowledgeStore(Protocol):
    """Documents and folders in the control store."""

    async def create_document(
        self, doc: Document, op: Operation, *, new_folder: Folder | None
    ) -> None:
        """Stores the document (new, or its new operation when it exists),
        its ingest operation and, when given, its folder, in one
        transaction."""
        ...

    async def get_document(self, tenant: Tenant, doc_id: str) -> Document | None: ...

    async def find_document(
        self, tenant: Tenant, folder: str, *, sha256: str = "", display_name: str = ""
    ) -> Document | None:
        """The tenant's document in `folder` with that content or name (a
        failed one is never found by content)."""
        ...

    async def list_documents(
        self, tenant: Tenant, folder: str | None, limit: int, before: tuple[datetime, str] | None
    ) -> list[Document]:
        """Newest first, strictly older than `before` (create_time, id)."""
        ...

    async def documents(self, tenant: Tenant, ids: Sequence[str]) -> dict[str, Document]: ...

    async def update_document(
        self, tenant: Tenant, doc_id: str, changes: Mapping[str, Any], now: datetime
    ) -> Document | None:
        """Sets `display_name`, `folder` and/or `metadata`."""
        ...

    async def document_ready(
        self, tenant: Tenant, doc_id: str, ready: Ready, now: datetime
    ) -> bool:
        """The document's new generation is searchable (False: it is gone)."""
        ...

    async def document_failed(
        self, tenant: Tenant, doc_id: str, operation_id: str, error: str, now: datetime
    ) -> None:
        """The ingest `operation_id` failed: a document never READY becomes
        FAILED; a READY one keeps its generation, with the error noted."""
        ...

    async def delete_document(self, tenant: Tenant, doc_id: str) -> bool: ...

    async def knowledge_usage(self, tenant: Tenant) -> Usage:
        """Documents and source bytes of the tenant's environment (every end user)."""
        ...

    async def create_folder(self, tenant: Tenant, folder: Folder) -> Folder: ...

    async def get_folder(self, tenant: Tenant, name: str) -> Folder | None: ...

    async def list_folders(self, tenant: Tenant, limit: int, after: str | None) -> list[Folder]: ...

    async def delete_folder(self, tenant: Tenant, name: str) -> list[str]:
        """Deletes the folder and its documents; answers their ids."""
        ...
