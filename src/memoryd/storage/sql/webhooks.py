"""Webhooks, their deliveries and attempts, and the dispatcher's cursor, in
the control store (`memoryd.domain.webhooks.WebhookStore`).

Every webhook and delivery row carries its tenant (organization, project,
environment, end user: "" for a webhook of the whole environment) from its
first line, and every read a caller makes is confined to it (`_visible`):
the caller's environment, and the end users it reaches. Deleting an
environment (or its project) deletes its webhooks, their deliveries and
attempts (foreign keys, ON DELETE CASCADE). The tables are new in schema
version 2's lifetime: `metadata.create_all` adds them at open.

Signing secrets are stored as they are, since the server must sign with
them (HMAC needs the key, not a hash of it); only the delivery path reads
them (`claim_deliveries`), and nothing returns them to a caller.

The deliveries are a queue like the operations: a sender claims the oldest
due rows under a lease (on PostgreSQL `FOR UPDATE SKIP LOCKED`), and
records an attempt only while it holds the lease. The fan-out's cursor is
one row, locked for the whole fan-out step (`SELECT … FOR UPDATE`), so two
replicas never fan out the same events, and the deliveries and the cursor's
move commit together.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from memoryd.domain.changes import EventType
from memoryd.domain.control import ListPage
from memoryd.domain.errors import AlreadyExists, FailedPrecondition
from memoryd.domain.filter_json import filter_from_json, filter_to_json
from memoryd.domain.tenancy import Tenant
from memoryd.domain.webhooks.model import (
    Attempt,
    Delivery,
    DeliveryClaim,
    DeliveryState,
    Disabled,
    Outcome,
    Plan,
    ReadEvents,
    SigningKeys,
    Webhook,
)
from memoryd.storage.sql.paging import keyset, next_after
from memoryd.storage.sql.schema import SafeString, UTCDateTime, fit, json_dump, metadata, visible_to
from memoryd.storage.sql.sealing import Sealing
from memoryd.storage.sql.tx import Transacting

webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", SafeString(40), primary_key=True),
    sa.Column("org_id", SafeString(40), nullable=False),
    sa.Column("project_id", SafeString(40), nullable=False),
    sa.Column(
        "environment_id",
        SafeString(40),
        sa.ForeignKey("environments.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # "" = every end user of the environment
    sa.Column("end_user_id", SafeString(200), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("event_types", sa.Text, nullable=False),  # JSON list; [] = all
    sa.Column("filter", sa.Text, nullable=False),  # JSON (see _filter_json)
    sa.Column("secret", SafeString(200), nullable=False),
    sa.Column("previous_secret", SafeString(200), nullable=False),
    sa.Column("previous_secret_expire_time", UTCDateTime),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("disable_reason", sa.Text, nullable=False),
    sa.Column("disable_time", UTCDateTime),
    sa.Column("consecutive_failures", sa.Integer, nullable=False),
    sa.Column("start_seq", sa.BigInteger, nullable=False),
    sa.Column("created_by", SafeString(40), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
    sa.Column("rotate_time", UTCDateTime),
    sa.Index("ix_webhooks_tenant_time", "environment_id", "create_time"),
    sa.Index("ix_webhooks_enabled", "enabled", "environment_id"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", SafeString(40), primary_key=True),
    sa.Column(
        "webhook_id",
        SafeString(40),
        sa.ForeignKey("webhooks.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("org_id", SafeString(40), nullable=False),
    sa.Column("project_id", SafeString(40), nullable=False),
    sa.Column("environment_id", SafeString(40), nullable=False),
    sa.Column("end_user_id", SafeString(200), nullable=False),  # the webhook's
    # the event's end user ("" none); NULL in rows written before it existed
    sa.Column("subject_end_user_id", SafeString(200)),
    sa.Column("event_seq", sa.BigInteger, nullable=False),
    sa.Column("event_type", SafeString(16), nullable=False),
    sa.Column("memory_id", SafeString(100), nullable=False),
    sa.Column("event_time", UTCDateTime, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", SafeString(16), nullable=False),
    sa.Column("attempt_count", sa.Integer, nullable=False),
    sa.Column("next_attempt_time", UTCDateTime, nullable=False),
    sa.Column("expire_time", UTCDateTime, nullable=False),
    sa.Column("lease_owner", SafeString(80), nullable=False),
    sa.Column("lease_until", UTCDateTime),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
    sa.UniqueConstraint("webhook_id", "event_seq", name="uq_webhook_deliveries_event"),
    sa.Index("ix_webhook_deliveries_queue", "state", "next_attempt_time", "id"),
    sa.Index("ix_webhook_deliveries_webhook_time", "webhook_id", "create_time"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column(
        "delivery_id",
        SafeString(40),
        sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("n", sa.Integer, primary_key=True),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("response_code", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
)

webhook_cursor = sa.Table(
    "webhook_cursor",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1
    sa.Column("position", sa.BigInteger, nullable=False),
)

_CURSOR_ID = 1
_PENDING = DeliveryState.PENDING.value
_DONE = (DeliveryState.SUCCEEDED.value, DeliveryState.FAILED.value)
MAX_ERROR_CHARS = 500


def _visible(table: sa.Table, tenant: Tenant) -> list[sa.ColumnElement[bool]]:
    """The rows `tenant` may see: its environment, and the end users it
    reaches (its own; any with all_end_users; with neither, those of no end
    user, which no webhook has since one of the whole environment needs
    all_end_users to be made)."""
    return visible_to(table, tenant)


# --- rows -----------------------------------------------------------------------------


def _webhook(row: Any) -> Webhook:
    return Webhook(
        id=row.id,
        tenant=Tenant(row.org_id, row.project_id, row.environment_id, row.end_user_id),
        url=row.url,
        event_types=frozenset(EventType(t) for t in json.loads(row.event_types)),
        filter=filter_from_json(json.loads(row.filter)),
        description=row.description,
        enabled=row.enabled,
        create_time=row.create_time,
        update_time=row.update_time,
        created_by=row.created_by,
        start_seq=row.start_seq,
        disable_reason=row.disable_reason,
        disable_time=row.disable_time,
        consecutive_failures=row.consecutive_failures,
        rotate_time=row.rotate_time,
        previous_secret_expire_time=row.previous_secret_expire_time,
    )


def _changeable(w: Webhook) -> dict[str, Any]:
    return {
        "url": w.url,
        "description": w.description,
        "event_types": json.dumps(sorted(t.value for t in w.event_types)),
        "filter": json_dump(filter_to_json(w.filter)),
        "enabled": w.enabled,
        "disable_reason": w.disable_reason,
        "disable_time": w.disable_time,
        "consecutive_failures": w.consecutive_failures,
        "update_time": w.update_time,
    }


def _delivery(row: Any, attempts: Sequence[Attempt] = ()) -> Delivery:
    state = DeliveryState(row.state)
    return Delivery(
        id=row.id,
        webhook_id=row.webhook_id,
        tenant=Tenant(row.org_id, row.project_id, row.environment_id, row.end_user_id),
        event_seq=row.event_seq,
        event_type=EventType(row.event_type),
        memory_id=row.memory_id,
        event_time=row.event_time,
        state=state,
        create_time=row.create_time,
        update_time=row.update_time,
        expire_time=row.expire_time,
        next_attempt_time=row.next_attempt_time if state is DeliveryState.PENDING else None,
        attempts=tuple(attempts),
    )


def _attempt(row: Any) -> Attempt:
    return Attempt(row.time, row.response_code, row.latency_ms, row.error)


_DELIVERY_COLUMNS = [c for c in webhook_deliveries.c if c.name != "payload"]


class WebhookTables(Transacting, Sealing):
    """The webhook calls of `SqlControlStore` (`WebhookStore`)."""

    # --- a caller's webhooks ------------------------------------------------------

    async def create_webhook(self, webhook: Webhook, secret: str) -> None:
        t = webhook.tenant
        row = {
            "id": webhook.id,
            "org_id": t.org_id,
            "project_id": t.project_id,
            "environment_id": t.environment_id,
            "end_user_id": t.end_user_id,
            "secret": secret,
            "previous_secret": "",
            "previous_secret_expire_time": None,
            "start_seq": webhook.start_seq,
            "created_by": webhook.created_by,
            "create_time": webhook.create_time,
            "rotate_time": None,
            **_changeable(webhook),
        }
        async with self._begin(parent="environment") as conn:
            await conn.execute(webhooks.insert().values(**row))

    async def get_webhook(self, tenant: Tenant, webhook_id: str) -> Webhook | None:
        async with self._begin() as conn:
            return await _read_webhook(conn, tenant, webhook_id)

    async def count_webhooks(self, tenant: Tenant) -> int:
        c = webhooks.c
        q = sa.select(sa.func.count()).where(
            c.org_id == tenant.org_id,
            c.project_id == tenant.project_id,
            c.environment_id == tenant.environment_id,
        )
        async with self._begin() as conn:
            return int((await conn.execute(q)).scalar() or 0)

    async def list_webhooks(
        self, tenant: Tenant, limit: int, after: tuple[str, str] | None
    ) -> ListPage[Webhook]:
        c = webhooks.c
        q = keyset(
            sa.select(webhooks).where(*_visible(webhooks, tenant)),
            c.create_time,
            c.id,
            after,
            limit,
            descending=True,
        )
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        items = [_webhook(r) for r in rows[:limit]]
        return ListPage(items, next_after(items, limit, len(rows), lambda w: (w.create_time, w.id)))

    async def save_webhook(self, tenant: Tenant, webhook: Webhook) -> Webhook | None:
        c = webhooks.c
        async with self._begin() as conn:
            result = await conn.execute(
                webhooks.update()
                .where(c.id == webhook.id, *_visible(webhooks, tenant))
                .values(**_changeable(webhook))
            )
            if result.rowcount != 1:
                return None
            return await _read_webhook(conn, tenant, webhook.id)

    async def delete_webhook(self, tenant: Tenant, webhook_id: str) -> bool:
        c = webhooks.c
        async with self._begin() as conn:
            found = (
                await conn.execute(
                    sa.select(c.id).where(c.id == webhook_id, *_visible(webhooks, tenant))
                )
            ).first()
            if found is None:
                return False
            await _delete_deliveries(
                conn,
                sa.select(webhook_deliveries.c.id).where(
                    webhook_deliveries.c.webhook_id == webhook_id
                ),
            )
            await conn.execute(webhooks.delete().where(c.id == webhook_id))
        return True

    async def rotate_webhook_secret(
        self,
        tenant: Tenant,
        webhook_id: str,
        secret: str,
        previous_expire_time: datetime | None,
        now: datetime,
    ) -> Webhook | None:
        c = webhooks.c
        async with self._begin() as conn:
            result = await conn.execute(
                webhooks.update()
                .where(c.id == webhook_id, *_visible(webhooks, tenant))
                .values(
                    previous_secret=c.secret if previous_expire_time is not None else "",
                    previous_secret_expire_time=previous_expire_time,
                    secret=secret,
                    rotate_time=now,
                    update_time=now,
                )
            )
            if result.rowcount != 1:
                return None
            return await _read_webhook(conn, tenant, webhook_id)

    # --- a caller's deliveries ----------------------------------------------------

    async def list_deliveries(
        self,
        tenant: Tenant,
        webhook_id: str,
        state: DeliveryState | None,
        limit: int,
        after: tuple[str, str] | None,
    ) -> ListPage[Delivery] | None:
        d = webhook_deliveries.c
        q = sa.select(*_DELIVERY_COLUMNS).where(
            d.webhook_id == webhook_id, *_visible(webhook_deliveries, tenant)
        )
        if state is not None:
            q = q.where(d.state == state.value)
        q = keyset(q, d.create_time, d.id, after, limit, descending=True)
        async with self._begin() as conn:
            if await _read_webhook(conn, tenant, webhook_id) is None:
                return None
            rows = list(await conn.execute(q))
            attempts = await _attempts(conn, [r.id for r in rows[:limit]])
        items = [_delivery(r, attempts.get(r.id, ())) for r in rows[:limit]]
        return ListPage(items, next_after(items, limit, len(rows), lambda x: (x.create_time, x.id)))

    async def redeliver(
        self, tenant: Tenant, webhook_id: str, delivery_id: str, now: datetime, expire: datetime
    ) -> Delivery | None:
        d = webhook_deliveries.c
        mine = [
            d.id == delivery_id,
            d.webhook_id == webhook_id,
            *_visible(webhook_deliveries, tenant),
        ]
        in_flight = sa.and_(d.lease_owner != "", d.lease_until >= now)
        async with self._begin() as conn:
            result = await conn.execute(
                webhook_deliveries.update()
                .where(*mine, sa.not_(in_flight))
                .values(
                    state=_PENDING,
                    next_attempt_time=now,
                    expire_time=expire,
                    lease_owner="",
                    lease_until=None,
                    update_time=now,
                )
            )
            row = (await conn.execute(sa.select(*_DELIVERY_COLUMNS).where(*mine))).first()
            if row is None:
                return None
            if result.rowcount != 1:
                raise FailedPrecondition(
                    f"delivery '{delivery_id}' is being sent right now; look at its attempts "
                    "in a moment",
                    reason="DELIVERY_IN_FLIGHT",
                )
            attempts = await _attempts(conn, [delivery_id])
        return _delivery(row, attempts.get(delivery_id, ()))

    # --- the dispatcher and the senders ---------------------------------------------

    async def dispatch(
        self, read: ReadEvents, last: Callable[[], Awaitable[int]], plan: Plan
    ) -> int:
        await self._ensure_cursor()
        w, k = webhooks.c, webhook_cursor.c
        async with self._begin() as conn:
            position = (
                await conn.execute(
                    sa.select(k.position).where(k.id == _CURSOR_ID).with_for_update()
                )
            ).scalar_one()
            any_enabled = (
                await conn.execute(sa.select(w.id).where(w.enabled.is_(True)).limit(1))
            ).first()
            if any_enabled is None:
                # nothing to fan out to: skip what the log holds now
                newest = await last()
                if newest > position:
                    await _move_cursor(conn, newest)
                return 0
            events = list(await read(position))
            if not events:
                return 0
            environments = sorted({e.tenant.environment_id for e in events})
            rows = await conn.execute(
                sa.select(webhooks).where(
                    w.enabled.is_(True),
                    w.environment_id.in_(environments),
                    w.start_seq < events[-1].seq,
                )
            )
            deliveries = plan(events, [_webhook(r) for r in rows])
            if deliveries:
                # (nested reads of the key store: this task holds the lock)
                await self._keys_for_writing(nd.tenant for nd in deliveries)
                await conn.execute(
                    webhook_deliveries.insert(),
                    [
                        {
                            "id": nd.id,
                            "webhook_id": nd.webhook_id,
                            "org_id": nd.tenant.org_id,
                            "project_id": nd.tenant.project_id,
                            "environment_id": nd.tenant.environment_id,
                            "end_user_id": nd.tenant.end_user_id,
                            "subject_end_user_id": nd.subject_end_user_id,
                            "event_seq": nd.event_seq,
                            "event_type": nd.event_type.value,
                            "memory_id": fit(webhook_deliveries.c.memory_id, nd.memory_id),
                            "event_time": nd.event_time,
                            "payload": self._seal(nd.tenant, "payload", nd.payload),
                            "state": _PENDING,
                            "attempt_count": 0,
                            "next_attempt_time": nd.create_time,
                            "expire_time": nd.expire_time,
                            "lease_owner": "",
                            "lease_until": None,
                            "create_time": nd.create_time,
                            "update_time": nd.create_time,
                        }
                        for nd in deliveries
                    ],
                )
            await _move_cursor(conn, max(position, events[-1].seq))
        return len(events)

    async def _ensure_cursor(self) -> None:
        k = webhook_cursor.c
        async with self._begin() as conn:
            found = (await conn.execute(sa.select(k.id).where(k.id == _CURSOR_ID))).first()
        if found is not None:
            return
        try:
            async with self._begin() as conn:
                await conn.execute(webhook_cursor.insert().values(id=_CURSOR_ID, position=0))
        except AlreadyExists:
            pass  # another replica made it first

    async def dispatch_position(self) -> int:
        """Where the fan-out stands in the change log (0 before it began)."""
        k = webhook_cursor.c
        async with self._begin() as conn:
            found = (await conn.execute(sa.select(k.position).where(k.id == _CURSOR_ID))).first()
        return int(found.position) if found is not None else 0

    async def claim_deliveries(
        self,
        owner: str,
        now: datetime,
        lease_s: float,
        limit: int,
        skip_webhooks: Sequence[str],
        skip_environments: Sequence[str] = (),
    ) -> list[DeliveryClaim]:
        d, w = webhook_deliveries.c, webhooks.c
        due = sa.and_(
            d.state == _PENDING,
            d.next_attempt_time <= now,
            sa.or_(d.lease_until.is_(None), d.lease_until < now),
        )
        q = sa.select(d.id).join(webhooks, w.id == d.webhook_id).where(due, w.enabled.is_(True))
        if skip_webhooks:
            q = q.where(d.webhook_id.notin_(list(skip_webhooks)))
        if skip_environments:
            q = q.where(d.environment_id.notin_(list(skip_environments)))
        q = (
            q.order_by(d.next_attempt_time, d.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=webhook_deliveries)
        )
        lease_until = now + timedelta(seconds=lease_s)
        async with self._begin() as conn:
            ids = [r.id for r in await conn.execute(q)]
            if not ids:
                return []
            await conn.execute(
                webhook_deliveries.update()
                .where(d.id.in_(ids), due)
                .values(lease_owner=owner, lease_until=lease_until)
            )
            claimed = await conn.execute(
                sa.select(
                    d.id,
                    d.webhook_id,
                    d.payload,
                    d.attempt_count,
                    d.expire_time,
                    w.org_id,
                    w.project_id,
                    w.environment_id,
                    w.end_user_id,
                    w.url,
                    w.secret,
                    w.previous_secret,
                    w.previous_secret_expire_time,
                )
                .join(webhooks, w.id == d.webhook_id)
                .where(d.id.in_(ids), d.lease_owner == owner, d.lease_until == lease_until)
                .order_by(d.next_attempt_time, d.id)
            )
            rows = claimed.all()
        await self._keys_for_reading(rows, "payload")
        return [_claim(r, self._open(r, "payload"), owner, lease_until, now) for r in rows]

    async def release_deliveries(self, claims: Sequence[DeliveryClaim]) -> None:
        d = webhook_deliveries.c
        async with self._begin() as conn:
            for claim in claims:
                await conn.execute(
                    webhook_deliveries.update()
                    .where(
                        d.id == claim.delivery_id,
                        d.lease_owner == claim.owner,
                        d.lease_until == claim.lease_until,
                    )
                    .values(lease_owner="", lease_until=None)
                )

    async def record_attempts(
        self, outcomes: Sequence[Outcome], disable_after: int
    ) -> list[Disabled]:
        if not outcomes:
            return []
        d = webhook_deliveries.c
        ids = [o.claim.delivery_id for o in outcomes]
        async with self._begin() as conn:
            rows = await conn.execute(
                sa.select(d.id, d.lease_owner, d.lease_until, d.attempt_count).where(
                    d.id.in_(ids), d.state == _PENDING
                )
            )
            current = {r.id: r for r in rows}
            held = [
                (o, int(current[o.claim.delivery_id].attempt_count))
                for o in outcomes
                if _holds(current.get(o.claim.delivery_id), o.claim)
            ]
            if not held:
                return []
            await conn.execute(
                webhook_deliveries.update()
                .where(d.id == sa.bindparam("b_id"))
                .values(
                    state=sa.bindparam("b_state"),
                    attempt_count=d.attempt_count + 1,
                    next_attempt_time=sa.bindparam("b_next"),
                    lease_owner="",
                    lease_until=None,
                    update_time=sa.bindparam("b_time"),
                ),
                [
                    {
                        "b_id": o.claim.delivery_id,
                        "b_state": o.state.value,
                        "b_next": o.next_attempt_time or o.attempt.time,
                        "b_time": o.attempt.time,
                    }
                    for o, _ in held
                ],
            )
            await conn.execute(
                webhook_attempts.insert(),
                [
                    {
                        "delivery_id": o.claim.delivery_id,
                        "n": count + 1,
                        "time": o.attempt.time,
                        "response_code": o.attempt.response_code,
                        "latency_ms": o.attempt.latency_ms,
                        "error": o.attempt.error[:MAX_ERROR_CHARS],
                    }
                    for o, count in held
                ],
            )
            return await _count_runs(conn, [o for o, _ in held], disable_after)

    async def sweep_deliveries(self, finished_before: datetime, limit: int) -> int:
        d = webhook_deliveries.c
        q = sa.select(d.id).where(d.state.in_(_DONE), d.update_time < finished_before).limit(limit)
        async with self._begin() as conn:
            ids = [r.id for r in await conn.execute(q)]
            if ids:
                await _delete_deliveries(conn, ids)
        return len(ids)


async def _read_webhook(conn: AsyncConnection, tenant: Tenant, webhook_id: str) -> Webhook | None:
    c = webhooks.c
    row = (
        await conn.execute(
            sa.select(webhooks).where(c.id == webhook_id, *_visible(webhooks, tenant))
        )
    ).first()
    return _webhook(row) if row is not None else None


async def _move_cursor(conn: AsyncConnection, position: int) -> None:
    k = webhook_cursor.c
    await conn.execute(webhook_cursor.update().where(k.id == _CURSOR_ID).values(position=position))


async def _attempts(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, list[Attempt]]:
    if not ids:
        return {}
    a = webhook_attempts.c
    rows = await conn.execute(
        sa.select(webhook_attempts).where(a.delivery_id.in_(list(ids))).order_by(a.delivery_id, a.n)
    )
    out: dict[str, list[Attempt]] = {}
    for r in rows:
        out.setdefault(r.delivery_id, []).append(_attempt(r))
    return out


async def _delete_deliveries(conn: AsyncConnection, ids: Any) -> None:
    """Deliveries with their attempts (also where the database does not
    cascade: SQLite without the foreign-key pragma). `ids`: a list or a
    subquery of delivery ids."""
    await conn.execute(webhook_attempts.delete().where(webhook_attempts.c.delivery_id.in_(ids)))
    await conn.execute(webhook_deliveries.delete().where(webhook_deliveries.c.id.in_(ids)))


def _claim(
    row: Any, payload: str, owner: str, lease_until: datetime, now: datetime
) -> DeliveryClaim:
    grace = row.previous_secret_expire_time
    previous = row.previous_secret if grace is not None and now < grace else ""
    return DeliveryClaim(
        delivery_id=row.id,
        webhook_id=row.webhook_id,
        tenant=Tenant(row.org_id, row.project_id, row.environment_id, row.end_user_id),
        url=row.url,
        payload=payload,
        keys=SigningKeys(row.secret, previous),
        attempt=int(row.attempt_count) + 1,
        expire_time=row.expire_time,
        owner=owner,
        lease_until=lease_until,
    )


def _holds(row: Any, claim: DeliveryClaim) -> bool:
    """Whether a PENDING delivery's row is still leased by `claim`."""
    return (
        row is not None and row.lease_owner == claim.owner and row.lease_until == claim.lease_until
    )


async def _count_runs(
    conn: AsyncConnection, outcomes: Sequence[Outcome], disable_after: int
) -> list[Disabled]:
    """The failure run of each webhook after `outcomes` (in order: a
    success resets it, a failed delivery adds one); disables the webhooks
    whose run reached `disable_after` and answers those this call disabled."""
    w = webhooks.c
    runs: dict[str, tuple[bool, int]] = {}  # webhook → (reset, failures after)
    tenants: dict[str, Tenant] = {}
    for o in outcomes:
        if o.state is DeliveryState.SUCCEEDED:
            runs[o.claim.webhook_id] = (True, 0)
        elif o.state is DeliveryState.FAILED:
            reset, k = runs.get(o.claim.webhook_id, (False, 0))
            runs[o.claim.webhook_id] = (reset, k + 1)
            tenants[o.claim.webhook_id] = o.claim.tenant
    for webhook_id, (reset, k) in runs.items():
        if reset:
            q = webhooks.update().where(w.id == webhook_id, w.consecutive_failures != k)
            await conn.execute(q.values(consecutive_failures=k))
        elif k:
            q = webhooks.update().where(w.id == webhook_id)
            await conn.execute(q.values(consecutive_failures=w.consecutive_failures + k))
    failing = [webhook_id for webhook_id, (_, k) in runs.items() if k]
    if disable_after <= 0 or not failing:
        return []
    rows = await conn.execute(
        sa.select(w.id, w.consecutive_failures).where(
            w.id.in_(failing), w.enabled.is_(True), w.consecutive_failures >= disable_after
        )
    )
    out: list[Disabled] = []
    now = max(o.attempt.time for o in outcomes)
    for row in list(rows):
        failures = int(row.consecutive_failures)
        reason = (
            f"{failures} deliveries in a row failed (every retry exhausted); "
            "fix the endpoint, then enable the webhook"
        )
        disabled = await conn.execute(
            webhooks.update()
            .where(w.id == row.id, w.enabled.is_(True))
            .values(enabled=False, disable_reason=reason, disable_time=now, update_time=now)
        )
        if disabled.rowcount == 1:
            out.append(Disabled(row.id, tenants[row.id], failures, reason))
    return out
