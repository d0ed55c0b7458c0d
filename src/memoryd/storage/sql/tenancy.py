"""Organizations, projects and environments in the control store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from memoryd.domain.control import (
    Environment,
    ListPage,
    Organization,
    Project,
    ProjectSettings,
    Quotas,
    RateLimits,
)
from memoryd.domain.tenancy import EnvironmentKind, KeyKind
from memoryd.storage.sql.paging import keyset, next_after
from memoryd.storage.sql.schema import api_keys, environments, json_dump, organizations, projects
from memoryd.storage.sql.tx import Transacting


class TenancyTables(Transacting):
    """The organization, project and environment calls of `SqlControlStore`."""

    async def create_org(self, org: Organization) -> None:
        async with self._begin() as conn:
            await conn.execute(
                organizations.insert().values(id=org.id, name=org.name, create_time=org.create_time)
            )

    async def get_org(self, org_id: str) -> Organization | None:
        async with self._begin() as conn:
            row = (
                await conn.execute(sa.select(organizations).where(organizations.c.id == org_id))
            ).first()
        return Organization(row.id, row.name, row.create_time) if row else None

    async def count_orgs(self) -> int:
        async with self._begin() as conn:
            return int(
                (
                    await conn.execute(sa.select(sa.func.count()).select_from(organizations))
                ).scalar_one()
            )

    async def orgs_named(self, name: str, limit: int = 2) -> list[Organization]:
        """Organizations called `name` (names are not unique), oldest first."""
        q = (
            sa.select(organizations)
            .where(organizations.c.name == name)
            .order_by(organizations.c.create_time)
            .limit(limit)
        )
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        return [Organization(r.id, r.name, r.create_time) for r in rows]

    async def orgs_without_owner_key(self, limit: int = 10) -> list[Organization]:
        """Organizations with no usable owner key (an org key holding `*`, not
        revoked, not expired): a bootstrap stopped between its two writes, or
        an owner key revoked. `memoryd bootstrap --new-owner-key` repairs it."""
        now = datetime.now(UTC)
        k = api_keys.c
        owner_key = sa.select(k.id).where(
            k.org_id == organizations.c.id,
            k.kind == KeyKind.ORG.value,
            k.scopes.like('%"*"%'),
            k.revoke_time.is_(None),
            sa.or_(k.expire_time.is_(None), k.expire_time > now),
        )
        q = (
            sa.select(organizations)
            .where(~owner_key.exists())
            .order_by(organizations.c.create_time)
            .limit(limit)
        )
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        return [Organization(r.id, r.name, r.create_time) for r in rows]

    async def create_project(self, project: Project, envs: Sequence[Environment]) -> None:
        async with self._begin() as conn:
            await conn.execute(projects.insert().values(**_project_row(project)))
            for env in envs:
                await conn.execute(environments.insert().values(**_env_row(env)))

    async def _envs_of(
        self, conn: AsyncConnection, project_ids: Sequence[str], show_deleted: bool = False
    ) -> dict[str, list[Environment]]:
        out: dict[str, list[Environment]] = {pid: [] for pid in project_ids}
        if not project_ids:
            return out
        q = sa.select(environments).where(environments.c.project_id.in_(project_ids))
        if not show_deleted:
            q = q.where(environments.c.delete_time.is_(None))
        rows = await conn.execute(q.order_by(environments.c.create_time, environments.c.id))
        for row in rows:
            out[row.project_id].append(_env(row))
        return out

    async def get_project(
        self, org_id: str, project_id: str, show_deleted: bool = False
    ) -> Project | None:
        q = sa.select(projects).where(projects.c.id == project_id, projects.c.org_id == org_id)
        if not show_deleted:
            q = q.where(projects.c.delete_time.is_(None))
        async with self._begin() as conn:
            row = (await conn.execute(q)).first()
            if row is None:
                return None
            envs = await self._envs_of(conn, [row.id], show_deleted)
        return _project(row, envs[row.id])

    async def list_projects(
        self, org_id: str, limit: int, after: tuple[str, str] | None, show_deleted: bool = False
    ) -> ListPage[Project]:
        q = sa.select(projects).where(projects.c.org_id == org_id)
        if not show_deleted:
            q = q.where(projects.c.delete_time.is_(None))
        q = keyset(q, projects.c.create_time, projects.c.id, after, limit, descending=False)
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
            envs = await self._envs_of(conn, [r.id for r in rows[:limit]], show_deleted)
        items = [_project(r, envs[r.id]) for r in rows[:limit]]
        return ListPage(items, next_after(items, limit, len(rows), lambda p: (p.create_time, p.id)))

    async def mark_deleted(
        self,
        org_id: str,
        project_id: str,
        environment_id: str | None,
        delete_time: datetime,
        purge_time: datetime,
    ) -> bool:
        table, cond = _scope_row(project_id, environment_id)
        async with self._begin() as conn:
            result = await conn.execute(
                table.update()
                .where(table.c.org_id == org_id, table.c.delete_time.is_(None), *cond)
                .values(delete_time=delete_time, purge_time=purge_time)
            )
        return bool(result.rowcount == 1)

    async def undelete(self, org_id: str, project_id: str, environment_id: str | None) -> bool:
        table, cond = _scope_row(project_id, environment_id)
        async with self._begin() as conn:
            result = await conn.execute(
                table.update()
                .where(table.c.org_id == org_id, table.c.delete_time.isnot(None), *cond)
                .values(delete_time=None, purge_time=None)
            )
        return bool(result.rowcount == 1)

    async def due_purges(self, now: datetime, limit: int) -> list[tuple[str, str, str | None]]:
        async with self._begin() as conn:
            prjs = await conn.execute(
                sa.select(projects.c.org_id, projects.c.id)
                .where(projects.c.purge_time.isnot(None), projects.c.purge_time <= now)
                .order_by(projects.c.purge_time)
                .limit(limit)
            )
            out: list[tuple[str, str, str | None]] = [(r.org_id, r.id, None) for r in prjs]
            live_project = sa.select(projects.c.id).where(
                projects.c.id == environments.c.project_id, projects.c.delete_time.is_(None)
            )
            envs = await conn.execute(
                sa.select(environments.c.org_id, environments.c.project_id, environments.c.id)
                .where(
                    environments.c.purge_time.isnot(None),
                    environments.c.purge_time <= now,
                    sa.exists(live_project),
                )
                .order_by(environments.c.purge_time)
                .limit(limit)
            )
            out.extend((r.org_id, r.project_id, r.id) for r in envs)
        return out[:limit]

    async def update_project(self, project: Project) -> None:
        row = _project_row(project)
        async with self._begin() as conn:
            await conn.execute(
                projects.update()
                .where(projects.c.id == project.id, projects.c.org_id == project.org_id)
                .values(
                    **{k: v for k, v in row.items() if k not in ("id", "org_id", "create_time")}
                )
            )

    async def delete_project(self, org_id: str, project_id: str) -> None:
        # Rows before the keys that hang on them: deleting the environments
        # waits for a key being created in one (see create_key), so the key
        # delete below sees it.
        async with self._begin() as conn:
            await conn.execute(
                environments.delete().where(
                    environments.c.org_id == org_id, environments.c.project_id == project_id
                )
            )
            await conn.execute(
                projects.delete().where(projects.c.org_id == org_id, projects.c.id == project_id)
            )
            await conn.execute(
                api_keys.delete().where(
                    api_keys.c.org_id == org_id, api_keys.c.project_id == project_id
                )
            )

    async def create_environment(self, env: Environment) -> None:
        async with self._begin(parent="project") as conn:
            await conn.execute(environments.insert().values(**_env_row(env)))

    async def get_environment(
        self, org_id: str, environment_id: str, show_deleted: bool = False
    ) -> Environment | None:
        q = sa.select(environments).where(
            environments.c.id == environment_id, environments.c.org_id == org_id
        )
        if not show_deleted:
            live_project = sa.select(projects.c.id).where(
                projects.c.id == environments.c.project_id, projects.c.delete_time.is_(None)
            )
            q = q.where(environments.c.delete_time.is_(None), sa.exists(live_project))
        async with self._begin() as conn:
            row = (await conn.execute(q)).first()
        return _env(row) if row else None

    async def list_environments(
        self,
        org_id: str,
        project_id: str,
        limit: int,
        after: tuple[str, str] | None,
        show_deleted: bool = False,
    ) -> ListPage[Environment]:
        q = sa.select(environments).where(
            environments.c.org_id == org_id, environments.c.project_id == project_id
        )
        if not show_deleted:
            q = q.where(environments.c.delete_time.is_(None))
        q = keyset(q, environments.c.create_time, environments.c.id, after, limit, descending=False)
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        items = [_env(r) for r in rows[:limit]]
        return ListPage(items, next_after(items, limit, len(rows), lambda e: (e.create_time, e.id)))

    async def list_environments_of_kind(
        self, org_id: str, kind: EnvironmentKind
    ) -> list[Environment]:
        async with self._begin() as conn:
            rows = await conn.execute(
                sa.select(environments).where(
                    environments.c.org_id == org_id,
                    environments.c.kind == kind.value,
                    environments.c.delete_time.is_(None),  # a deleted one is invisible
                    sa.exists(
                        sa.select(projects.c.id).where(
                            projects.c.id == environments.c.project_id,
                            projects.c.delete_time.is_(None),
                        )
                    ),
                )
            )
            return [_env(r) for r in rows]

    async def delete_environment(self, org_id: str, environment_id: str) -> None:
        async with self._begin() as conn:  # the row before its keys: see delete_project
            await conn.execute(
                environments.delete().where(
                    environments.c.org_id == org_id, environments.c.id == environment_id
                )
            )
            await conn.execute(
                api_keys.delete().where(
                    api_keys.c.org_id == org_id, api_keys.c.environment_id == environment_id
                )
            )


def _project_row(p: Project) -> dict[str, Any]:
    return {
        "id": p.id,
        "org_id": p.org_id,
        "name": p.name,
        "display_name": p.display_name,
        "settings": _settings_to_json(p.settings),
        "rate_limits": json_dump(vars(p.rate_limits)),
        "quotas": json_dump(vars(p.quotas)),
        "create_time": p.create_time,
        "update_time": p.update_time,
    }


def _env_row(e: Environment) -> dict[str, Any]:
    return {
        "id": e.id,
        "org_id": e.org_id,
        "project_id": e.project_id,
        "name": e.name,
        "kind": e.kind.value,
        "create_time": e.create_time,
    }


def _project(row: Any, envs: Sequence[Environment] = ()) -> Project:
    return Project(
        id=row.id,
        org_id=row.org_id,
        name=row.name,
        display_name=row.display_name,
        settings=_settings_from_json(row.settings),
        rate_limits=RateLimits(**json.loads(row.rate_limits)),
        quotas=Quotas(**json.loads(row.quotas)),
        create_time=row.create_time,
        update_time=row.update_time,
        environments=tuple(envs),
        delete_time=row.delete_time,
        purge_time=row.purge_time,
    )


def _env(row: Any) -> Environment:
    return Environment(
        id=row.id,
        org_id=row.org_id,
        project_id=row.project_id,
        name=row.name,
        kind=EnvironmentKind(row.kind),
        create_time=row.create_time,
        delete_time=row.delete_time,
        purge_time=row.purge_time,
    )


def _settings_to_json(s: ProjectSettings) -> str:
    ttl = s.default_ttl.total_seconds() if s.default_ttl is not None else None
    return json_dump(
        {
            "require_end_user_id": s.require_end_user_id,
            "dedupe_threshold": s.dedupe_threshold,
            "default_ttl_s": ttl,
            "deletion_retention_days": s.deletion_retention_days,
        }
    )


def _settings_from_json(raw: str) -> ProjectSettings:
    d = json.loads(raw)
    ttl = d.get("default_ttl_s")
    return ProjectSettings(
        require_end_user_id=bool(d.get("require_end_user_id", False)),
        dedupe_threshold=float(d.get("dedupe_threshold", 0.0)),
        default_ttl=timedelta(seconds=ttl) if ttl is not None else None,
        deletion_retention_days=d.get("deletion_retention_days"),
    )


def _scope_row(
    project_id: str, environment_id: str | None
) -> tuple[sa.Table, list[sa.ColumnElement[bool]]]:
    """The table and conditions of a project's row, or of one of its
    environments' (soft delete and undelete mark either)."""
    if environment_id is None:
        return projects, [projects.c.id == project_id]
    return environments, [
        environments.c.id == environment_id,
        environments.c.project_id == project_id,
    ]
