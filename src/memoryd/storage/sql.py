"""The control plane on SQL: SQLAlchemy Core, async, one code path for SQLite
(aiosqlite, the embedded default) and PostgreSQL (asyncpg).

The schema is created on `open()`; `schema_version` records what was applied,
so later versions can migrate in place.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from memoryd.domain.control import (
    ApiKeyRecord,
    AuditEvent,
    AuditQuery,
    Environment,
    KeyQuery,
    ListPage,
    Organization,
    Project,
    ProjectSettings,
    Quotas,
    RateLimits,
)
from memoryd.domain.errors import AlreadyExists, DomainError, NotFound, Unavailable
from memoryd.domain.tenancy import EnvironmentKind, KeyKind
from memoryd.storage.sql_outage import Guarded, Reachability, discard_broken_connections

SCHEMA_VERSION = 2
_PING_TIMEOUT_S = 1.5
_CONNECT_TIMEOUT_S = 5.0


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SafeString(sa.types.TypeDecorator[str]):
    """A string column both backends accept alike. PostgreSQL refuses NUL
    characters (SQLite stores them): a NUL becomes U+FFFD on the way in, so a
    client-sent id holding one matches nothing instead of failing the call."""

    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        if isinstance(value, str) and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value


def _fit(column: sa.Column[Any], value: Any) -> Any:
    """`value` cut to the column's length (PostgreSQL refuses longer strings)."""
    length = getattr(column.type, "length", None)
    if isinstance(value, str) and length and len(value) > length:
        return value[:length]
    return value


metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version", metadata, sa.Column("version", sa.Integer, nullable=False)
)

organizations = sa.Table(
    "organizations",
    metadata,
    sa.Column("id", SafeString(40), primary_key=True),
    sa.Column("name", SafeString(200), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", SafeString(40), primary_key=True),
    sa.Column("org_id", SafeString(40), sa.ForeignKey("organizations.id"), nullable=False),
    sa.Column("name", SafeString(63), nullable=False),
    sa.Column("display_name", SafeString(200), nullable=False),
    sa.Column("settings", sa.Text, nullable=False),
    sa.Column("rate_limits", sa.Text, nullable=False),
    sa.Column("quotas", sa.Text, nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
    sa.UniqueConstraint("org_id", "name", name="uq_projects_org_name"),
)

environments = sa.Table(
    "environments",
    metadata,
    sa.Column("id", SafeString(40), primary_key=True),
    sa.Column("org_id", SafeString(40), nullable=False),
    sa.Column(
        "project_id",
        SafeString(40),
        sa.ForeignKey("projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", SafeString(63), nullable=False),
    sa.Column("kind", SafeString(8), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.UniqueConstraint("project_id", "name", name="uq_environments_project_name"),
    sa.Index("ix_environments_org_kind", "org_id", "kind"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", SafeString(40), primary_key=True),
    sa.Column("org_id", SafeString(40), nullable=False),
    sa.Column("kind", SafeString(8), nullable=False),
    sa.Column("name", SafeString(100), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("secret_hash", SafeString(200), nullable=False),
    sa.Column("previous_secret_hash", SafeString(200), nullable=False, default=""),
    sa.Column("previous_secret_expire_time", UTCDateTime),
    sa.Column("project_id", SafeString(40), nullable=False, default=""),
    sa.Column("environment_id", SafeString(40), nullable=False, default=""),
    sa.Column("environment_kind", SafeString(8), nullable=False, default=""),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("expire_time", UTCDateTime),
    sa.Column("last_used_time", UTCDateTime),
    sa.Column("revoke_time", UTCDateTime),
    sa.Column("rotate_time", UTCDateTime),
    sa.Column("created_by", SafeString(40), nullable=False),
    sa.Index("ix_api_keys_org_time", "org_id", "create_time"),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", SafeString(40), primary_key=True),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("org_id", SafeString(40), nullable=False),
    sa.Column("project_id", SafeString(40), nullable=False),
    sa.Column("environment_id", SafeString(40), nullable=False),
    sa.Column("actor_key_id", SafeString(40), nullable=False),
    sa.Column("action", SafeString(64), nullable=False),
    sa.Column("target", SafeString(200), nullable=False),
    sa.Column("request_id", SafeString(100), nullable=False),
    sa.Column("peer", SafeString(200), nullable=False),
    sa.Column("outcome", SafeString(40), nullable=False),
    # JSON object of strings (schema version 2)
    sa.Column("details", sa.Text, nullable=False, server_default="{}"),
    sa.Index("ix_audit_org_time", "org_id", "time"),
)


def _json_dump(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _settings_to_json(s: ProjectSettings) -> str:
    ttl = s.default_ttl.total_seconds() if s.default_ttl is not None else None
    return _json_dump(
        {
            "require_end_user_id": s.require_end_user_id,
            "dedupe_threshold": s.dedupe_threshold,
            "default_ttl_s": ttl,
        }
    )


def _settings_from_json(raw: str) -> ProjectSettings:
    d = json.loads(raw)
    ttl = d.get("default_ttl_s")
    return ProjectSettings(
        require_end_user_id=bool(d.get("require_end_user_id", False)),
        dedupe_threshold=float(d.get("dedupe_threshold", 0.0)),
        default_ttl=timedelta(seconds=ttl) if ttl is not None else None,
    )


def _keyset(
    q: sa.Select[Any],
    time_col: sa.ColumnElement[Any],
    id_col: sa.ColumnElement[Any],
    after: tuple[str, str] | None,
    limit: int,
    *,
    descending: bool,
) -> sa.Select[Any]:
    """`q` ordered by (time, id), strictly after the keyset position `after`,
    one row beyond `limit` so that `_next_after` can tell whether more follow."""
    if after is not None:
        t = datetime.fromisoformat(after[0])
        if descending:
            q = q.where(sa.or_(time_col < t, sa.and_(time_col == t, id_col < after[1])))
        else:
            q = q.where(sa.or_(time_col > t, sa.and_(time_col == t, id_col > after[1])))
    order = (time_col.desc(), id_col.desc()) if descending else (time_col, id_col)
    return q.order_by(*order).limit(limit + 1)


async def _migrate(conn: AsyncConnection, version: int) -> None:
    """Brings a schema of `version` to SCHEMA_VERSION, in the open transaction."""
    if version < 2:  # audit events gain their details
        await conn.execute(
            sa.text("ALTER TABLE audit_events ADD COLUMN details TEXT NOT NULL DEFAULT '{}'")
        )
    await conn.execute(schema_version.update().values(version=SCHEMA_VERSION))


class SqlControlStore:
    """`ControlStore` on SQLAlchemy Core async. See `memoryd.domain.control`."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self._url = url
        self._echo = echo
        self._engine: AsyncEngine | None = None
        self._reach = Reachability()

    @property
    def reachable(self) -> bool:
        """Whether the database answered the last call (see `sql_outage`)."""
        return self._reach.reachable

    def on_reachability_change(self, listener: Callable[[bool], None]) -> None:
        """`listener(reachable)` runs when the database stops or starts answering."""
        self._reach.on_change(listener)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("SqlControlStore.open() was not called")
        return self._engine

    async def open(self) -> None:
        kwargs: dict[str, Any] = {"echo": self._echo}
        if self._url.startswith("sqlite"):
            path = self._url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        else:
            # a host that drops packets must not hold a call for asyncpg's 60 s default
            kwargs.update(
                pool_size=10,
                max_overflow=10,
                pool_pre_ping=True,
                connect_args={"timeout": _CONNECT_TIMEOUT_S},
            )
        self._engine = create_async_engine(self._url, **kwargs)
        discard_broken_connections(self._engine)
        if self._url.startswith("sqlite"):

            @sa.event.listens_for(self._engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=5000")
                cur.close()

        async with self._begin() as conn:
            await conn.run_sync(metadata.create_all)
            version = (await conn.execute(sa.select(schema_version.c.version))).scalar()
            if version is None:
                await conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
            elif version < SCHEMA_VERSION:
                await _migrate(conn, version)
            elif version > SCHEMA_VERSION:
                raise Unavailable(
                    f"the database schema is version {version}, newer than this server "
                    f"understands ({SCHEMA_VERSION}); upgrade memoryd"
                )

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def ping(self) -> bool:
        """Whether the database answers `SELECT 1` in time (for health)."""
        try:
            async with asyncio.timeout(_PING_TIMEOUT_S):
                async with Guarded(self.engine.connect(), self._reach) as conn:
                    await conn.execute(sa.text("SELECT 1"))
        except TimeoutError:
            self._reach.failed(f"no answer within {_PING_TIMEOUT_S} s")
            return False
        except Unavailable:
            return False
        return True

    def _begin(self, parent: str = "") -> Any:
        """A transaction; `parent` names what its new rows belong to, for the
        error when that was deleted meanwhile. Every use of the engine goes
        through here: an outage becomes Unavailable (DATABASE_UNAVAILABLE)
        with a retry hint, logged once."""
        return Guarded(_Tx(self.engine, parent), self._reach)

    # --- organizations ---------------------------------------------------------

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

    # --- projects ---------------------------------------------------------------

    async def create_project(self, project: Project, envs: Sequence[Environment]) -> None:
        async with self._begin() as conn:
            await conn.execute(projects.insert().values(**self._project_row(project)))
            for env in envs:
                await conn.execute(environments.insert().values(**self._env_row(env)))

    @staticmethod
    def _project_row(p: Project) -> dict[str, Any]:
        return {
            "id": p.id,
            "org_id": p.org_id,
            "name": p.name,
            "display_name": p.display_name,
            "settings": _settings_to_json(p.settings),
            "rate_limits": _json_dump(vars(p.rate_limits)),
            "quotas": _json_dump(vars(p.quotas)),
            "create_time": p.create_time,
            "update_time": p.update_time,
        }

    @staticmethod
    def _env_row(e: Environment) -> dict[str, Any]:
        return {
            "id": e.id,
            "org_id": e.org_id,
            "project_id": e.project_id,
            "name": e.name,
            "kind": e.kind.value,
            "create_time": e.create_time,
        }

    @staticmethod
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
        )

    @staticmethod
    def _env(row: Any) -> Environment:
        return Environment(
            id=row.id,
            org_id=row.org_id,
            project_id=row.project_id,
            name=row.name,
            kind=EnvironmentKind(row.kind),
            create_time=row.create_time,
        )

    async def _envs_of(
        self, conn: AsyncConnection, project_ids: Sequence[str]
    ) -> dict[str, list[Environment]]:
        out: dict[str, list[Environment]] = {pid: [] for pid in project_ids}
        if not project_ids:
            return out
        rows = await conn.execute(
            sa.select(environments)
            .where(environments.c.project_id.in_(project_ids))
            .order_by(environments.c.create_time, environments.c.id)
        )
        for row in rows:
            out[row.project_id].append(self._env(row))
        return out

    async def get_project(self, org_id: str, project_id: str) -> Project | None:
        async with self._begin() as conn:
            row = (
                await conn.execute(
                    sa.select(projects).where(
                        projects.c.id == project_id, projects.c.org_id == org_id
                    )
                )
            ).first()
            if row is None:
                return None
            envs = await self._envs_of(conn, [row.id])
        return self._project(row, envs[row.id])

    async def list_projects(
        self, org_id: str, limit: int, after: tuple[str, str] | None
    ) -> ListPage[Project]:
        q = sa.select(projects).where(projects.c.org_id == org_id)
        q = _keyset(q, projects.c.create_time, projects.c.id, after, limit, descending=False)
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
            envs = await self._envs_of(conn, [r.id for r in rows[:limit]])
        items = [self._project(r, envs[r.id]) for r in rows[:limit]]
        return ListPage(
            items, _next_after(items, limit, len(rows), lambda p: (p.create_time, p.id))
        )

    async def update_project(self, project: Project) -> None:
        row = self._project_row(project)
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

    # --- environments -------------------------------------------------------------

    async def create_environment(self, env: Environment) -> None:
        async with self._begin(parent="project") as conn:
            await conn.execute(environments.insert().values(**self._env_row(env)))

    async def get_environment(self, org_id: str, environment_id: str) -> Environment | None:
        async with self._begin() as conn:
            row = (
                await conn.execute(
                    sa.select(environments).where(
                        environments.c.id == environment_id, environments.c.org_id == org_id
                    )
                )
            ).first()
        return self._env(row) if row else None

    async def list_environments(
        self, org_id: str, project_id: str, limit: int, after: tuple[str, str] | None
    ) -> ListPage[Environment]:
        q = sa.select(environments).where(
            environments.c.org_id == org_id, environments.c.project_id == project_id
        )
        q = _keyset(
            q, environments.c.create_time, environments.c.id, after, limit, descending=False
        )
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        items = [self._env(r) for r in rows[:limit]]
        return ListPage(
            items, _next_after(items, limit, len(rows), lambda e: (e.create_time, e.id))
        )

    async def list_environments_of_kind(
        self, org_id: str, kind: EnvironmentKind
    ) -> list[Environment]:
        async with self._begin() as conn:
            rows = await conn.execute(
                sa.select(environments).where(
                    environments.c.org_id == org_id, environments.c.kind == kind.value
                )
            )
            return [self._env(r) for r in rows]

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

    # --- keys ------------------------------------------------------------------------

    @staticmethod
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

    @staticmethod
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
            environment_kind=EnvironmentKind(row.environment_kind)
            if row.environment_kind
            else None,
            create_time=row.create_time,
            expire_time=row.expire_time,
            last_used_time=row.last_used_time,
            revoke_time=row.revoke_time,
            rotate_time=row.rotate_time,
            created_by=row.created_by,
        )

    async def create_key(self, key: ApiKeyRecord) -> None:
        row = self._key_row(key)
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
        return self._key(row) if row else None

    async def get_org_key(self, org_id: str, key_id: str) -> ApiKeyRecord | None:
        async with self._begin() as conn:
            row = (
                await conn.execute(
                    sa.select(api_keys).where(api_keys.c.id == key_id, api_keys.c.org_id == org_id)
                )
            ).first()
        return self._key(row) if row else None

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
        q = _keyset(q, api_keys.c.create_time, api_keys.c.id, after, limit, descending=True)
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        items = [self._key(r) for r in rows[:limit]]
        return ListPage(
            items, _next_after(items, limit, len(rows), lambda k: (k.create_time, k.id))
        )

    async def update_key(self, key: ApiKeyRecord) -> None:
        row = self._key_row(key)
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

    # --- audit -----------------------------------------------------------------------

    async def append_audit(self, event: AuditEvent) -> None:
        async with self._begin() as conn:
            # An event records what a client sent (a target name, a request id),
            # valid or not: cut it to fit rather than lose the event.
            row = {k: _fit(audit_events.c[k], v) for k, v in vars(event).items()}
            row["details"] = _json_dump(event.details)
            await conn.execute(audit_events.insert().values(**row))

    async def list_audit(
        self, query: AuditQuery, limit: int, after: tuple[str, str] | None
    ) -> ListPage[AuditEvent]:
        c = audit_events.c
        q = sa.select(audit_events).where(c.org_id == query.org_id)
        for col, value in (
            (c.project_id, query.project_id),
            (c.environment_id, query.environment_id),
            (c.actor_key_id, query.actor_key_id),
            (c.action, query.action),
        ):
            if value:
                q = q.where(col == value)
        if query.start_time is not None:
            q = q.where(c.time >= query.start_time)
        if query.end_time is not None:
            q = q.where(c.time < query.end_time)
        q = _keyset(q, c.time, c.id, after, limit, descending=True)
        async with self._begin() as conn:
            rows = list(await conn.execute(q))
        items = [
            AuditEvent(
                **{k: getattr(r, k) for k in r._fields if k != "details"},
                details=json.loads(r.details),
            )
            for r in rows[:limit]
        ]
        return ListPage(items, _next_after(items, limit, len(rows), lambda e: (e.time, e.id)))


def _next_after(items: Sequence[Any], limit: int, fetched: int, key: Any) -> tuple[str, str] | None:
    if fetched <= limit or not items:
        return None
    t, ident = key(items[-1])
    return (t.isoformat(), ident)


# What an integrity error was, from the driver's own code: PostgreSQL's
# SQLSTATE (asyncpg), SQLite's extended result code name (sqlite3).
_UNIQUE = "unique"
_FOREIGN_KEY = "foreign key"
_PG_KINDS = {"23505": _UNIQUE, "23503": _FOREIGN_KEY}
_SQLITE_KINDS = {
    "SQLITE_CONSTRAINT_UNIQUE": _UNIQUE,
    "SQLITE_CONSTRAINT_PRIMARYKEY": _UNIQUE,
    "SQLITE_CONSTRAINT_FOREIGNKEY": _FOREIGN_KEY,
}


def _integrity_kind(err: IntegrityError) -> str:
    """`_UNIQUE`, `_FOREIGN_KEY`, or "" for any other violation."""
    orig = err.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate:
        return _PG_KINDS.get(str(sqlstate), "")
    return _SQLITE_KINDS.get(str(getattr(orig, "sqlite_errorname", "")), "")


def _domain_error(err: IntegrityError, parent: str) -> DomainError | None:
    """The client's view of an integrity error: a taken name, or a parent
    (`parent`: what the row belongs to) deleted meanwhile. Any other violation
    is a server bug and stays as it is (None)."""
    kind = _integrity_kind(err)
    if kind == _UNIQUE:
        return AlreadyExists("that name is already taken", reason="ALREADY_EXISTS")
    if kind == _FOREIGN_KEY:
        return NotFound(
            f"the {parent or 'resource'} this belongs to no longer exists", reason="NOT_FOUND"
        )
    return None


class _Tx:
    """`async with` a transaction; a unique violation becomes `AlreadyExists`,
    a foreign-key violation `NotFound` (naming `parent`), connection errors
    `Unavailable`."""

    def __init__(self, engine: AsyncEngine, parent: str = "") -> None:
        self._cm = engine.begin()
        self._parent = parent

    async def __aenter__(self) -> AsyncConnection:
        try:
            return await self._cm.__aenter__()
        except (OSError, OperationalError) as exc:
            raise Unavailable("the control-plane database is unreachable; retry shortly") from exc

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool:
        try:
            await self._cm.__aexit__(et, exc, tb)
        except IntegrityError as err:
            mapped = _domain_error(err, self._parent)
            if mapped is None:
                raise
            raise mapped from err
        except (OSError, OperationalError) as err:
            raise Unavailable("the control-plane database is unreachable; retry shortly") from err
        if isinstance(exc, IntegrityError):
            mapped = _domain_error(exc, self._parent)
            if mapped is not None:
                raise mapped from exc
            return False
        if isinstance(exc, OSError | OperationalError):
            raise Unavailable("the control-plane database is unreachable; retry shortly") from exc
        return False
