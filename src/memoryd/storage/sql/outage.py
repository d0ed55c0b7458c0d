"""What the control store does when its database cannot answer.

One place, around every use of the engine (`SqlControlStore._begin`, `ping`):

- `outage_cause(exc)` tells a database that cannot answer now (refused,
  reset, shut down, starting up, timed out, a connection broken in the middle
  of a call, a read-only or full SQLite file) from a bug (bad SQL, a
  constraint). Only the first becomes `Unavailable`; a bug stays an error.
- `Reachability` remembers whether the database answered last time and logs
  each change once (down, back up), never once per call.
- `Guarded` turns an outage into `Unavailable(reason=DATABASE_UNAVAILABLE)`
  with a retry hint, and records successes and failures.
- `discard_broken_connections(engine)` makes SQLAlchemy treat every outage
  error as a disconnect, so the pool drops the broken connection instead of
  handing it to the next call (asyncpg's "cannot switch to state ...; another
  operation is in progress" is not a disconnect by SQLAlchemy's own rules).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from memoryd.domain.errors import Unavailable

log = logging.getLogger("memoryd.database")

RETRY_AFTER_S = 1.0
"""The retry hint sent with DATABASE_UNAVAILABLE: a client backs off this long."""

# SQLSTATE classes of a server that cannot answer: 08 connection exception,
# 57P0x admin/crash shutdown and "the database system is starting up" (57P03),
# 53300 too many connections.
_OUTAGE_SQLSTATES = ("08", "57P", "53300")

_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError and ConnectionError are OSErrors
    OperationalError,
    InterfaceError,
    sqlite3.OperationalError,  # locked, read-only, disk full, cannot open
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps (SQLAlchemy's `.orig`, `__cause__`), each
    once. Not `__context__`: an error raised while handling an unrelated
    outage is not an outage."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for inner in (getattr(e, "orig", None), e.__cause__):
            if isinstance(inner, BaseException):
                todo.append(inner)


def _is_outage(e: BaseException) -> bool:
    if isinstance(e, _OUTAGE_TYPES):
        return True
    if isinstance(e, DBAPIError) and e.connection_invalidated:
        return True
    sqlstate = getattr(e, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_OUTAGE_SQLSTATES)


def outage_cause(exc: BaseException) -> str | None:
    """A short description of why the database cannot answer, or None when
    `exc` is not an outage. Never SQL text or parameters (they may hold key
    hashes): the driver's own message, first line."""
    for e in _chain(exc):
        if isinstance(e, Unavailable):
            continue  # look at what it wraps
        if _is_outage(e):
            return _describe(_innermost(e))
    return None


def _innermost(e: BaseException) -> BaseException:
    orig = getattr(e, "orig", None)
    if isinstance(orig, BaseException):
        return orig.__cause__ if isinstance(orig.__cause__, BaseException) else orig
    return e


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(e, TimeoutError) and not text:
        text = "timed out"
    text = text or type(e).__name__
    return text[:200]


def unavailable(cause: str) -> Unavailable:
    """The error a client sees while the database is down."""
    lowered = cause.lower()
    if "readonly" in lowered or "read-only" in lowered:
        what = "is read-only"
    elif "disk is full" in lowered or "no space" in lowered:
        what = "is on a full disk"
    else:
        what = "is unreachable"
    return Unavailable(
        f"the control-plane database {what} ({cause}); retry shortly",
        reason="DATABASE_UNAVAILABLE",
        retry_after=RETRY_AFTER_S,
    )


class Reachability:
    """Whether the database answered the last call. Logs one line when it
    stops answering and one when it answers again; calls `on_change`
    listeners (health) on each change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.reachable = True
        self._down_since = 0.0
        self._listeners: list[Callable[[bool], None]] = []

    def on_change(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    def failed(self, cause: str) -> None:
        if not self.reachable:
            return
        self.reachable = False
        self._down_since = self._clock()
        log.error(
            "control-plane database unreachable (%s): control-plane calls answer UNAVAILABLE, "
            "memory calls use cached project settings, until it answers again",
            cause,
        )
        self._notify()

    def succeeded(self) -> None:
        if self.reachable:
            return
        self.reachable = True
        log.warning(
            "control-plane database reachable again after %.1f s", self._clock() - self._down_since
        )
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self.reachable)


class Guarded:
    """`async with` around a transaction context (`_Tx`): an outage becomes
    `Unavailable` with a retry hint, and the outcome updates `Reachability`.
    Other errors pass unchanged."""

    def __init__(self, inner: Any, reach: Reachability) -> None:
        self._inner = inner
        self._reach = reach

    async def __aenter__(self) -> Any:
        try:
            return await self._inner.__aenter__()
        except Exception as exc:
            self._raise_if_outage(exc)
            raise

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool:
        try:
            suppressed: bool = await self._inner.__aexit__(et, exc, tb)
        except Exception as err:
            self._raise_if_outage(err)
            raise
        if isinstance(exc, Exception):
            self._raise_if_outage(exc)
        self._reach.succeeded()  # it answered, maybe with an error of the caller's
        return suppressed

    def _raise_if_outage(self, exc: Exception) -> None:
        cause = outage_cause(exc)
        if cause is not None:
            self._reach.failed(cause)
            raise unavailable(cause) from exc


def discard_broken_connections(engine: AsyncEngine) -> None:
    """Every outage error counts as a disconnect: SQLAlchemy then invalidates
    the connection (and, for a failed pre-ping, the pool) rather than give a
    connection in an unknown state to the next call."""

    @sa.event.listens_for(engine.sync_engine, "handle_error")
    def _disconnect(ctx: ExceptionContext) -> None:
        if not ctx.is_disconnect and outage_cause(ctx.original_exception) is not None:
            ctx.is_disconnect = True
