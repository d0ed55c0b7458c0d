"""A vector store opened at its first use (the knowledge chunks' store):
a server that never ingests a document never creates it, so its disk and
start-up cost nothing. Deleting a scope of a store never opened deletes
nothing (it holds nothing) without creating it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

from memoryd.domain.memory import (
    BY_MEANING,
    CURRENT,
    Cursor,
    Filter,
    MemoryRecord,
    OnDeleted,
    Page,
    Ranking,
    ScoredRecord,
    Validity,
    VectorStore,
)
from memoryd.domain.tenancy import Tenant


class LazyVectorStore:
    """`VectorStore` that opens `make()` at the first call; `exists()`
    tells whether the store was ever created (then `delete_scope` opens it)."""

    def __init__(self, make: Callable[[], VectorStore], exists: Callable[[], bool]) -> None:
        self._make = make
        self._exists = exists
        self._store: VectorStore | None = None
        self._identity: tuple[str, int] | None = None
        self._lock = asyncio.Lock()

    async def _opened(self) -> VectorStore:
        if self._store is None:
            async with self._lock:
                if self._store is None:
                    assert self._identity is not None, "open() was not called"
                    store = self._make()
                    await store.open(*self._identity)
                    self._store = store
        return self._store

    def _absent(self) -> bool:
        """Never created: it holds nothing (reads answer so without making it)."""
        return self._store is None and not self._exists()

    async def open(self, model_id: str, dimension: int) -> None:
        self._identity = (model_id, dimension)
        if self._exists():  # made before: check the model now, at start-up
            await self._opened()

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def upsert(self, tenant: Tenant, records: Sequence[MemoryRecord]) -> None:
        await (await self._opened()).upsert(tenant, records)

    async def get(
        self, tenant: Tenant, ids: Sequence[str], now: datetime, *, with_vectors: bool = False
    ) -> list[MemoryRecord]:
        return await (await self._opened()).get(tenant, ids, now, with_vectors=with_vectors)

    async def delete(self, tenant: Tenant, ids: Sequence[str]) -> None:
        await (await self._opened()).delete(tenant, ids)

    async def search(
        self,
        tenants: Sequence[Tenant],
        vector: Sequence[float] | None,
        flt: Filter,
        limit: int,
        now: datetime,
        min_score: float | None = None,
        validity: Validity = CURRENT,
        ranking: Ranking = BY_MEANING,
    ) -> list[ScoredRecord]:
        if self._absent():
            return []
        store = await self._opened()
        return await store.search(tenants, vector, flt, limit, now, min_score, validity, ranking)

    async def scroll(
        self,
        tenant: Tenant,
        flt: Filter,
        limit: int,
        now: datetime,
        after: Cursor | None = None,
        validity: Validity = CURRENT,
    ) -> Page:
        return await (await self._opened()).scroll(tenant, flt, limit, now, after, validity)

    async def count(self, tenant: Tenant, flt: Filter, now: datetime) -> int:
        if self._absent():
            return 0
        return await (await self._opened()).count(tenant, flt, now)

    async def delete_matching(
        self, tenant: Tenant, flt: Filter, now: datetime, on_deleted: OnDeleted | None = None
    ) -> int:
        if self._absent():
            return 0
        return await (await self._opened()).delete_matching(tenant, flt, now, on_deleted)

    async def delete_scope(
        self, org_id: str, project_id: str, environment_id: str | None = None
    ) -> int:
        if self._store is None and not self._exists():
            return 0
        return await (await self._opened()).delete_scope(org_id, project_id, environment_id)

    async def count_scope(
        self, org_id: str, project_id: str, environment_id: str | None = None
    ) -> int:
        if self._store is None and not self._exists():
            return 0
        return await (await self._opened()).count_scope(org_id, project_id, environment_id)

    async def sweep_expired(
        self,
        now: datetime,
        limit: int = 10_000,
        on_deleted: OnDeleted | None = None,
        keep: Sequence[Tenant] = (),
    ) -> int:
        if self._absent():
            return 0
        return await (await self._opened()).sweep_expired(now, limit, on_deleted, keep)

    async def count_expired(self, now: datetime, within: Sequence[Tenant]) -> int:
        if self._absent():
            return 0
        return await (await self._opened()).count_expired(now, within)
