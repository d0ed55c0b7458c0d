"""Whether each alert is raised (`memoryd.domain.alerts.AlertStore`), in
the control store, so that replicas and restarts raise an alert once per
crossing.

One row per (environment, resource, threshold), with its tenant from the
first line; deleting the environment deletes its rows (foreign key, ON
DELETE CASCADE). Raising an alert flips its row to raised and appends its
event to the change log in one transaction: the alert is marked and in the
log, or neither. Added in schema version 2's lifetime: `metadata.create_all`
adds the table at open.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from memoryd.domain.alerts import AlertKey
from memoryd.domain.changes import ChangeEvent, NewEvent
from memoryd.storage.sql.changes import _advance, _data, _row, change_events
from memoryd.storage.sql.schema import SafeString, UTCDateTime, metadata
from memoryd.storage.sql.tx import Transacting

alert_states = sa.Table(
    "alert_states",
    metadata,
    sa.Column("org_id", SafeString(40), nullable=False),
    sa.Column("project_id", SafeString(40), nullable=False),
    sa.Column(
        "environment_id",
        SafeString(40),
        sa.ForeignKey("environments.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("resource", SafeString(16), primary_key=True),
    # percent of the quota; 0 for rate limiting
    sa.Column("threshold", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("raised", sa.Boolean, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
)


def _where(key: AlertKey) -> list[sa.ColumnElement[bool]]:
    c = alert_states.c
    t = key.tenant
    return [
        c.org_id == t.org_id,
        c.project_id == t.project_id,
        c.environment_id == t.environment_id,
        c.resource == key.resource.value,
        c.threshold == key.threshold,
    ]


class AlertTables(Transacting):
    """The alert calls of `SqlControlStore` (`AlertStore`)."""

    async def raise_alert(self, key: AlertKey, event: NewEvent) -> ChangeEvent | None:
        t = key.tenant
        values = {
            "org_id": t.org_id,
            "project_id": t.project_id,
            "environment_id": t.environment_id,
            "resource": key.resource.value,
            "threshold": key.threshold,
            "raised": True,
            "update_time": event.time,
        }
        c = alert_states.c
        async with self._begin(parent="environment") as conn:
            dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = (
                dialect.insert(alert_states)
                .values(**values)
                .on_conflict_do_update(
                    index_elements=[c.environment_id, c.resource, c.threshold],
                    set_={"raised": True, "update_time": event.time},
                    where=sa.and_(c.raised.is_(False), c.org_id == t.org_id),
                )
                .returning(c.raised)
            )
            if (await conn.execute(stmt)).first() is None:
                return None  # raised already
            seq = await _advance(conn, 1)
            # an alert's details hold no content: stored in clear
            await conn.execute(change_events.insert(), [_row(seq, event, _data(event))])
        return ChangeEvent(
            type=event.type,
            tenant=event.tenant,
            memory_id=event.memory_id,
            time=event.time,
            details=event.details,
            seq=seq,
        )

    async def rearm_alert(self, key: AlertKey, now: datetime) -> None:
        c = alert_states.c
        stmt = (
            alert_states.update()
            .where(*_where(key), c.raised.is_(True))
            .values(raised=False, update_time=now)
        )
        async with self._begin() as conn:
            await conn.execute(stmt)
