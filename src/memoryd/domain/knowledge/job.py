"""The ingest job: a document's bytes (spooled at upload, or downloaded
now) → its text → chunks → vectors → the knowledge vector store, then the
document READY with this generation, in one SQL write. Only then are the
previous generation's chunks removed, so a replaced document is searchable
throughout, and never as a mix (search keeps the current generation only).

A chunk is a `MemoryRecord` of the knowledge store: id uuid5(document,
"<generation>:<index>") (a re-run after a crash writes the same ids),
content its text, thread_id the document id, agent_id its folder, source
"knowledge", metadata the document's, origin (generation, (index, start,
end)). A failed or cancelled ingest removes the chunks it wrote.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from memoryd.domain.changes import EventType
from memoryd.domain.clock import Clock
from memoryd.domain.errors import DomainError, NotFound, Unavailable
from memoryd.domain.knowledge.model import CHUNK_SOURCE, Document, Ready
from memoryd.domain.knowledge.reading import DocumentReader, Splitter, TextChunk
from memoryd.domain.knowledge.service import HEAD_BYTES, KnowledgeService, Spool, SpoolFile
from memoryd.domain.memory import Embedder, MemoryRecord, Origin, VectorStore
from memoryd.domain.operations import JobControl, JobOutcome, OpState

log = logging.getLogger("memoryd.knowledge")

# Chunks embedded and stored per step (a progress checkpoint and a cancel
# point between steps).
BATCH = 64


class Fetcher(Protocol):
    async def fetch(self, url: str, into: SpoolFile) -> str:
        """Downloads `url` into the file through the outbound guard; answers
        the response's content type. Raises FailedPrecondition (refused,
        too large, a bad status or type) or Unavailable (try again)."""
        ...


@dataclass(frozen=True)
class _Payload:
    document_id: str
    mime_type: str
    display_name: str
    source_uri: str
    spooled: bool
    size_bytes: int
    sha256: str

    @staticmethod
    def of(text: str) -> _Payload:
        d = json.loads(text)
        return _Payload(
            d["document_id"],
            d.get("mime_type", ""),
            d.get("display_name", ""),
            d.get("source_uri", ""),
            bool(d.get("spooled")),
            int(d.get("size_bytes", 0)),
            str(d.get("sha256", "")),
        )


class IngestJob:
    def __init__(
        self,
        knowledge: KnowledgeService,
        store: Any,  # KnowledgeStore
        chunks: VectorStore,
        embedder: Embedder,
        reader: DocumentReader,
        splitter: Splitter,
        spool: Spool,
        fetcher: Fetcher,
        clock: Clock,
        max_attempts: int,
    ) -> None:
        self._knowledge = knowledge
        self._store = store
        self._chunks = chunks
        self._embedder = embedder
        self._reader = reader
        self._splitter = splitter
        self._spool = spool
        self._fetcher = fetcher
        self._clock = clock
        self._max_attempts = max_attempts

    async def run(self, job: JobControl) -> JobOutcome:
        op = job.operation
        p = _Payload.of(op.payload)
        doc = await self._store.get_document(op.tenant, p.document_id)
        if doc is None:
            self._spool.remove(op.id)
            raise NotFound("the document was deleted before it was ingested")
        try:
            mime, size, sha = await self._source(job, p)
            pages = [0]

            def on_page(n: int) -> None:
                pages[0] = n

            parsed = await asyncio.to_thread(
                self._reader.parse, self._spool.path(op.id), mime, on_page
            )
            pieces = await asyncio.to_thread(self._splitter.split, parsed)
            info: dict[str, Any] = {
                "document_id": doc.id,
                "bytes_read": size,
                "pages": parsed.pages,
                "chunks": len(pieces),
                "chunks_embedded": 0,
                "progress_percent": 10,
            }
            await job.checkpoint(info, "")
            for start in range(0, len(pieces), BATCH):
                batch = pieces[start : start + BATCH]
                vectors = await self._embedder.embed(
                    [c.text for c in batch], fairness_key=op.tenant.org_id
                )
                await self._chunks.upsert(
                    doc.tenant,
                    [self._record(doc, op.id, c, v) for c, v in zip(batch, vectors, strict=True)],
                )
                written = start + len(batch)
                info |= {
                    "chunks_embedded": written,
                    "progress_percent": 10 + 89 * written // max(len(pieces), 1),
                }
                await job.checkpoint(info, "")
            ready = Ready(op.id, mime, size, sha, len(pieces), parsed.pages)
            if not await self._store.document_ready(doc.tenant, doc.id, ready, self._clock.now()):
                raise NotFound("the document was deleted while it was ingested")
            now_ready = await self._store.get_document(doc.tenant, doc.id)
            if now_ready is not None:
                await self._knowledge.record(
                    EventType.DOCUMENT_READY, now_ready, operation_id=op.id
                )
        except Unavailable as err:
            if op.attempts < self._max_attempts:
                raise  # tried again later, from the spooled file
            await self._failed(doc, op.id, err)
            raise
        except BaseException as err:  # failed, or cancelled
            await asyncio.shield(self._failed(doc, op.id, err))
            raise
        self._spool.remove(op.id)
        # the previous generation's chunks (a replaced document)
        await self._knowledge.delete_chunks(doc.tenant, doc.id, keep=op.id)
        info |= {"progress_percent": 100}
        return JobOutcome(OpState.SUCCEEDED, info, json.dumps({"document_id": doc.id}))

    async def _source(self, job: JobControl, p: _Payload) -> tuple[str, int, str]:
        """The document's type, size and digest, its bytes in the spool
        (downloaded now for a URL)."""
        op = job.operation
        path = self._spool.path(op.id)
        if p.spooled:
            if not path.is_file():
                raise Unavailable(
                    "the uploaded bytes of this document are not on this server's disk "
                    "(another replica received them)",
                    reason="SPOOL_MISSING",
                )
            with path.open("rb") as f:
                head = f.read(HEAD_BYTES)
            return (
                self._reader.detect(head, p.mime_type, p.display_name),
                p.size_bytes,
                p.sha256,
            )
        spooled = self._spool.create(op.id)
        try:
            declared = await self._fetcher.fetch(p.source_uri, spooled)
            sha = spooled.finish()
            mime = self._reader.detect(spooled.head, declared or p.mime_type, p.display_name)
        except BaseException:
            spooled.discard()
            raise
        return mime, spooled.size, sha

    def _record(self, doc: Document, generation: str, c: TextChunk, vector: Any) -> MemoryRecord:
        now = self._clock.now()
        return MemoryRecord(
            id=chunk_id(doc.id, generation, c.index),
            tenant=doc.tenant,
            content=c.text,
            metadata=dict(doc.metadata),
            agent_id=doc.folder,
            thread_id=doc.id,
            source=CHUNK_SOURCE,
            tags=(),
            create_time=now,
            update_time=now,
            expire_time=None,
            revision=1,
            vector=tuple(vector),
            valid_time=now,
            origin=Origin(operation_id=generation, message_indexes=(c.index, c.start, c.end)),
        )

    async def _failed(self, doc: Document, op_id: str, err: BaseException) -> None:
        """Removes what this attempt wrote and notes the failure on the
        document (never raising: the original error is what counts)."""
        why = err.message if isinstance(err, DomainError) else "the ingest was cancelled"
        if not isinstance(err, DomainError | asyncio.CancelledError):
            why = "the ingest failed (an internal error; see the server log)"
        try:
            await self._knowledge.delete_chunks(doc.tenant, doc.id, only=op_id)
            await self._store.document_failed(doc.tenant, doc.id, op_id, why, self._clock.now())
            failed = await self._store.get_document(doc.tenant, doc.id)
            if failed is not None:
                await self._knowledge.record(
                    EventType.DOCUMENT_FAILED, replace(failed, error=why), operation_id=op_id
                )
        except Exception:
            log.exception("could not clean up the failed ingest of document %s", doc.id)
        self._spool.remove(op_id)


def chunk_id(document_id: str, generation: str, index: int) -> str:
    return str(uuid.uuid5(uuid.UUID(document_id), f"{generation}:{index}"))


def ingest_info(info: Mapping[str, Any]) -> dict[str, int]:
    """The progress counters of an ingest operation's info."""
    keys = ("bytes_read", "pages", "chunks", "chunks_embedded", "progress_percent")
    return {k: int(info.get(k, 0)) for k in keys}
