"""The `Erasable` adapters of EraseEndUser, one per store that keeps an end
user's data (`memoryd.domain.erasure`). `memoryd.app` lists them in the
order the job runs them: operations first (no queued job of the end user
writes memories after), webhook deliveries before the change log (old
deliveries are found through their events)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memoryd.domain.tenancy import Tenant
from memoryd.storage.sql.erasure import ErasureTables
from memoryd.storage.vectors.point_store import PointStore


class Memories:
    """Memory points in the vector store, every state, and the revisions
    each keeps in its payload."""

    name = "memories"

    def __init__(self, store: PointStore[Any, Any]) -> None:
        self._store = store

    async def count(self, tenant: Tenant) -> Mapping[str, int]:
        points, revisions = await self._store.end_user_points(tenant)
        return {"memories": points, "revisions": revisions}

    async def erase(self, tenant: Tenant) -> Mapping[str, int]:
        # the revisions go with their point: count them before it goes
        _, revisions = await self._store.end_user_points(tenant)
        return {"memories": await self._store.erase_end_user(tenant), "revisions": revisions}

    async def remaining(self, tenant: Tenant) -> int:
        return await self._store.count_end_user(tenant)


class Operations:
    """Operations (payloads, results) and their stored conversation messages."""

    name = "operations"

    def __init__(self, store: ErasureTables) -> None:
        self._store = store

    async def count(self, tenant: Tenant) -> Mapping[str, int]:
        return await self._store.operations_count(tenant)

    async def erase(self, tenant: Tenant) -> Mapping[str, int]:
        return await self._store.erase_operations(tenant)

    async def remaining(self, tenant: Tenant) -> int:
        return sum((await self._store.operations_count(tenant)).values())


class WebhookDeliveries:
    """Webhook deliveries carrying the end user's events, with their attempts."""

    name = "webhook_deliveries"

    def __init__(self, store: ErasureTables) -> None:
        self._store = store

    async def count(self, tenant: Tenant) -> Mapping[str, int]:
        return {"webhook_deliveries": await self._store.deliveries_count(tenant)}

    async def erase(self, tenant: Tenant) -> Mapping[str, int]:
        return {"webhook_deliveries": await self._store.erase_deliveries(tenant)}

    async def remaining(self, tenant: Tenant) -> int:
        return await self._store.deliveries_count(tenant)


class ChangeEvents:
    """The end user's events in the change log (WatchMemories, webhooks)."""

    name = "change_events"

    def __init__(self, store: ErasureTables) -> None:
        self._store = store

    async def count(self, tenant: Tenant) -> Mapping[str, int]:
        return {"change_events": await self._store.change_events_count(tenant)}

    async def erase(self, tenant: Tenant) -> Mapping[str, int]:
        return {"change_events": await self._store.erase_change_events(tenant)}

    async def remaining(self, tenant: Tenant) -> int:
        return await self._store.change_events_count(tenant)


class IdempotencyEntries:
    """Cached responses of calls with a request id (zlib, may hold content)."""

    name = "idempotency"

    def __init__(self, store: ErasureTables) -> None:
        self._store = store

    async def count(self, tenant: Tenant) -> Mapping[str, int]:
        return {"cache_entries": await self._store.idempotency_count(tenant)}

    async def erase(self, tenant: Tenant) -> Mapping[str, int]:
        return {"cache_entries": await self._store.erase_idempotency(tenant)}

    async def remaining(self, tenant: Tenant) -> int:
        return await self._store.idempotency_count(tenant)
