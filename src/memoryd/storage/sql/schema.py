"""The control plane's tables, the column types both backends read alike,
and the migrations between schema versions.

`schema_version` records what was applied; `SqlControlStore.open` creates a
new schema or brings an older one up to `SCHEMA_VERSION` with `migrate`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from memoryd.domain.tenancy import EndUsers, Tenant

SCHEMA_VERSION = 3


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


def fit(column: sa.Column[Any], value: Any) -> Any:
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
    # soft delete (schema version 3): set by DeleteProject, cleared by
    # UndeleteProject; the row goes when purge_time passes
    sa.Column("delete_time", UTCDateTime),
    sa.Column("purge_time", UTCDateTime),
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
    sa.Column("delete_time", UTCDateTime),  # as projects' (schema version 3)
    sa.Column("purge_time", UTCDateTime),
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


def visible_to(table: sa.Table, tenant: Tenant) -> list[sa.ColumnElement[bool]]:
    """The conditions confining a read of `table` (with the tenant columns
    org_id, project_id, environment_id, end_user_id) to what `tenant` may
    see: its environment, and the end users it reaches (its own; none when
    it names none; any with all_end_users)."""
    c = table.c
    conds = [
        c.org_id == tenant.org_id,
        c.project_id == tenant.project_id,
        c.environment_id == tenant.environment_id,
    ]
    if tenant.end_users is EndUsers.ONE:
        conds.append(c.end_user_id == tenant.end_user_id)
    elif tenant.end_users is EndUsers.NONE:
        conds.append(c.end_user_id == "")
    return conds


def json_dump(value: dict[str, Any]) -> str:
    """A JSON column's text: compact, keys sorted."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


async def migrate(conn: AsyncConnection, version: int) -> None:
    """Brings a schema of `version` to SCHEMA_VERSION, in the open transaction."""
    if version < 2:  # audit events gain their details
        await conn.execute(
            sa.text("ALTER TABLE audit_events ADD COLUMN details TEXT NOT NULL DEFAULT '{}'")
        )
    if version < 3:  # projects and environments gain their soft delete
        for table in ("projects", "environments"):
            for column in ("delete_time", "purge_time"):
                kind = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name != "sqlite" else "DATETIME"
                await conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
    await conn.execute(schema_version.update().values(version=SCHEMA_VERSION))
