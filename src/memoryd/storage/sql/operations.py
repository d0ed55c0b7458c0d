"""Operations, their conversation messages, and the job queue over them, in
the control store.

Every row carries its tenant (organization, project, environment, end
user) from its first line, and every read a caller makes is confined to it
(`_visible`). The queue is the `operations` table itself: a runner claims
the oldest due row under a lease (on PostgreSQL `FOR UPDATE SKIP LOCKED`,
so two replicas never take the same row; SQLite has one writer at a time,
and the claim's UPDATE re-checks the row is still claimable), extends the
lease while it works, and writes the end only while it still holds it.
Deleting an environment (or its project) deletes its operations and
messages (foreign keys, ON DELETE CASCADE).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from memoryd.domain.errors import AlreadyExists
from memoryd.domain.operations import (
    Claim,
    Operation,
    OperationQuery,
    OpError,
    OpState,
    StoredMessage,
)
from memoryd.domain.tenancy import Tenant
from memoryd.storage.sql.schema import SafeString, UTCDateTime, json_dump, metadata, visible_to
from memoryd.storage.sql.sealing import Sealing
from memoryd.storage.sql.tx import Transacting

operations = sa.Table(
    "operations",
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
    sa.Column("end_user_id", SafeString(200), nullable=False),
    sa.Column("kind", SafeString(40), nullable=False),
    # NULL when the call gave none (NULLs never collide in the unique index)
    sa.Column("request_id", SafeString(100)),
    sa.Column("fingerprint", SafeString(64), nullable=False),
    sa.Column("key_id", SafeString(40), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("thread_id", SafeString(200), nullable=False),
    sa.Column("state", SafeString(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("info", sa.Text, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("error_code", SafeString(40), nullable=False),
    sa.Column("error_reason", SafeString(64), nullable=False),
    sa.Column("error_message", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
    sa.Column("start_time", UTCDateTime),
    sa.Column("end_time", UTCDateTime),
    # due time of a PENDING job (a retry waits), lease of a RUNNING one
    sa.Column("not_before", UTCDateTime, nullable=False),
    sa.Column("lease_owner", SafeString(80), nullable=False),
    sa.Column("lease_until", UTCDateTime),
    sa.UniqueConstraint(
        "org_id",
        "project_id",
        "environment_id",
        "end_user_id",
        "kind",
        "request_id",
        name="uq_operations_request_id",
    ),
    sa.Index("ix_operations_tenant_time", "environment_id", "create_time"),
    sa.Index("ix_operations_queue", "state", "not_before"),
    sa.Index("ix_operations_thread", "environment_id", "thread_id", "create_time"),
)

conversation_messages = sa.Table(
    "conversation_messages",
    metadata,
    sa.Column(
        "operation_id",
        SafeString(40),
        sa.ForeignKey("operations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("role", SafeString(20), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("name", SafeString(200), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
)

_QUEUED = (OpState.PENDING.value, OpState.RUNNING.value)


def _visible(tenant: Tenant) -> list[sa.ColumnElement[bool]]:
    """The operations `tenant` may see: its environment, and the end users
    it reaches (its own; none when it names none; any with all_end_users)."""
    return visible_to(operations, tenant)


def _op(row: Any, payload: str, result: str) -> Operation:
    """The operation of `row`, whose payload and result opened are given."""
    error = None
    if row.error_code:
        error = OpError(row.error_code, row.error_reason, row.error_message)
    return Operation(
        id=row.id,
        kind=row.kind,
        tenant=Tenant(row.org_id, row.project_id, row.environment_id, row.end_user_id),
        key_id=row.key_id,
        scopes=frozenset(json.loads(row.scopes)),
        state=OpState(row.state),
        payload=payload,
        create_time=row.create_time,
        update_time=row.update_time,
        request_id=row.request_id or "",
        fingerprint=row.fingerprint,
        thread_id=row.thread_id,
        info=json.loads(row.info),
        result=result,
        error=error,
        attempts=row.attempts,
        start_time=row.start_time,
        end_time=row.end_time,
        cancel_requested=row.cancel_requested,
    )


def _row(op: Operation, payload: str, result: str) -> dict[str, Any]:
    t = op.tenant
    return {
        "id": op.id,
        "org_id": t.org_id,
        "project_id": t.project_id,
        "environment_id": t.environment_id,
        "end_user_id": t.end_user_id,
        "kind": op.kind,
        "request_id": op.request_id or None,
        "fingerprint": op.fingerprint,
        "key_id": op.key_id,
        "scopes": json.dumps(sorted(op.scopes)),
        "thread_id": op.thread_id,
        "state": op.state.value,
        "payload": payload,
        "info": json_dump(dict(op.info)),
        "result": result,
        "error_code": op.error.code if op.error else "",
        "error_reason": op.error.reason if op.error else "",
        "error_message": op.error.message if op.error else "",
        "attempts": op.attempts,
        "cancel_requested": op.cancel_requested,
        "create_time": op.create_time,
        "update_time": op.update_time,
        "start_time": op.start_time,
        "end_time": op.end_time,
        "not_before": op.create_time,
        "lease_owner": "",
        "lease_until": None,
    }


def _message(row: Any, content: str) -> StoredMessage:
    return StoredMessage(row.idx, row.role, content, row.name, row.create_time)


# a message with its operation's tenant (which names the key it is sealed with)
_MESSAGE_COLUMNS = (
    conversation_messages,
    operations.c.org_id,
    operations.c.project_id,
    operations.c.environment_id,
)


class OperationTables(Transacting, Sealing):
    """The operation calls of `SqlControlStore` (`OperationStore`). An
    operation's payload and result and its messages' content are sealed."""

    async def _ops(self, rows: Sequence[Any]) -> list[Operation]:
        await self._keys_for_reading(rows, "payload", "result")
        return [_op(r, self._open(r, "payload"), self._open(r, "result")) for r in rows]

    async def _messages(self, rows: Sequence[Any]) -> list[StoredMessage]:
        await self._keys_for_reading(rows, "content")
        return [_message(r, self._open(r, "content")) for r in rows]

    async def create_operation(self, op: Operation, messages: Sequence[StoredMessage]) -> Operation:
        await self._keys_for_writing([op.tenant])
        t = op.tenant
        row = _row(op, self._seal(t, "payload", op.payload), self._seal(t, "result", op.result))
        try:
            async with self._begin(parent="environment") as conn:
                await conn.execute(operations.insert().values(**row))
                if messages:
                    await conn.execute(
                        conversation_messages.insert(),
                        [
                            {
                                "operation_id": op.id,
                                "idx": m.index,
                                "role": m.role,
                                "content": self._seal(t, "content", m.content),
                                "name": m.name,
                                "create_time": m.create_time,
                            }
                            for m in messages
                        ],
                    )
        except AlreadyExists:
            if not op.request_id:
                raise
            existing = await self._by_request_id(op)
            if existing is None:  # deleted between the two statements
                raise
            return existing
        return op

    async def _by_request_id(self, op: Operation) -> Operation | None:
        c = operations.c
        q = sa.select(operations).where(
            *_visible(op.tenant), c.kind == op.kind, c.request_id == op.request_id
        )
        async with self._begin() as conn:
            row = (await conn.execute(q)).first()
        return (await self._ops([row]))[0] if row else None

    async def release_request_id(self, tenant: Tenant, kind: str, request_id: str) -> None:
        """Frees `request_id` of the tenant's operation of `kind` (after its
        idempotency window): the operation stays, a new one may take the id."""
        c = operations.c
        async with self._begin() as conn:
            await conn.execute(
                operations.update()
                .where(*_visible(tenant), c.kind == kind, c.request_id == request_id)
                .values(request_id=None)
            )

    async def get_operation(self, tenant: Tenant, op_id: str) -> Operation | None:
        q = sa.select(operations).where(operations.c.id == op_id, *_visible(tenant))
        async with self._begin() as conn:
            row = (await conn.execute(q)).first()
        return (await self._ops([row]))[0] if row else None

    async def list_operations(
        self,
        tenant: Tenant,
        query: OperationQuery,
        limit: int,
        before: tuple[datetime, str] | None,
    ) -> list[Operation]:
        c = operations.c
        q = sa.select(operations).where(*_visible(tenant))
        if query.kind:
            q = q.where(c.kind == query.kind)
        if query.done is True:
            q = q.where(c.state.notin_(_QUEUED))
        elif query.done is False:
            q = q.where(c.state.in_(_QUEUED))
        if before is not None:
            t, ident = before
            q = q.where(sa.or_(c.create_time < t, sa.and_(c.create_time == t, c.id < ident)))
        q = q.order_by(c.create_time.desc(), c.id.desc()).limit(limit)
        async with self._begin() as conn:
            rows = (await conn.execute(q)).all()
        return await self._ops(rows)

    async def delete_operation(self, tenant: Tenant, op_id: str) -> bool:
        async with self._begin() as conn:
            await _delete_messages(conn, [op_id])
            result = await conn.execute(
                operations.delete().where(operations.c.id == op_id, *_visible(tenant))
            )
        return bool(result.rowcount)

    async def request_cancel(self, tenant: Tenant, op_id: str, now: datetime) -> Operation | None:
        c = operations.c
        async with self._begin() as conn:
            await conn.execute(
                operations.update()
                .where(c.id == op_id, *_visible(tenant), c.state == OpState.PENDING.value)
                .values(
                    state=OpState.CANCELLED.value,
                    cancel_requested=True,
                    end_time=now,
                    update_time=now,
                )
            )
            await conn.execute(
                operations.update()
                .where(c.id == op_id, *_visible(tenant), c.state == OpState.RUNNING.value)
                .values(cancel_requested=True, update_time=now)
            )
            row = (
                await conn.execute(sa.select(operations).where(c.id == op_id, *_visible(tenant)))
            ).first()
        return (await self._ops([row]))[0] if row else None

    async def messages(self, op_id: str) -> list[StoredMessage]:
        m = conversation_messages.c
        q = (
            sa.select(*_MESSAGE_COLUMNS)
            .join(operations, operations.c.id == m.operation_id)
            .where(m.operation_id == op_id)
            .order_by(m.idx)
        )
        async with self._begin() as conn:
            rows = (await conn.execute(q)).all()
        return await self._messages(rows)

    async def thread_messages(
        self, tenant: Tenant, thread_id: str, before: datetime, exclude_op: str, limit: int
    ) -> list[StoredMessage]:
        if not thread_id or limit <= 0:
            return []
        c, m = operations.c, conversation_messages.c
        q = (
            sa.select(*_MESSAGE_COLUMNS)
            .join(operations, operations.c.id == m.operation_id)
            .where(
                *_visible(tenant),
                c.thread_id == thread_id,
                c.create_time <= before,
                c.id != exclude_op,
            )
            .order_by(c.create_time.desc(), c.id.desc(), m.idx.desc())
            .limit(limit)
        )
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        return await self._messages(rows[::-1])

    # --- the runner -----------------------------------------------------------

    async def claim(
        self,
        owner: str,
        now: datetime,
        lease_s: float,
        skip_projects: Sequence[str],
        kinds: Sequence[str],
    ) -> Claim | None:
        c = operations.c
        runnable = sa.or_(
            sa.and_(c.state == OpState.PENDING.value, c.not_before <= now),
            sa.and_(c.state == OpState.RUNNING.value, c.lease_until < now),
        )
        q = sa.select(c.id).where(runnable, c.kind.in_(list(kinds)))
        if skip_projects:
            q = q.where(c.project_id.notin_(list(skip_projects)))
        q = q.order_by(c.not_before, c.id).limit(1).with_for_update(skip_locked=True)
        lease_until = now + timedelta(seconds=lease_s)
        async with self._begin() as conn:
            op_id = (await conn.execute(q)).scalar()
            if op_id is None:
                return None
            result = await conn.execute(
                operations.update()
                .where(c.id == op_id, runnable)
                .values(
                    state=OpState.RUNNING.value,
                    lease_owner=owner,
                    lease_until=lease_until,
                    attempts=c.attempts + 1,
                    start_time=sa.func.coalesce(c.start_time, now),
                    update_time=now,
                )
            )
            if result.rowcount != 1:
                return None
            row = (await conn.execute(sa.select(operations).where(c.id == op_id))).first()
        return Claim((await self._ops([row]))[0], owner, lease_until)

    def _held(self, claim: Claim) -> list[sa.ColumnElement[bool]]:
        c = operations.c
        return [
            c.id == claim.operation.id,
            c.lease_owner == claim.owner,
            c.state == OpState.RUNNING.value,
        ]

    async def heartbeat(self, claim: Claim, now: datetime, lease_s: float) -> Claim | None:
        lease_until = now + timedelta(seconds=lease_s)
        async with self._begin() as conn:
            result = await conn.execute(
                operations.update().where(*self._held(claim)).values(lease_until=lease_until)
            )
            if result.rowcount != 1:
                return None
            # only what can change under a running job: a cancel request
            cancel = (
                await conn.execute(
                    sa.select(operations.c.cancel_requested).where(
                        operations.c.id == claim.operation.id
                    )
                )
            ).scalar()
        op = replace(claim.operation, cancel_requested=bool(cancel))
        return Claim(op, claim.owner, lease_until)

    async def save_progress(self, claim: Claim, info: Mapping[str, Any], result: str) -> bool:
        await self._keys_for_writing([claim.operation.tenant])
        result = self._seal(claim.operation.tenant, "result", result)
        async with self._begin() as conn:
            res = await conn.execute(
                operations.update()
                .where(*self._held(claim))
                .values(info=json_dump(dict(info)), result=result)
            )
        return bool(res.rowcount == 1)

    async def finish(
        self,
        claim: Claim,
        state: OpState,
        now: datetime,
        info: Mapping[str, Any],
        result: str = "",
        error: OpError | None = None,
    ) -> bool:
        await self._keys_for_writing([claim.operation.tenant])
        result = self._seal(claim.operation.tenant, "result", result)
        async with self._begin() as conn:
            res = await conn.execute(
                operations.update()
                .where(*self._held(claim))
                .values(
                    state=state.value,
                    info=json_dump(dict(info)),
                    result=result,
                    error_code=error.code if error else "",
                    error_reason=error.reason if error else "",
                    error_message=error.message if error else "",
                    end_time=now,
                    update_time=now,
                    lease_owner="",
                    lease_until=None,
                )
            )
        return bool(res.rowcount == 1)

    async def retry_later(
        self, claim: Claim, not_before: datetime, now: datetime, error: OpError
    ) -> bool:
        async with self._begin() as conn:
            res = await conn.execute(
                operations.update()
                .where(*self._held(claim))
                .values(
                    state=OpState.PENDING.value,
                    not_before=not_before,
                    error_code=error.code,
                    error_reason=error.reason,
                    error_message=error.message,
                    update_time=now,
                    lease_owner="",
                    lease_until=None,
                )
            )
        return bool(res.rowcount == 1)

    async def sweep_operations(self, finished_before: datetime, limit: int) -> int:
        c = operations.c
        q = (
            sa.select(c.id)
            .where(c.state.notin_(_QUEUED), c.end_time < finished_before)
            .limit(limit)
        )
        async with self._begin() as conn:
            ids = [r.id for r in await conn.execute(q)]
            if ids:
                await _delete_messages(conn, ids)
                await conn.execute(operations.delete().where(c.id.in_(ids)))
        return len(ids)


async def _delete_messages(conn: AsyncConnection, op_ids: Sequence[str]) -> None:
    """Messages go with their operation (also where the database does not
    cascade: SQLite without the foreign-key pragma)."""
    await conn.execute(
        conversation_messages.delete().where(conversation_messages.c.operation_id.in_(op_ids))
    )


llm_usage = sa.Table(
    "llm_usage",
    metadata,
    sa.Column("org_id", SafeString(40), primary_key=True),
    sa.Column("project_id", SafeString(40), primary_key=True),
    sa.Column(
        "environment_id",
        SafeString(40),
        sa.ForeignKey("environments.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
)


class LlmUsageTables(Transacting):
    """Model tokens per environment and day (`TokenLedger`)."""

    async def add_tokens(
        self, tenant: Tenant, day: date, input_tokens: int, output_tokens: int
    ) -> None:
        c = llm_usage.c
        key = (
            c.org_id == tenant.org_id,
            c.project_id == tenant.project_id,
            c.environment_id == tenant.environment_id,
            c.day == day,
        )
        async with self._begin(parent="environment") as conn:
            result = await conn.execute(
                llm_usage.update()
                .where(*key)
                .values(
                    input_tokens=c.input_tokens + input_tokens,
                    output_tokens=c.output_tokens + output_tokens,
                )
            )
            if result.rowcount == 0:
                await conn.execute(
                    llm_usage.insert().values(
                        org_id=tenant.org_id,
                        project_id=tenant.project_id,
                        environment_id=tenant.environment_id,
                        day=day,
                        input_tokens=input_tokens,
                        output_tokens=output_tokens,
                    )
                )

    async def project_tokens(self, org_id: str, project_id: str, day: date) -> int:
        c = llm_usage.c
        q = sa.select(sa.func.coalesce(sa.func.sum(c.input_tokens + c.output_tokens), 0)).where(
            c.org_id == org_id, c.project_id == project_id, c.day == day
        )
        async with self._begin() as conn:
            return int((await conn.execute(q)).scalar() or 0)

    async def token_usage(
        self,
        org_id: str,
        project_id: str | None,
        environment_id: str | None,
        start: date,
        end: date,
    ) -> dict[tuple[str, str, date], tuple[int, int]]:
        """(input, output) tokens by (project, environment, day) in [start, end]."""
        c = llm_usage.c
        q = sa.select(llm_usage).where(c.org_id == org_id, c.day >= start, c.day <= end)
        if project_id:
            q = q.where(c.project_id == project_id)
        if environment_id:
            q = q.where(c.environment_id == environment_id)
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        return {
            (r.project_id, r.environment_id, r.day): (r.input_tokens, r.output_tokens) for r in rows
        }
