"""Export (every memory matching a filter, oldest first, in pages, whether
it still holds or not) and import (a stream of new memories, created in
chunks)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime

from memoryd.domain.clock import Clock
from memoryd.domain.errors import DomainError
from memoryd.domain.memories.model import Created, ImportSummary, NewMemory
from memoryd.domain.memory import Cursor, Filter, MemoryRecord, Validity, VectorStore
from memoryd.domain.tenancy import Tenant

EXPORT_PAGE = 256
IMPORT_CHUNK = 64
MAX_IMPORT_ERRORS = 100
# An export is complete: memories that no longer hold are history worth keeping.
EVERY_TIME = Validity(include_invalidated=True)


class Exporter:
    def __init__(self, store: VectorStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def export(
        self, tenant: Tenant, flt: Filter, with_vectors: bool
    ) -> AsyncIterator[MemoryRecord]:
        """Every memory of `tenant` matching `flt` (a validated filter),
        oldest first, including those that no longer hold (or do not yet),
        so that an export is complete.

        The store pages newest first, so a first pass notes where each page
        ends (one cursor per EXPORT_PAGE memories, never the memories), then
        the pages are read again from the oldest, each reversed. The export
        holds the memories that existed when it started: none twice, none
        written after it started.
        """
        now = self._clock.now()
        newest, ends = await self._page_ends(tenant, flt, now)
        if newest is None:
            return
        # Page k: the memories older than ends[k - 1] (page 0: from `newest`)
        # down to ends[k] included (the last page: to the oldest).
        for k in reversed(range(len(ends) + 1)):
            records = await self._segment(
                tenant,
                flt,
                now,
                start=ends[k - 1] if k else None,
                floor=ends[k] if k < len(ends) else None,
                newest=newest,
            )
            if with_vectors and records:
                records = await self._with_vectors(tenant, records, now)
            for record in reversed(records):
                yield record

    async def _page_ends(
        self, tenant: Tenant, flt: Filter, now: datetime
    ) -> tuple[Cursor | None, list[Cursor]]:
        """The newest matching memory (None: there is none) and the cursor
        ending each page of EXPORT_PAGE memories, newest first."""
        newest: Cursor | None = None
        ends: list[Cursor] = []
        after: Cursor | None = None
        while True:
            page = await self._store.scroll(tenant, flt, EXPORT_PAGE, now, after, EVERY_TIME)
            if newest is None and page.records:
                newest = Cursor(page.records[0].create_time, page.records[0].id)
            if page.next_cursor is None:
                return newest, ends
            ends.append(page.next_cursor)
            after = page.next_cursor

    async def _segment(
        self,
        tenant: Tenant,
        flt: Filter,
        now: datetime,
        *,
        start: Cursor | None,
        floor: Cursor | None,
        newest: Cursor,
    ) -> list[MemoryRecord]:
        """Newest first: the memories strictly older than `start` (from the
        newest when None) down to `floor` included (to the oldest when None),
        leaving out any newer than `newest`."""
        out: list[MemoryRecord] = []
        after = start
        while True:
            page = await self._store.scroll(tenant, flt, EXPORT_PAGE, now, after, EVERY_TIME)
            for r in page.records:
                if floor is not None and _key(r) < _key(floor):
                    return out
                if _key(r) <= _key(newest):
                    out.append(r)
            if page.next_cursor is None:
                return out
            after = page.next_cursor

    async def _with_vectors(
        self, tenant: Tenant, records: list[MemoryRecord], now: datetime
    ) -> list[MemoryRecord]:
        by_id = {
            r.id: r
            for r in await self._store.get(tenant, [r.id for r in records], now, with_vectors=True)
        }
        return [by_id.get(r.id, r) for r in records]


def _key(at: MemoryRecord | Cursor) -> tuple[datetime, str]:
    """The position of a memory in the store's (create_time, id) order."""
    return (at.create_time, at.id)


CreateChunk = Callable[[Sequence[NewMemory]], Awaitable[list[Created | DomainError]]]


async def import_items(
    items: AsyncIterator[NewMemory | DomainError], create: CreateChunk
) -> ImportSummary:
    """Creates the stream's memories with `create`, IMPORT_CHUNK items at a
    time. An item that did not even convert (a DomainError in the stream)
    counts as failed; `errors` holds the first MAX_IMPORT_ERRORS failures,
    in stream order."""
    summary = ImportSummary(0, 0, [])
    # Items that did not even convert stay in the chunk, so that failures
    # are recorded in stream order and `errors` holds the first ones.
    chunk: list[tuple[int, NewMemory | DomainError]] = []
    index = 0
    async for item in items:
        chunk.append((index, item))
        if len(chunk) >= IMPORT_CHUNK:
            summary = await _flush(chunk, create, summary)
        index += 1
    if chunk:
        summary = await _flush(chunk, create, summary)
    return summary


async def _flush(
    chunk: list[tuple[int, NewMemory | DomainError]], create: CreateChunk, summary: ImportSummary
) -> ImportSummary:
    """`summary` counting the chunk's items, once created; empties `chunk`."""
    news = [it for _, it in chunk if not isinstance(it, DomainError)]
    created = iter(await create(news) if news else [])
    imported, failed, errors = summary.imported, summary.failed, summary.errors
    for i, item in chunk:
        result = item if isinstance(item, DomainError) else next(created)
        if isinstance(result, DomainError):
            failed += 1
            if len(errors) < MAX_IMPORT_ERRORS:
                errors.append((i, result))
        else:
            imported += 1
    chunk.clear()
    return ImportSummary(imported, failed, errors)
