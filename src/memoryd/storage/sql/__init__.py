"""The control plane on SQL: SQLAlchemy Core, async, one code path for SQLite
(aiosqlite, the embedded default) and PostgreSQL (asyncpg).

`SqlControlStore` (`store`) implements the domain's `ControlStore`; its
calls live with their tables: `tenancy` (organizations, projects,
environments), `keys`, `audit`, `idempotency` (which defines its own table,
on the same metadata). `schema` holds the other tables and migrations
(created on `open()`; `schema_version` records what was applied, so later
versions migrate in place), `tx` the transactions and what their integrity
errors mean, `outage` what happens when the database cannot answer.
"""

from memoryd.storage.sql.store import SqlControlStore

__all__ = ["SqlControlStore"]
