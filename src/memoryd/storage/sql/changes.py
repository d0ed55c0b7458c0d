"""The change log (`memoryd.domain.changes`) in the control store.

Every row carries its tenant (organization, project, environment, end
user) from its first line, and every read a caller makes is confined to it
(`_visible`, the end-user rule of memories). Deleting an environment (or
its project) deletes its events (foreign key, ON DELETE CASCADE).

Positions in commit order. A watcher reads "the events after position p"
and must never skip one, so a position may only become visible after every
lower one. A PostgreSQL sequence does not give that: two transactions take
5 and 6, the one holding 6 commits first, a reader sees 6 and moves past 5,
which commits a moment later. So positions are not taken from a sequence:
`change_log_head` holds the last position given, and an append advances it
(`UPDATE ... SET seq = seq + n RETURNING seq`) in its own transaction. The
row lock that UPDATE takes is held until the append commits, so appends
are serialized across every replica, each commits before the next one gets
its positions, and positions are dense (a rolled-back append gives its
positions back). The price: appends do not commit in parallel; each is one
short transaction (one per call, however many memories it changed). On
SQLite the database's single writer already serializes them.

The kept log is always a contiguous suffix of positions: `trim` deletes
every event up to the newest position older than the retention (not every
event older than it: times come from each replica's clock, positions from
the head), and records per environment the last position and time it
deleted (`change_trims`), so a resume token or a start time is refused
only when events of the caller's own environment were trimmed after it
(another tenant's traffic never ages a quiet watcher's token out).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from memoryd.domain.changes import (
    MEMORY_EVENTS,
    ChangeEvent,
    EventType,
    LogHead,
    NewEvent,
    Trimmed,
)
from memoryd.domain.tenancy import Tenant
from memoryd.storage.sql.schema import SafeString, UTCDateTime, fit, json_dump, metadata, visible_to
from memoryd.storage.sql.sealing import Sealing
from memoryd.storage.sql.tx import Transacting

# Events deleted per transaction of a trim (a first trim after a long
# pause must not hold one huge transaction).
TRIM_BATCH = 10_000

change_log_head = sa.Table(
    "change_log_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1
    # the last position given (0: none yet)
    sa.Column("seq", sa.BigInteger, nullable=False),
    # signs resume tokens: a token of another database's log does not verify
    sa.Column("secret", SafeString(64), nullable=False),
    # how many trims deleted something (watchers re-check their position when it moves)
    sa.Column("trims", sa.BigInteger, nullable=False),
)

change_events = sa.Table(
    "change_events",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("org_id", SafeString(40), nullable=False),
    sa.Column("project_id", SafeString(40), nullable=False),
    sa.Column(
        "environment_id",
        SafeString(40),
        sa.ForeignKey("environments.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("end_user_id", SafeString(200), nullable=False),
    sa.Column("type", SafeString(16), nullable=False),
    sa.Column("memory_id", SafeString(100), nullable=False),
    # the memory's API form as JSON, also for deletions (filters apply to
    # it); for an alert, its details; NULL when the event has none
    sa.Column("memory", sa.Text),
    sa.Column("operation_id", SafeString(40), nullable=False),
    sa.Column("request_id", SafeString(100), nullable=False),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Index("ix_change_events_env_seq", "environment_id", "seq"),
    sa.Index("ix_change_events_env_user_seq", "environment_id", "end_user_id", "seq"),
    sa.Index("ix_change_events_time", "time"),
)

change_trims = sa.Table(
    "change_trims",
    metadata,
    sa.Column(
        "environment_id",
        SafeString(40),
        sa.ForeignKey("environments.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("org_id", SafeString(40), nullable=False),
    sa.Column("project_id", SafeString(40), nullable=False),
    # the newest position, and the newest time, of the environment's trimmed events
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("time", UTCDateTime, nullable=False),
)


def _visible(tenant: Tenant) -> list[sa.ColumnElement[bool]]:
    """The events `tenant` may see: its environment's, of the end users it
    reaches (its own; none when it names none; any with all_end_users)."""
    return visible_to(change_events, tenant)


def _event(row: Any, memory: str | None) -> ChangeEvent:
    """The event of `row`, whose `memory` column opened is `memory`."""
    kind = EventType(row.type)
    data = json.loads(memory) if memory is not None else None
    alert = kind not in MEMORY_EVENTS  # an alert or a document event: details
    return ChangeEvent(
        type=kind,
        tenant=Tenant(row.org_id, row.project_id, row.environment_id, row.end_user_id),
        memory_id=row.memory_id,
        time=row.time,
        memory=None if alert else data,
        operation_id=row.operation_id,
        request_id=row.request_id,
        details=(data or {}) if alert else {},
        seq=row.seq,
    )


def _row(seq: int, e: NewEvent, memory: str | None) -> dict[str, Any]:
    t = e.tenant
    if t.all_end_users:
        raise ValueError("an event belongs to one end user or none, never to all of them")
    c = change_events.c
    return {
        "seq": seq,
        "org_id": t.org_id,
        "project_id": t.project_id,
        "environment_id": t.environment_id,
        "end_user_id": t.end_user_id,
        "type": e.type.value,
        "memory_id": fit(c.memory_id, e.memory_id),
        "memory": memory,
        "operation_id": fit(c.operation_id, e.operation_id),
        "request_id": fit(c.request_id, e.request_id),
        "time": e.time,
    }


def _data(e: NewEvent) -> str | None:
    """What the `memory` column holds: the memory, or the details of an
    alert or a document event."""
    if e.type not in MEMORY_EVENTS:
        return json_dump(dict(e.details))
    return json_dump(dict(e.memory)) if e.memory is not None else None


class ChangeTables(Transacting, Sealing):
    """The change log calls of `SqlControlStore` (`ChangeLog`, `WatchLog`).
    The `memory` column (a memory's content, an event's details) is sealed."""

    async def append(self, events: Sequence[NewEvent]) -> list[ChangeEvent]:
        if not events:
            return []
        await self._keys_for_writing(e.tenant for e in events)
        data = [_data(e) for e in events]
        sealed = [
            None if d is None else self._seal(e.tenant, "memory", d)
            for e, d in zip(events, data, strict=True)
        ]
        async with self._begin(parent="environment") as conn:
            last = await _advance(conn, len(events))
            first = last - len(events) + 1
            rows = [_row(first + i, e, sealed[i]) for i, e in enumerate(events)]
            await conn.execute(change_events.insert(), rows)
        return [
            ChangeEvent(**{f: getattr(e, f) for f in _NEW_FIELDS}, seq=first + i)
            for i, e in enumerate(events)
        ]

    async def read(self, tenant: Tenant, after: int, limit: int) -> list[ChangeEvent]:
        c = change_events.c
        q = (
            sa.select(change_events)
            .where(c.seq > after, *_visible(tenant))
            .order_by(c.seq)
            .limit(limit)
        )
        async with self._begin() as conn:
            rows = (await conn.execute(q)).all()
        return await self._events(rows)

    async def read_all(self, after: int, limit: int) -> list[ChangeEvent]:
        c = change_events.c
        q = sa.select(change_events).where(c.seq > after).order_by(c.seq).limit(limit)
        async with self._begin() as conn:
            rows = (await conn.execute(q)).all()
        return await self._events(rows)

    async def _events(self, rows: Sequence[Any]) -> list[ChangeEvent]:
        await self._keys_for_reading(rows, "memory")
        return [_event(r, self._open(r, "memory")) for r in rows]

    async def oldest(self) -> int | None:
        async with self._begin() as conn:
            value = (await conn.execute(sa.select(sa.func.min(change_events.c.seq)))).scalar()
        return None if value is None else int(value)

    async def last(self) -> int:
        return (await self.log_head()).seq

    async def trim(self, before: datetime) -> int:
        """Deletes the events up to the newest one older than `before`, in
        batches; answers how many."""
        c = change_events.c
        async with self._begin() as conn:
            cutoff = (
                await conn.execute(sa.select(sa.func.max(c.seq)).where(c.time < before))
            ).scalar()
        if cutoff is None:
            return 0
        deleted = 0
        while True:
            async with self._begin() as conn:
                low = (await conn.execute(sa.select(sa.func.min(c.seq)))).scalar()
                if low is None or low > cutoff:
                    return deleted
                upto = min(int(cutoff), int(low) + TRIM_BATCH - 1)
                await _record_trims(conn, upto)
                result = await conn.execute(change_events.delete().where(c.seq <= upto))
                deleted += int(result.rowcount or 0)
                await conn.execute(
                    change_log_head.update()
                    .where(change_log_head.c.id == 1)
                    .values(trims=change_log_head.c.trims + 1)
                )

    # --- for watchers (`WatchLog`) ---------------------------------------------------

    async def log_head(self) -> LogHead:
        """The last position given, the trim count, the token secret."""
        async with self._begin() as conn:
            row = (await conn.execute(sa.select(change_log_head))).first()
            if row is None:
                await _create_head(conn)
                row = (await conn.execute(sa.select(change_log_head))).first()
        assert row is not None
        return LogHead(seq=int(row.seq), trims=int(row.trims), secret=row.secret)

    async def read_checked(
        self, tenant: Tenant, after: int, limit: int
    ) -> tuple[list[ChangeEvent], Trimmed | None]:
        """`read`, then (in the same transaction, after it) `trimmed`: when
        a trim removed events after `after` before the read saw them, the
        trim's record says so (a trim committed between the two statements
        is reported too, though the read saw every event: the caller errs on
        the side of telling a watcher it may have missed some)."""
        c = change_events.c
        q = (
            sa.select(change_events)
            .where(c.seq > after, *_visible(tenant))
            .order_by(c.seq)
            .limit(limit)
        )
        async with self._begin() as conn:
            rows = (await conn.execute(q)).all()
            row = (await conn.execute(_trimmed_query(tenant))).first()
        events = await self._events(rows)
        return events, Trimmed(int(row.seq), row.time) if row else None

    async def trimmed(self, tenant: Tenant) -> Trimmed | None:
        """The newest position and time of the trimmed events of `tenant`'s
        environment (None: none was trimmed)."""
        async with self._begin() as conn:
            row = (await conn.execute(_trimmed_query(tenant))).first()
        return Trimmed(int(row.seq), row.time) if row else None

    async def first_at(self, tenant: Tenant, time: datetime) -> int | None:
        """The position of the oldest kept event `tenant` may see whose time
        is at or after `time` (None: none)."""
        c = change_events.c
        q = sa.select(sa.func.min(c.seq)).where(c.time >= time, *_visible(tenant))
        async with self._begin() as conn:
            value = (await conn.execute(q)).scalar()
        return None if value is None else int(value)


def _trimmed_query(tenant: Tenant) -> sa.Select[Any]:
    t = change_trims.c
    return sa.select(t.seq, t.time).where(
        t.org_id == tenant.org_id,
        t.project_id == tenant.project_id,
        t.environment_id == tenant.environment_id,
    )


_NEW_FIELDS = (
    "type",
    "tenant",
    "memory_id",
    "time",
    "memory",
    "operation_id",
    "request_id",
    "details",
)


async def _advance(conn: AsyncConnection, n: int) -> int:
    """Takes `n` positions; answers the last of them. The head's row lock
    (PostgreSQL) or the write lock (SQLite) is held until the transaction
    ends: appends commit in the order of their positions."""
    h = change_log_head.c
    stmt = change_log_head.update().where(h.id == 1).values(seq=h.seq + n).returning(h.seq)
    last = (await conn.execute(stmt)).scalar()
    if last is None:
        await _create_head(conn)
        last = (await conn.execute(stmt)).scalar()
    return int(last)


async def _create_head(conn: AsyncConnection) -> None:
    """The head row, unless another replica made it first."""
    values = {"id": 1, "seq": 0, "secret": secrets.token_hex(32), "trims": 0}
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(change_log_head).values(**values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(change_log_head).values(**values).on_conflict_do_nothing()
    await conn.execute(stmt)


async def _record_trims(conn: AsyncConnection, upto: int) -> None:
    """Records, per environment, the newest position and time among its
    events up to `upto` (about to be deleted)."""
    c = change_events.c
    q = (
        sa.select(
            c.environment_id,
            c.org_id,
            c.project_id,
            sa.func.max(c.seq).label("seq"),
            sa.func.max(c.time).label("time"),
        )
        .where(c.seq <= upto)
        .group_by(c.environment_id, c.org_id, c.project_id)
    )
    rows = [dict(r._mapping) for r in await conn.execute(q)]
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        ins: Any = postgresql.insert(change_trims)
        newest_seq = sa.func.greatest(change_trims.c.seq, ins.excluded.seq)
        newest_time = sa.func.greatest(change_trims.c.time, ins.excluded.time)
    else:
        ins = sqlite.insert(change_trims)
        newest_seq = sa.func.max(change_trims.c.seq, ins.excluded.seq)
        newest_time = sa.func.max(change_trims.c.time, ins.excluded.time)
    await conn.execute(
        ins.on_conflict_do_update(
            index_elements=[change_trims.c.environment_id],
            set_={"seq": newest_seq, "time": newest_time},
        ),
        rows,
    )
