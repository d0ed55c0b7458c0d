"""Audit events in the control store."""

from __future__ import annotations

import json

import sqlalchemy as sa

from memoryd.domain.control import AuditEvent, AuditQuery, ListPage
from memoryd.storage.sql.paging import keyset, next_after
from memoryd.storage.sql.schema import audit_events, fit, json_dump
from memoryd.storage.sql.tx import Transacting


class AuditTables(Transacting):
    """The audit calls of `SqlControlStore`."""

    async def append_audit(self, event: AuditEvent) -> None:
        async with self._begin() as conn:
            # An event records what a client sent (a target name, a request id),
            # valid or not: cut it to fit rather than lose the event.
            row = {k: fit(audit_events.c[k], v) for k, v in vars(event).items()}
            row["details"] = json_dump(event.details)
            await conn.execute(audit_events.insert().values(**row))

    async def list_audit(
        self, query: AuditQuery, limit: int, after: tuple[str, str] | None
    ) -> ListPage[AuditEvent]:
        c = audit_events.c
        q = sa.select(audit_events).where(c.org_id == query.org_id)
        for col, value in (
            (c.project_id, query.project_id),
            (c.environment_id, query.environment_id),
            (c.actor_key_id, query.actor_key_id),
            (c.action, query.action),
        ):
            if value:
                q = q.where(col == value)
        if query.start_time is not None:
            q = q.where(c.time >= query.start_time)
        if query.end_time is not None:
            q = q.where(c.time < query.end_time)
        q = keyset(q, c.time, c.id, after, limit, descending=True)
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        items = [
            AuditEvent(
                **{k: getattr(r, k) for k in r._fields if k != "details"},
                details=json.loads(r.details),
            )
            for r in rows[:limit]
        ]
        return ListPage(items, next_after(items, limit, len(rows), lambda e: (e.time, e.id)))
