"""Usage reports for GetUsage: an org key with `usage:read` reads the
counters of its own organization only."""

from __future__ import annotations

from datetime import UTC, date, timedelta

from memoryd.domain.clock import Clock
from memoryd.domain.control import UsageRecord
from memoryd.domain.errors import InvalidArgument
from memoryd.domain.ports import UsageSource
from memoryd.domain.tenancy import Caller, Scope

DEFAULT_DAYS = 30


class UsageReporter:
    def __init__(self, meter: UsageSource, clock: Clock) -> None:
        self._meter = meter
        self._clock = clock

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
        return await self._meter.read(
            p.org_id, project_id or None, environment_id or None, start, end
        )
