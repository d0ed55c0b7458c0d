"""Usage reports for GetUsage: an org key with `usage:read` reads the
counters of its own organization only."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, timedelta
from typing import Protocol

from memoryd.domain.clock import Clock
from memoryd.domain.control import UsageRecord
from memoryd.domain.errors import InvalidArgument
from memoryd.domain.ports import UsageSource
from memoryd.domain.tenancy import Caller, Scope

DEFAULT_DAYS = 30


class TokenSource(Protocol):
    """Model tokens by (project, environment, day) of an organization."""

    async def token_usage(
        self,
        org_id: str,
        project_id: str | None,
        environment_id: str | None,
        start: date,
        end: date,
    ) -> dict[tuple[str, str, date], tuple[int, int]]: ...


class UsageReporter:
    def __init__(self, meter: UsageSource, clock: Clock, tokens: TokenSource | None = None) -> None:
        """`tokens`: the model tokens of AddMessages, merged into the records."""
        self._meter = meter
        self._clock = clock
        self._tokens = tokens

    async def report(
        self,
        caller: Caller,
        project_id: str,
        environment_id: str,
        start: date | None,
        end: date | None,
    ) -> list[UsageRecord]:
        p = caller.admin(Scope.USAGE_READ)
        today = self._clock.now().astimezone(UTC).date()
        end = end or today
        start = start or end - timedelta(days=DEFAULT_DAYS - 1)
        if start > end:
            raise InvalidArgument.field("start_date", "must not be after end_date")
        records = await self._meter.read(
            p.org_id, project_id or None, environment_id or None, start, end
        )
        if self._tokens is None:
            return records
        tokens = await self._tokens.token_usage(
            p.org_id, project_id or None, environment_id or None, start, end
        )
        return merge_tokens(records, tokens)


def merge_tokens(
    records: list[UsageRecord], tokens: dict[tuple[str, str, date], tuple[int, int]]
) -> list[UsageRecord]:
    """`records` with the model tokens of their environment and day, plus a
    record for each environment and day that has tokens only; ordered by
    date, project, environment."""
    out: list[UsageRecord] = []
    for r in records:
        used = tokens.pop((r.project_id, r.environment_id, r.date), (0, 0))
        out.append(replace(r, llm_input_tokens=used[0], llm_output_tokens=used[1]))
    for (project, env, day), (tin, tout) in tokens.items():
        out.append(UsageRecord(project, env, day, 0, {}, 0, 0, 0, tin, tout))
    out.sort(key=lambda r: (r.date, r.project_id, r.environment_id))
    return out
