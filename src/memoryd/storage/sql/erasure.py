"""What EraseEndUser reaches in the control store: one end user's
operations and their messages, change-log events, webhook delivery
payloads and idempotency entries (`memoryd.domain.erasure`).

Every statement is confined to the tenant's organization, project,
environment and its one end user. An erasure's own operations stay (their
payload holds no content): they are its record.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from memoryd.domain.tenancy import Tenant
from memoryd.storage.sql.changes import change_events
from memoryd.storage.sql.idempotency import idempotency_keys
from memoryd.storage.sql.knowledge import knowledge_documents
from memoryd.storage.sql.operations import conversation_messages, operations
from memoryd.storage.sql.tx import Transacting
from memoryd.storage.sql.webhooks import webhook_attempts, webhook_deliveries

ERASE_KIND = "erase_end_user"


def add_missing_columns(conn: sa.Connection) -> None:
    """Columns added to existing tables since they were first created
    (nullable, so old rows and old servers stay valid): `create_all` makes
    new tables only."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("webhook_deliveries")}
    if "subject_end_user_id" not in have:
        conn.execute(
            sa.text("ALTER TABLE webhook_deliveries ADD COLUMN subject_end_user_id VARCHAR(200)")
        )


def _env(table: sa.Table, tenant: Tenant) -> list[sa.ColumnElement[bool]]:
    c = table.c
    return [
        c.org_id == tenant.org_id,
        c.project_id == tenant.project_id,
        c.environment_id == tenant.environment_id,
    ]


def _user(table: sa.Table, tenant: Tenant) -> list[sa.ColumnElement[bool]]:
    if not tenant.end_user_id:
        raise ValueError("an erasure names one end user")
    return [*_env(table, tenant), table.c.end_user_id == tenant.end_user_id]


def _user_ops(tenant: Tenant) -> list[sa.ColumnElement[bool]]:
    return [*_user(operations, tenant), operations.c.kind != ERASE_KIND]


def _user_messages(tenant: Tenant) -> sa.ColumnElement[bool]:
    ids = sa.select(operations.c.id).where(*_user_ops(tenant))
    return conversation_messages.c.operation_id.in_(ids)


def _user_deliveries(tenant: Tenant) -> list[sa.ColumnElement[bool]]:
    """Deliveries carrying the end user's events: of the end user's own
    webhooks, or of events of the end user (by the recorded subject; for
    rows from before it was recorded, by the event still in the log)."""
    d = webhook_deliveries.c
    seqs = sa.select(change_events.c.seq).where(*_user(change_events, tenant))
    return [
        *_env(webhook_deliveries, tenant),
        sa.or_(
            d.end_user_id == tenant.end_user_id,
            d.subject_end_user_id == tenant.end_user_id,
            sa.and_(d.subject_end_user_id.is_(None), d.event_seq.in_(seqs)),
        ),
    ]


async def _count(conn: Any, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    q = sa.select(sa.func.count()).select_from(table).where(*where)
    return int((await conn.execute(q)).scalar_one())


class ErasureTables(Transacting):
    """The erasure calls of `SqlControlStore`: per store, what the end user
    has (`*_count`) and its deletion (`erase_*`), each in one transaction."""

    async def scope_counts(
        self, org_id: str, project_id: str, environment_id: str | None
    ) -> dict[str, int]:
        """What a project (or one of its environments) holds in the control
        store, by table: the counts of a purge's receipt, read before its
        rows go."""
        tables = {
            "operations": operations,
            "change_events": change_events,
            "documents": knowledge_documents,
            "webhook_deliveries": webhook_deliveries,
        }
        out: dict[str, int] = {}
        async with self._begin() as conn:
            for name, table in tables.items():
                where = [table.c.org_id == org_id, table.c.project_id == project_id]
                if environment_id is not None:
                    where.append(table.c.environment_id == environment_id)
                q = sa.select(sa.func.count()).select_from(table).where(*where)
                out[name] = int((await conn.execute(q)).scalar() or 0)
            ops = sa.select(operations.c.id).where(
                operations.c.org_id == org_id,
                operations.c.project_id == project_id,
                *([operations.c.environment_id == environment_id] if environment_id else []),
            )
            q = (
                sa.select(sa.func.count())
                .select_from(conversation_messages)
                .where(conversation_messages.c.operation_id.in_(ops))
            )
            out["conversation_messages"] = int((await conn.execute(q)).scalar() or 0)
        return out

    async def operations_count(self, tenant: Tenant) -> dict[str, int]:
        async with self._begin() as conn:
            return {
                "operations": await _count(conn, operations, *_user_ops(tenant)),
                "conversation_messages": await _count(
                    conn, conversation_messages, _user_messages(tenant)
                ),
            }

    async def erase_operations(self, tenant: Tenant) -> dict[str, int]:
        async with self._begin() as conn:
            messages = await conn.execute(
                conversation_messages.delete().where(_user_messages(tenant))
            )
            ops = await conn.execute(operations.delete().where(*_user_ops(tenant)))
        return {"operations": ops.rowcount, "conversation_messages": messages.rowcount}

    async def change_events_count(self, tenant: Tenant) -> int:
        async with self._begin() as conn:
            return await _count(conn, change_events, *_user(change_events, tenant))

    async def erase_change_events(self, tenant: Tenant) -> int:
        async with self._begin() as conn:
            result = await conn.execute(change_events.delete().where(*_user(change_events, tenant)))
        return int(result.rowcount)

    async def deliveries_count(self, tenant: Tenant) -> int:
        async with self._begin() as conn:
            return await _count(conn, webhook_deliveries, *_user_deliveries(tenant))

    async def erase_deliveries(self, tenant: Tenant) -> int:
        async with self._begin() as conn:
            ids = [
                r.id
                for r in await conn.execute(
                    sa.select(webhook_deliveries.c.id).where(*_user_deliveries(tenant))
                )
            ]
            for i in range(0, len(ids), 500):
                batch = ids[i : i + 500]
                await conn.execute(
                    webhook_attempts.delete().where(webhook_attempts.c.delivery_id.in_(batch))
                )
                await conn.execute(
                    webhook_deliveries.delete().where(webhook_deliveries.c.id.in_(batch))
                )
        return len(ids)

    async def idempotency_count(self, tenant: Tenant) -> int:
        async with self._begin() as conn:
            return await _count(conn, idempotency_keys, *_user(idempotency_keys, tenant))

    async def erase_idempotency(self, tenant: Tenant) -> int:
        async with self._begin() as conn:
            result = await conn.execute(
                idempotency_keys.delete().where(*_user(idempotency_keys, tenant))
            )
        return int(result.rowcount)
