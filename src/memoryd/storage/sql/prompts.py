"""Prompt versions in the control store (`memoryd.domain.prompts`).

One row per version. A prompt's rows hang on its environment (ON DELETE
CASCADE): deleting the environment, or its project (which deletes its
environments), deletes its prompts. The table is new in schema version 2's
lifetime: `metadata.create_all` adds it to an existing database at open.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from memoryd.domain.prompts import Prompt
from memoryd.storage.sql.schema import SafeString, UTCDateTime, metadata
from memoryd.storage.sql.tx import Transacting

prompt_versions = sa.Table(
    "prompt_versions",
    metadata,
    sa.Column("org_id", SafeString(40), nullable=False),
    sa.Column("project_id", SafeString(40), nullable=False),
    sa.Column(
        "environment_id",
        SafeString(40),
        sa.ForeignKey("environments.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", SafeString(32), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.PrimaryKeyConstraint("environment_id", "name", "version", name="pk_prompt_versions"),
)


class PromptTables(Transacting):
    """The prompt calls of `SqlControlStore`."""

    async def create_prompt(self, prompt: Prompt) -> None:
        async with self._begin(parent="environment") as conn:
            await conn.execute(prompt_versions.insert().values(**vars(prompt)))

    async def add_prompt_version(
        self,
        org_id: str,
        project_id: str,
        environment_id: str,
        name: str,
        text: str,
        create_time: datetime,
    ) -> Prompt | None:
        c = prompt_versions.c
        mine = _scope(org_id, project_id, environment_id, name)
        values = {
            "org_id": org_id,
            "project_id": project_id,
            "environment_id": environment_id,
            "name": name,
            "text": text,
            "create_time": create_time,
        }
        # The next version is computed by the INSERT itself, and only when the
        # prompt has one already. Concurrent updates must not both
        # compute the same one: on PostgreSQL they queue on the row of the
        # prompt's first version (kept until the prompt is deleted) and each
        # statement then sees the versions committed before it; SQLite runs
        # the INSERT under its one write lock.
        first = sa.select(c.version).where(*mine, c.version == 1).with_for_update()
        current = sa.select(sa.func.max(c.version).label("version")).where(*mine).subquery()
        following = sa.select(
            *(sa.literal(v, type_=c[k].type).label(k) for k, v in values.items()),
            (current.c.version + 1).label("version"),
        ).where(current.c.version.is_not(None))
        insert = (
            prompt_versions.insert()
            .from_select([*values, "version"], following)
            .returning(c.version)
        )
        async with self._begin(parent="environment") as conn:
            await conn.execute(first)
            version = (await conn.execute(insert)).scalar()
        if version is None:
            return None
        return Prompt(org_id, project_id, environment_id, name, int(version), text, create_time)

    async def get_prompt(
        self, org_id: str, project_id: str, environment_id: str, name: str, version: int = 0
    ) -> Prompt | None:
        c = prompt_versions.c
        q = (
            sa.select(prompt_versions)
            .where(*_scope(org_id, project_id, environment_id, name))
            .order_by(c.version.desc())
            .limit(1)
        )
        if version:
            q = q.where(c.version == version)
        async with self._begin() as conn:
            row = (await conn.execute(q)).first()
        return _prompt(row) if row else None

    async def list_prompts(self, org_id: str, project_id: str, environment_id: str) -> list[Prompt]:
        c = prompt_versions.c
        later = prompt_versions.alias("later")
        newer = sa.select(later.c.version).where(
            later.c.environment_id == c.environment_id,
            later.c.name == c.name,
            later.c.version > c.version,
        )
        q = (
            sa.select(prompt_versions)
            .where(
                c.org_id == org_id,
                c.project_id == project_id,
                c.environment_id == environment_id,
                ~newer.exists(),
            )
            .order_by(c.name)
        )
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        return [_prompt(r) for r in rows]

    async def delete_prompt(
        self, org_id: str, project_id: str, environment_id: str, name: str
    ) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                prompt_versions.delete().where(*_scope(org_id, project_id, environment_id, name))
            )
        return bool(result.rowcount)


def _scope(org_id: str, project_id: str, environment_id: str, name: str) -> list[Any]:
    """The conditions of one prompt's rows, within its tenant."""
    c = prompt_versions.c
    return [
        c.org_id == org_id,
        c.project_id == project_id,
        c.environment_id == environment_id,
        c.name == name,
    ]


def _prompt(row: Any) -> Prompt:
    return Prompt(
        org_id=row.org_id,
        project_id=row.project_id,
        environment_id=row.environment_id,
        name=row.name,
        version=int(row.version),
        text=row.text,
        create_time=row.create_time,
    )
