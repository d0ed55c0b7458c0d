"""Idempotency keys in the control store (`memoryd.domain.idempotency`):
one row per key, shared by every replica.

The primary key starts with the tenant, so a key of one tenant never
reaches another's row. A pending row has no response; a done one holds the
response zlib-compressed.
"""

from __future__ import annotations

import asyncio
import zlib
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from memoryd.domain.idempotency import IdempotencyKey, StoredRequest
from memoryd.domain.tenancy import Tenant
from memoryd.storage.sql.schema import SafeString, UTCDateTime, metadata
from memoryd.storage.sql.sealing import Sealing
from memoryd.storage.sql.tx import Transacting

PENDING = "pending"
DONE = "done"

# Responses past this size are (de)compressed on a worker thread, not the loop.
_OFFLOAD_BYTES = 256 * 1024

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("org_id", SafeString(40), primary_key=True),
    sa.Column("project_id", SafeString(40), primary_key=True),
    sa.Column("environment_id", SafeString(40), primary_key=True),
    sa.Column("end_user_id", SafeString(128), primary_key=True),
    sa.Column("method", SafeString(100), primary_key=True),
    sa.Column("request_id", SafeString(100), primary_key=True),
    sa.Column("fingerprint", sa.LargeBinary(32), nullable=False),  # SHA-256 of the request
    sa.Column("claim", SafeString(40), nullable=False),
    sa.Column("state", SafeString(8), nullable=False),  # PENDING or DONE
    sa.Column("create_time", UTCDateTime, nullable=False),  # when claimed
    sa.Column("response", sa.LargeBinary),  # zlib-compressed; NULL while pending
    sa.Index("ix_idempotency_keys_create_time", "create_time"),
)

_c = idempotency_keys.c
_PK = (_c.org_id, _c.project_id, _c.environment_id, _c.end_user_id, _c.method, _c.request_id)


def _is(key: IdempotencyKey) -> sa.ColumnElement[bool]:
    return sa.and_(
        _c.org_id == key.org_id,
        _c.project_id == key.project_id,
        _c.environment_id == key.environment_id,
        _c.end_user_id == key.end_user_id,
        _c.method == key.method,
        _c.request_id == key.request_id,
    )


async def _offloaded(fn: Any, data: bytes) -> bytes:
    if len(data) > _OFFLOAD_BYTES:
        return bytes(await asyncio.to_thread(fn, data))
    return bytes(fn(data))


class IdempotencyTables(Transacting, Sealing):
    """The `IdempotencyStore` calls of `SqlControlStore`. A stored response
    is compressed, then sealed."""

    async def claim_idempotency_key(
        self, key: IdempotencyKey, fingerprint: bytes, claim: str, now: datetime
    ) -> bool:
        row = {
            **vars(key),
            "fingerprint": fingerprint,
            "claim": claim,
            "state": PENDING,
            "create_time": now,
        }
        async with self._begin() as conn:
            # ON CONFLICT DO NOTHING: of two concurrent claims one inserts, the
            # other sees 0 rows (not a unique violation to map and log).
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            insert = dialect.insert(idempotency_keys).values(**row).on_conflict_do_nothing()
            result = await conn.execute(insert)
        return bool(result.rowcount == 1)

    async def take_over_idempotency_key(
        self, key: IdempotencyKey, old_claim: str, fingerprint: bytes, claim: str, now: datetime
    ) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                idempotency_keys.update()
                .where(_is(key), _c.claim == old_claim)
                .values(
                    fingerprint=fingerprint,
                    claim=claim,
                    state=PENDING,
                    create_time=now,
                    response=None,
                )
            )
        return bool(result.rowcount == 1)

    async def complete_idempotency_key(
        self, key: IdempotencyKey, claim: str, response: bytes
    ) -> bool:
        compressed = await _offloaded(zlib.compress, response)
        tenant = Tenant(key.org_id, key.project_id, key.environment_id)
        await self._keys_for_writing([tenant])
        compressed = self._seal_bytes(tenant, "response", compressed)
        async with self._begin() as conn:
            result = await conn.execute(
                idempotency_keys.update()
                .where(_is(key), _c.claim == claim, _c.state == PENDING)
                .values(state=DONE, response=compressed)
            )
        return bool(result.rowcount == 1)

    async def release_idempotency_key(self, key: IdempotencyKey, claim: str) -> None:
        async with self._begin() as conn:
            await conn.execute(
                idempotency_keys.delete().where(_is(key), _c.claim == claim, _c.state == PENDING)
            )

    async def read_idempotency_key(self, key: IdempotencyKey) -> StoredRequest | None:
        async with self._begin() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        _c.org_id,
                        _c.project_id,
                        _c.environment_id,
                        _c.fingerprint,
                        _c.claim,
                        _c.create_time,
                        _c.response,
                    ).where(_is(key))
                )
            ).first()
        if row is None:
            return None
        await self._keys_for_reading([row], "response")
        sealed = self._open(row, "response")
        response = None if sealed is None else await _offloaded(zlib.decompress, sealed)
        return StoredRequest(bytes(row.fingerprint), row.claim, row.create_time, response)

    async def delete_idempotency_keys(self, before: datetime, limit: int) -> int:
        oldest = (
            sa.select(*_PK).where(_c.create_time < before).order_by(_c.create_time).limit(limit)
        )
        async with self._begin() as conn:
            result = await conn.execute(
                idempotency_keys.delete().where(sa.tuple_(*_PK).in_(oldest))
            )
        return int(result.rowcount)
