"""The `Erasable` adapters of EraseEndUser, one per store that keeps an end
user's data (`memoryd.domain.erasure`). `memoryd.app` lists them in the
order the job runs them: operations first (no queued job of the end user
writes memories after), webhook deliveries before the change log (old
deliveries are found through their events)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from memoryd.domain.exports import KIND as EXPORT
from memoryd.domain.memory import Filter, VectorStore
from memoryd.domain.operations import Operation, OperationQuery
from memoryd.domain.tenancy import Tenant
from memoryd.storage.export_files import LocalExportFiles
from memoryd.storage.sql.erasure import ErasureTables
from memoryd.storage.sql.knowledge import KnowledgeTables
from memoryd.storage.sql.operations import OperationTables
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


class Knowledge:
    """Knowledge documents of the end user (rows and folders in SQL) and
    their chunks in the knowledge vector store."""

    name = "knowledge"

    def __init__(self, store: KnowledgeTables, chunks: VectorStore) -> None:
        self._store = store
        self._chunks = chunks

    async def count(self, tenant: Tenant) -> Mapping[str, int]:
        chunks = await self._chunks.count(tenant, Filter(), datetime.now(UTC))
        return {"chunks": chunks, "documents": await self._store.end_user_documents(tenant)}

    async def erase(self, tenant: Tenant) -> Mapping[str, int]:
        chunks = await self._chunks.delete_matching(tenant, Filter(), datetime.now(UTC))
        return {"chunks": chunks, "documents": await self._store.erase_end_user_documents(tenant)}

    async def remaining(self, tenant: Tenant) -> int:
        return sum((await self.count(tenant)).values())


class ExportFiles:
    """Export files holding the end user's memories: the end user's own
    exports, and the environment's exports of every end user. Runs before
    `Operations` (the exports are found through their operations)."""

    name = "export_files"

    def __init__(self, operations: OperationTables, files: LocalExportFiles) -> None:
        self._ops = operations
        self._files = files

    async def _holding(self, tenant: Tenant) -> list[Operation]:
        everyone = Tenant(tenant.org_id, tenant.project_id, tenant.environment_id)
        out: list[Operation] = []
        for owner, all_only in ((tenant, False), (everyone, True)):
            before = None
            while True:
                page = await self._ops.list_operations(
                    owner, OperationQuery(kind=EXPORT), 500, before
                )
                out += [
                    op for op in page if not all_only or json.loads(op.payload).get("all_end_users")
                ]
                if len(page) < 500:
                    break
                before = (page[-1].create_time, page[-1].id)
        return [op for op in out if self._files.exists(op.tenant, op.id)]

    async def count(self, tenant: Tenant) -> Mapping[str, int]:
        return {"export_files": len(await self._holding(tenant))}

    async def erase(self, tenant: Tenant) -> Mapping[str, int]:
        holding = await self._holding(tenant)
        for op in holding:
            self._files.remove(op.tenant, op.id)
        return {"export_files": len(holding)}

    async def remaining(self, tenant: Tenant) -> int:
        return len(await self._holding(tenant))
