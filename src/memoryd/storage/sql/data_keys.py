"""Wrapped data keys and organizations' key-encryption key references
(`memoryd.domain.encryption.DataKeyStore`).

A data key row belongs to one environment (its tenant columns from the first
line; ON DELETE CASCADE with the environment, so erasing an environment
destroys its key: crypto-shredding). The key is only ever stored wrapped.
Added in schema version 2's lifetime: `metadata.create_all` makes the
tables at open.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from memoryd.domain.encryption import LOCAL, EnvRef, OrgKey, WrappedKey
from memoryd.domain.errors import AlreadyExists
from memoryd.storage.sql.schema import SafeString, UTCDateTime, metadata
from memoryd.storage.sql.tx import Transacting

organization_keys = sa.Table(
    "organization_keys",
    metadata,
    sa.Column(
        "org_id",
        SafeString(40),
        sa.ForeignKey("organizations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("kek_ref", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
)

data_keys = sa.Table(
    "data_keys",
    metadata,
    sa.Column(
        "environment_id",
        SafeString(40),
        sa.ForeignKey("environments.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("org_id", SafeString(40), nullable=False),
    sa.Column("project_id", SafeString(40), nullable=False),
    sa.Column("key_id", SafeString(40), nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("kek_ref", sa.Text, nullable=False),
    sa.Column("kek_version", sa.Integer, nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
    sa.Index("ix_data_keys_org", "org_id", "project_id"),
)

_d = data_keys.c


def _wrapped(row: Any) -> WrappedKey:
    return WrappedKey(
        env=(row.org_id, row.project_id, row.environment_id),
        key_id=row.key_id,
        wrapped=bytes(row.wrapped),
        kek_ref=row.kek_ref,
        kek_version=row.kek_version,
    )


def _mine(env: EnvRef) -> tuple[sa.ColumnElement[bool], ...]:
    return (_d.org_id == env[0], _d.project_id == env[1], _d.environment_id == env[2])


class DataKeyTables(Transacting):
    """The `DataKeyStore` calls of `SqlControlStore`."""

    async def org_key(self, org_id: str) -> OrgKey:
        c = organization_keys.c
        async with self._begin() as conn:
            row = (
                await conn.execute(sa.select(organization_keys).where(c.org_id == org_id))
            ).first()
        if row is None:
            return OrgKey(org_id, LOCAL, 1)
        return OrgKey(org_id, row.kek_ref, row.version, row.update_time)

    async def set_org_key(self, key: OrgKey) -> None:
        c = organization_keys.c
        values = {
            "kek_ref": key.kek_ref,
            "version": key.version,
            "update_time": key.update_time or datetime.now(UTC),
        }
        async with self._begin(parent="organization") as conn:
            done = await conn.execute(
                organization_keys.update().where(c.org_id == key.org_id).values(**values)
            )
            if not done.rowcount:
                await conn.execute(organization_keys.insert().values(org_id=key.org_id, **values))

    async def data_key(self, env: EnvRef) -> WrappedKey | None:
        async with self._begin() as conn:
            row = (await conn.execute(sa.select(data_keys).where(*_mine(env)))).first()
        return None if row is None else _wrapped(row)

    async def add_data_key(self, key: WrappedKey) -> WrappedKey:
        try:
            return await self._add_data_key(key)
        except AlreadyExists:  # another replica made it between the read and the insert
            found = await self.data_key(key.env)
            if found is None:
                raise
            return found

    async def _add_data_key(self, key: WrappedKey) -> WrappedKey:
        now = datetime.now(UTC)
        org_id, project_id, environment_id = key.env
        async with self._begin(parent="environment") as conn:
            row = (
                await conn.execute(sa.select(data_keys).where(_d.environment_id == environment_id))
            ).first()
            if row is not None:
                return _wrapped(row)
            await conn.execute(
                data_keys.insert().values(
                    environment_id=environment_id,
                    org_id=org_id,
                    project_id=project_id,
                    key_id=key.key_id,
                    wrapped=key.wrapped,
                    kek_ref=key.kek_ref,
                    kek_version=key.kek_version,
                    create_time=now,
                    update_time=now,
                )
            )
        return key

    async def org_data_keys(self, org_id: str) -> Sequence[WrappedKey]:
        async with self._begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(data_keys).where(_d.org_id == org_id).order_by(_d.environment_id)
                )
            ).all()
        return [_wrapped(r) for r in rows]

    async def rewrap(self, keys: Sequence[WrappedKey]) -> None:
        now = datetime.now(UTC)
        async with self._begin() as conn:
            for key in keys:
                await conn.execute(
                    data_keys.update()
                    .where(*_mine(key.env), _d.key_id == key.key_id)
                    .values(
                        wrapped=key.wrapped,
                        kek_ref=key.kek_ref,
                        kek_version=key.kek_version,
                        update_time=now,
                    )
                )

    async def drop_data_keys(self, org_id: str, project_id: str, environment_id: str | None) -> int:
        where = [_d.org_id == org_id, _d.project_id == project_id]
        if environment_id is not None:
            where.append(_d.environment_id == environment_id)
        async with self._begin() as conn:
            done = await conn.execute(data_keys.delete().where(*where))
        return int(done.rowcount or 0)
