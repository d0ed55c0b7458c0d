"""Which database errors are an outage (UNAVAILABLE with a retry hint, one
log line per change) and which stay errors."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, ProgrammingError

from memoryd.domain.errors import Unavailable
from memoryd.storage.sql.outage import Guarded, Reachability, outage_cause

STATE_15 = "cannot switch to state 15; another operation (2) is in progress"


def _wrapped(orig: BaseException, cls: type[DBAPIError] = DBAPIError) -> DBAPIError:
    """As SQLAlchemy raises it: the statement and its parameters in the
    message, the driver's error in `.orig`."""
    return cls("INSERT INTO api_keys VALUES ($1)", ("argon2-hash-secret",), orig)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
        TimeoutError(),
        OSError(113, "No route to host"),
        asyncpg.exceptions.CannotConnectNowError(
            "the database system is not accepting connections"
        ),
        _wrapped(asyncpg.exceptions.CannotConnectNowError("not accepting connections")),
        asyncpg.exceptions.InternalClientError(STATE_15),
        _wrapped(asyncpg.exceptions.InterfaceError(STATE_15), InterfaceError),
        asyncpg.exceptions.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        ),
        _wrapped(sqlite3.OperationalError("attempt to write a readonly database")),
    ],
)
def test_an_unreachable_or_broken_database_is_an_outage(exc: BaseException) -> None:
    cause = outage_cause(exc)
    assert cause
    assert "argon2-hash-secret" not in cause and "INSERT" not in cause


@pytest.mark.parametrize(
    "exc",
    [
        _wrapped(sqlite3.IntegrityError("UNIQUE constraint failed"), IntegrityError),
        _wrapped(
            asyncpg.exceptions.UndefinedColumnError("column x does not exist"), ProgrammingError
        ),
        ValueError("a bug"),
    ],
)
def test_a_bug_or_a_constraint_is_not_an_outage(exc: BaseException) -> None:
    assert outage_cause(exc) is None


class _Inner:
    """A transaction context whose body error passes through."""

    async def __aenter__(self) -> str:
        return "conn"

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool:
        return False


async def test_an_outage_becomes_unavailable_with_a_retry_hint_and_one_log_line_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="memoryd.database")
    reach = Reachability()
    changes: list[bool] = []
    reach.on_change(changes.append)
    for _ in range(5):
        with pytest.raises(Unavailable) as err:
            async with Guarded(_Inner(), reach):
                raise asyncpg.exceptions.InternalClientError(STATE_15)
        assert err.value.reason == "DATABASE_UNAVAILABLE"
        assert err.value.retry_after is not None and err.value.retry_after > 0
    assert not reach.reachable
    for _ in range(3):
        async with Guarded(_Inner(), reach):
            pass
    assert reach.reachable
    assert changes == [False, True]
    records = [r for r in caplog.records if r.name == "memoryd.database"]
    assert len(records) == 2, [r.getMessage() for r in records]
    assert "unreachable" in records[0].getMessage() and STATE_15 in records[0].getMessage()
    assert "reachable again" in records[1].getMessage()
    assert all(r.exc_info is None for r in records)


async def test_other_errors_pass_unchanged_and_count_as_an_answer() -> None:
    reach = Reachability()
    reach.failed("test")
    with pytest.raises(ValueError):
        async with Guarded(_Inner(), reach):
            raise ValueError("a bug")
    assert reach.reachable
