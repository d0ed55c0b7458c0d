"""Transactions of the control store, and what their integrity errors mean
to a client.

`Transacting` is what the store's area mixins (`tenancy`, `keys`, `audit`)
need of it: one way in to the database, `_begin`.
"""

from __future__ import annotations

import abc
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from memoryd.domain.errors import AlreadyExists, DomainError, NotFound


class Transacting(abc.ABC):
    """Has the one way in to the database."""

    @abc.abstractmethod
    def _begin(self, parent: str = "") -> Any:
        """`async with` a transaction (an `AsyncConnection`); `parent` names
        what its new rows belong to, for the error when that was deleted
        meanwhile."""


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


class Tx:
    """`async with` a transaction; a unique violation becomes `AlreadyExists`,
    a foreign-key violation `NotFound` (naming `parent`). Connection errors
    pass through: the store wraps every transaction in `outage.Guarded`,
    the one place that maps them to `Unavailable`."""

    def __init__(self, engine: AsyncEngine, parent: str = "") -> None:
        self._cm = engine.begin()
        self._parent = parent

    async def __aenter__(self) -> AsyncConnection:
        return await self._cm.__aenter__()

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool:
        try:
            await self._cm.__aexit__(et, exc, tb)
        except IntegrityError as err:
            mapped = _domain_error(err, self._parent)
            if mapped is None:
                raise
            raise mapped from err
        if isinstance(exc, IntegrityError):
            mapped = _domain_error(exc, self._parent)
            if mapped is not None:
                raise mapped from exc
        return False
