"""Reading memories a call already reaches: one by id (whether it still
holds or not), a page of a filtered list (newest first, keyset tokens, of
the memories a `Validity` admits), and a page of one memory's revisions."""

from __future__ import annotations

from datetime import datetime

from memoryd.domain import paging
from memoryd.domain.clock import Clock
from memoryd.domain.errors import InvalidArgument, NotFound
from memoryd.domain.ids import is_uuid
from memoryd.domain.memories.model import MemoryPage
from memoryd.domain.memory import Cursor, Filter, MemoryRecord, Revision, Validity, VectorStore
from memoryd.domain.tenancy import Tenant


class Reader:
    def __init__(self, store: VectorStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def one(self, tenant: Tenant, memory_id: str, with_vector: bool = False) -> MemoryRecord:
        """The memory `memory_id` of `tenant`; NotFound when it has none
        (also for an id that is not a memory id at all)."""
        if not memory_id:
            raise InvalidArgument.field("id", "is required")
        if not is_uuid(memory_id):
            raise NotFound(f"memory {memory_id!r} not found")
        found = await self._store.get(
            tenant, [memory_id], self._clock.now(), with_vectors=with_vector
        )
        if not found:
            raise NotFound(f"memory {memory_id!r} not found")
        return found[0]

    async def page(
        self,
        tenant: Tenant,
        flt: Filter,
        size: int,
        after: Cursor | None,
        fingerprint: str,
        validity: Validity,
    ) -> MemoryPage:
        """A page of `tenant`'s memories matching `flt` (a validated
        filter) that `validity` admits, older than `after`, and the token of
        the next page, bound to the query by `fingerprint`."""
        page = await self._store.scroll(tenant, flt, size, self._clock.now(), after, validity)
        token = ""
        if page.next_cursor is not None:
            token = paging.encode_keyset(
                fingerprint, (page.next_cursor.create_time.isoformat(), page.next_cursor.id)
            )
        return MemoryPage(page.records, token)

    async def revisions(
        self, tenant: Tenant, memory_id: str, page_size: int, page_token: str
    ) -> tuple[list[Revision], str]:
        """A page of the past states of memory `memory_id`, newest first,
        and the token of the next page ("" at the end)."""
        record = await self.one(tenant, memory_id)
        size = paging.page_size(page_size)
        fp = paging.fingerprint("revisions", memory_id)
        start = paging.decode_token(page_token, fp) or 0
        if not isinstance(start, int) or start < 0:
            raise InvalidArgument.field("page_token", "is not a token this server issued")
        items = list(record.revisions[start : start + size])
        more = start + size < len(record.revisions)
        return items, paging.encode_token(fp, start + size) if more else ""


def keyset_after(page_token: str, fingerprint: str) -> Cursor | None:
    """Where the page of `page_token` starts (None: the first page); raises
    InvalidArgument for a token not issued for this query."""
    raw = paging.decode_keyset(page_token, fingerprint)
    return Cursor(datetime.fromisoformat(raw[0]), raw[1]) if raw else None
