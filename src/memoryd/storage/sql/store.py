"""`SqlControlStore`: the control store's lifecycle and its one way in to
the database; its calls live with their tables (`tenancy`, `keys`,
`audit`, `idempotency`)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from memoryd.domain.errors import Unavailable
from memoryd.storage.sql.alerts import AlertTables
from memoryd.storage.sql.audit import AuditTables
from memoryd.storage.sql.changes import ChangeTables
from memoryd.storage.sql.data_keys import DataKeyTables
from memoryd.storage.sql.erasure import ErasureTables, add_missing_columns
from memoryd.storage.sql.holds import HoldTables
from memoryd.storage.sql.idempotency import IdempotencyTables
from memoryd.storage.sql.keys import KeyTables
from memoryd.storage.sql.knowledge import KnowledgeTables
from memoryd.storage.sql.operations import LlmUsageTables, OperationTables
from memoryd.storage.sql.outage import Guarded, Reachability, discard_broken_connections
from memoryd.storage.sql.prompts import PromptTables
from memoryd.storage.sql.schema import SCHEMA_VERSION, metadata, migrate, schema_version
from memoryd.storage.sql.tenancy import TenancyTables
from memoryd.storage.sql.tx import Tx
from memoryd.storage.sql.webhooks import WebhookTables

_PING_TIMEOUT_S = 1.5

# Whether this task already holds the store's SQLite lock (a transaction
# opened inside another one must not wait for itself).
_HOLDING: contextvars.ContextVar[bool] = contextvars.ContextVar("memoryd_sql_lock", default=False)


class OneAtATime:
    """`async with` a transaction under `lock`, unless this task holds it."""

    def __init__(self, lock: asyncio.Lock, inner: Any) -> None:
        self._lock = lock
        self._inner = inner
        self._token: contextvars.Token[bool] | None = None

    async def __aenter__(self) -> Any:
        if not _HOLDING.get():
            await self._lock.acquire()
            self._token = _HOLDING.set(True)
        try:
            return await self._inner.__aenter__()
        except BaseException:
            self._release()
            raise

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool:
        try:
            return bool(await self._inner.__aexit__(et, exc, tb))
        finally:
            self._release()

    def _release(self) -> None:
        if self._token is not None:
            _HOLDING.reset(self._token)
            self._token = None
            self._lock.release()


_CONNECT_TIMEOUT_S = 5.0


class SqlControlStore(
    TenancyTables,
    KeyTables,
    AuditTables,
    IdempotencyTables,
    PromptTables,
    OperationTables,
    LlmUsageTables,
    ChangeTables,
    WebhookTables,
    AlertTables,
    KnowledgeTables,
    ErasureTables,
    HoldTables,
    DataKeyTables,
):
    """The control store on SQLAlchemy Core async: `ControlStore`,
    `IdempotencyStore`, `PromptStore`, `OperationStore`, `TokenLedger`,
    `ChangeLog`/`WatchLog`, `WebhookStore`, `AlertStore` and `KnowledgeStore`
    (see `memoryd.domain`)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self._url = url
        self._echo = echo
        self._engine: AsyncEngine | None = None
        self._reach = Reachability()
        # SQLite has one writer at a time: its transactions queue here, in
        # order, rather than in SQLite's sleep-and-retry busy handler (which,
        # under a flood of small writes, left calls waiting seconds and some
        # failing "database is locked" after the busy timeout).
        self._one_writer: asyncio.Lock | None = asyncio.Lock() if url.startswith("sqlite") else None

    @property
    def reachable(self) -> bool:
        """Whether the database answered the last call (see `outage`)."""
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
            await conn.run_sync(add_missing_columns)
            version = (await conn.execute(sa.select(schema_version.c.version))).scalar()
            if version is None:
                await conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
            elif version < SCHEMA_VERSION:
                await migrate(conn, version)
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
        guarded = Guarded(Tx(self.engine, parent), self._reach)
        return guarded if self._one_writer is None else OneAtATime(self._one_writer, guarded)
