"""What the usage meters count, and the `UsageMeter` port they implement.

Counters are kept per (organization, project, environment, UTC day): calls
(in total and by full method name), memories written, content bytes stored
and calls refused by the rate limiter. What one `record` counts:

- `method` set, `rate_limited` False: one served call of `method`;
- `rate_limited` True: one refused call (`rate_limited_calls`), not a
  served call, whatever `method` says;
- `memories_written`, `bytes_stored`: added as given (the service that
  writes memories records these, with `method=None`).

Calls made with an org key have no project: record them with
`project_id=""` and `environment_id=""`; they then read back as such.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import date
from typing import Protocol

from memoryd.domain.control import UsageRecord
from memoryd.domain.errors import InvalidArgument

CALLS = "calls"
MEMORIES_WRITTEN = "memories_written"
BYTES_STORED = "bytes_stored"
RATE_LIMITED_CALLS = "rate_limited_calls"
_METHOD_PREFIX = "m:"

DEFAULT_RETENTION_DAYS = 400


class UsageMeter(Protocol):
    """Counts usage per (org, project, environment, UTC day).

    `record` is cheap, never waits (it runs on every call's path, without a
    coroutine) and never raises for backend trouble (counts wait in memory
    and are retried). `read` returns one record per project,
    environment and day with any usage in `[start, end]` (inclusive), ordered
    by date, project, environment; `None` for `project_id`/`environment_id`
    means all. It raises `InvalidArgument` for a bad range and `Unavailable`
    when the backend cannot answer. `close` writes what is pending.
    """

    def record(
        self,
        org_id: str,
        project_id: str,
        environment_id: str,
        *,
        method: str | None = None,
        rate_limited: bool = False,
        memories_written: int = 0,
        bytes_stored: int = 0,
    ) -> None: ...

    async def read(
        self,
        org_id: str,
        project_id: str | None,
        environment_id: str | None,
        start: date,
        end: date,
    ) -> list[UsageRecord]: ...

    async def close(self) -> None: ...


CounterKey = tuple[str, str, str, date]  # org, project, environment, day


# method → the increments of one call of it (read only; methods are few)
_CALL_INCREMENTS: dict[str, Mapping[str, int]] = {}


def increments(
    method: str | None, rate_limited: bool, memories_written: int, bytes_stored: int
) -> Mapping[str, int]:
    """The counters one `record` adds to (see the module docstring), not to
    be changed: one call's are made once per method, since every
    authenticated call counts one."""
    if memories_written < 0 or bytes_stored < 0:
        raise ValueError("usage increments cannot be negative")
    if method is not None and not (rate_limited or memories_written or bytes_stored):
        known = _CALL_INCREMENTS.get(method)
        if known is None:
            known = {CALLS: 1, _METHOD_PREFIX + method: 1}
            if len(_CALL_INCREMENTS) < 1_000:  # the methods of the services, with room
                _CALL_INCREMENTS[method] = known
        return known
    delta: dict[str, int] = {}
    if rate_limited:
        delta[RATE_LIMITED_CALLS] = 1
    elif method is not None:
        delta[CALLS] = 1
        delta[_METHOD_PREFIX + method] = 1
    if memories_written:
        delta[MEMORIES_WRITTEN] = memories_written
    if bytes_stored:
        delta[BYTES_STORED] = bytes_stored
    return delta


def add_to(counters: Counter[str], delta: Mapping[str, int]) -> None:
    """Adds `delta` to `counters` (cheaper than `Counter.update` for the
    few entries of one call)."""
    for name, count in delta.items():
        counters[name] += count


def to_record(
    project_id: str, environment_id: str, day: date, fields: Mapping[str, int]
) -> UsageRecord:
    """The record of one environment's day from its counters."""
    return UsageRecord(
        project_id=project_id,
        environment_id=environment_id,
        date=day,
        calls=fields.get(CALLS, 0),
        calls_by_method={
            name[len(_METHOD_PREFIX) :]: count
            for name, count in sorted(fields.items())
            if name.startswith(_METHOD_PREFIX)
        },
        memories_written=fields.get(MEMORIES_WRITTEN, 0),
        bytes_stored=fields.get(BYTES_STORED, 0),
        rate_limited_calls=fields.get(RATE_LIMITED_CALLS, 0),
    )


def check_range(start: date, end: date, retention_days: int) -> None:
    """InvalidArgument unless `[start, end]` is a range the meter keeps."""
    if start > end:
        raise InvalidArgument.field("start_date", "must not be after end_date")
    if (end - start).days >= retention_days:
        raise InvalidArgument.field(
            "start_date", f"must be less than {retention_days} days before end_date"
        )


def sort_key(record: UsageRecord) -> tuple[date, str, str]:
    return (record.date, record.project_id, record.environment_id)
