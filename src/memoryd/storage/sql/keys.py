"""API keys in the control store."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from memoryd.domain.control import ApiKeyRecord, KeyQuery, ListPage
from memoryd.domain.errors import NotFound
from memoryd.domain.tenancy import EnvironmentKind, KeyKind
from memoryd.storage.sql.paging import keyset, next_after
from memoryd.storage.sql.schema import api_keys, environments, projects
from memoryd.storage.sql.tx import Transacting


class KeyTables(Transacting):
    """The API key calls of `SqlControlStore`."""

    async def create_key(self, key: ApiKeyRecord) -> None:
        row = _key_row(key)
        async with self._begin() as conn:
            if not key.environment_id:  # an org key
                await conn.execute(api_keys.insert().values(**row))
                return
            # A data key is written only while its environment exists, in one
            # statement (SQLite runs it under its one write lock) that on
            # PostgreSQL also locks the environment row (FOR SHARE): a delete of
            # the environment, which removes the row before its keys, either
            # waits for this key and removes it too, or has removed the row and
            # no key is written.
            env = (
                sa.select(environments.c.id)
                .where(
                    environments.c.id == key.environment_id,
                    environments.c.org_id == key.org_id,
                    environments.c.project_id == key.project_id,
                    environments.c.delete_time.is_(None),
                )
                .with_for_update(read=True)
            )
            values = sa.select(
                *(sa.literal(v, type_=api_keys.c[k].type).label(k) for k, v in row.items())
            ).where(sa.exists(env))
            result = await conn.execute(api_keys.insert().from_select(list(row), values))
            if result.rowcount != 1:
                raise NotFound("the environment of this key no longer exists")

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        async with self._begin() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).first()
            if row is None:
                return None
            deleted = False
            if row.project_id:  # one indexed read each: the key's project, its environment
                deleted = bool(
                    (
                        await conn.execute(
                            sa.select(sa.func.count())
                            .select_from(projects)
                            .where(
                                projects.c.id == row.project_id, projects.c.delete_time.isnot(None)
                            )
                        )
                    ).scalar_one()
                )
            if row.environment_id and not deleted:
                deleted = bool(
                    (
                        await conn.execute(
                            sa.select(sa.func.count())
                            .select_from(environments)
                            .where(
                                environments.c.id == row.environment_id,
                                environments.c.delete_time.isnot(None),
                            )
                        )
                    ).scalar_one()
                )
        return replace(_key(row), scope_deleted=deleted)

    async def get_org_key(self, org_id: str, key_id: str) -> ApiKeyRecord | None:
        async with self._begin() as conn:
            row = (
                await conn.execute(
                    sa.select(api_keys).where(api_keys.c.id == key_id, api_keys.c.org_id == org_id)
                )
            ).first()
        return _key(row) if row else None

    async def list_keys(
        self, query: KeyQuery, limit: int, after: tuple[str, str] | None
    ) -> ListPage[ApiKeyRecord]:
        q = sa.select(api_keys).where(api_keys.c.org_id == query.org_id)
        if query.project_id:
            q = q.where(api_keys.c.project_id == query.project_id)
        if query.environment_id:
            q = q.where(api_keys.c.environment_id == query.environment_id)
        if not query.show_revoked:
            q = q.where(api_keys.c.revoke_time.is_(None))
        q = keyset(q, api_keys.c.create_time, api_keys.c.id, after, limit, descending=True)
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        items = [_key(r) for r in rows[:limit]]
        return ListPage(items, next_after(items, limit, len(rows), lambda k: (k.create_time, k.id)))

    async def update_key(self, key: ApiKeyRecord) -> None:
        row = _key_row(key)
        async with self._begin() as conn:
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key.id, api_keys.c.org_id == key.org_id)
                .values(**{k: v for k, v in row.items() if k not in ("id", "org_id")})
            )

    async def touch_key(self, key_id: str, when: datetime) -> None:
        async with self._begin() as conn:
            await conn.execute(
                api_keys.update().where(api_keys.c.id == key_id).values(last_used_time=when)
            )


def _key_row(k: ApiKeyRecord) -> dict[str, Any]:
    return {
        "id": k.id,
        "org_id": k.org_id,
        "kind": k.kind.value,
        "name": k.name,
        "scopes": json.dumps(list(k.scopes)),
        "secret_hash": k.secret_hash,
        "previous_secret_hash": k.previous_secret_hash,
        "previous_secret_expire_time": k.previous_secret_expire_time,
        "project_id": k.project_id,
        "environment_id": k.environment_id,
        "environment_kind": k.environment_kind.value if k.environment_kind else "",
        "create_time": k.create_time,
        "expire_time": k.expire_time,
        "last_used_time": k.last_used_time,
        "revoke_time": k.revoke_time,
        "rotate_time": k.rotate_time,
        "created_by": k.created_by,
    }


def _key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        org_id=row.org_id,
        kind=KeyKind(row.kind),
        name=row.name,
        scopes=tuple(json.loads(row.scopes)),
        secret_hash=row.secret_hash,
        previous_secret_hash=row.previous_secret_hash,
        previous_secret_expire_time=row.previous_secret_expire_time,
        project_id=row.project_id,
        environment_id=row.environment_id,
        environment_kind=EnvironmentKind(row.environment_kind) if row.environment_kind else None,
        create_time=row.create_time,
        expire_time=row.expire_time,
        last_used_time=row.last_used_time,
        revoke_time=row.revoke_time,
        rotate_time=row.rotate_time,
        created_by=row.created_by,
    )
