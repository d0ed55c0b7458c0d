"""Usage metering as the call pipeline sees it: one count per authenticated
call, or per refusal by the rate limiter."""

from __future__ import annotations

from memoryd.domain.tenancy import Principal
from memoryd.usage.counters import UsageMeter


class UsageRecorder:
    """Counts every authenticated call (or its refusal) per project, environment and day."""

    def __init__(self, meter: UsageMeter) -> None:
        self._meter = meter

    async def record_call(self, principal: Principal, method: str, rate_limited: bool) -> None:
        await self._meter.record(
            principal.org_id,
            principal.project_id,
            principal.environment_id,
            method=None if rate_limited else method,
            rate_limited=rate_limited,
        )
