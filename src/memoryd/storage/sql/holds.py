"""Legal holds in the control store (`memoryd.domain.holds.HoldStore`).

Every row carries its tenant (organization, project, environment, end
user: "" for a hold on the whole environment) from its first line; every
caller's read and delete is confined to its organization. Deleting an
environment deletes its holds (foreign key, ON DELETE CASCADE), though a
held environment cannot be deleted in the first place. The guarded deletes
ask `first_hold`: one query on the (environment, end user) index.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from memoryd.domain.holds import LegalHold
from memoryd.storage.sql.schema import SafeString, UTCDateTime, metadata
from memoryd.storage.sql.tx import Transacting

legal_holds = sa.Table(
    "legal_holds",
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
    sa.Column("end_user_id", SafeString(200), nullable=False),  # "" = the environment
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_by", SafeString(40), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Index("ix_legal_holds_scope", "environment_id", "end_user_id"),
    sa.Index("ix_legal_holds_org_project", "org_id", "project_id"),
)


def _hold(row: Any) -> LegalHold:
    return LegalHold(
        id=row.id,
        org_id=row.org_id,
        project_id=row.project_id,
        environment_id=row.environment_id,
        end_user_id=row.end_user_id,
        reason=row.reason,
        created_by=row.created_by,
        create_time=row.create_time,
    )


class HoldTables(Transacting):
    """The `HoldStore` calls of `SqlControlStore`."""

    async def create_hold(self, hold: LegalHold) -> None:
        async with self._begin(parent="environment") as conn:
            await conn.execute(legal_holds.insert().values(**vars(hold)))

    async def delete_hold(self, org_id: str, hold_id: str) -> LegalHold | None:
        c = legal_holds.c
        mine = (c.id == hold_id, c.org_id == org_id)
        async with self._begin() as conn:
            row = (await conn.execute(sa.select(legal_holds).where(*mine))).first()
            if row is None:
                return None
            await conn.execute(legal_holds.delete().where(*mine))
        return _hold(row)

    async def list_holds(
        self, org_id: str, project_id: str, environment_id: str, limit: int, after: str | None
    ) -> list[LegalHold]:
        c = legal_holds.c
        q = sa.select(legal_holds).where(c.org_id == org_id)
        if project_id:
            q = q.where(c.project_id == project_id)
        if environment_id:
            q = q.where(c.environment_id == environment_id)
        if after:
            q = q.where(c.id > after)
        async with self._begin() as conn:
            return [_hold(r) for r in await conn.execute(q.order_by(c.id).limit(limit))]

    async def first_hold(
        self, org_id: str, project_id: str, environment_id: str | None, end_user_id: str | None
    ) -> LegalHold | None:
        c = legal_holds.c
        q = sa.select(legal_holds).where(c.org_id == org_id, c.project_id == project_id)
        if environment_id is not None:
            q = q.where(c.environment_id == environment_id)
            if end_user_id is not None:
                q = q.where(c.end_user_id.in_(["", end_user_id]))
        async with self._begin() as conn:
            row = (await conn.execute(q.order_by(c.id).limit(1))).first()
        return _hold(row) if row else None

    async def all_holds(self) -> list[LegalHold]:
        async with self._begin() as conn:
            return [_hold(r) for r in await conn.execute(sa.select(legal_holds))]
