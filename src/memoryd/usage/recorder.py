"""Usage metering as its callers see it: the call pipeline counts one call per
authenticated call (or per refusal by the rate limiter), the memory service
counts the memories and bytes it writes."""

from __future__ import annotations

from memoryd.domain.tenancy import Principal, Tenant
from memoryd.usage.counters import UsageMeter


class UsageRecorder:
    """Counts every authenticated call (or its refusal) per project, environment and day."""

    def __init__(self, meter: UsageMeter) -> None:
        self._meter = meter

    def record_call(self, principal: Principal, method: str, rate_limited: bool) -> None:
        self._meter.record(
            principal.org_id,
            principal.project_id,
            principal.environment_id,
            method=None if rate_limited else method,
            rate_limited=rate_limited,
        )


class WriteRecorder:
    """Counts memories written and bytes stored per environment and day (the
    memory service's `WriteMeter`)."""

    def __init__(self, meter: UsageMeter) -> None:
        self._meter = meter

    async def memories_written(self, tenant: Tenant, count: int, content_bytes: int) -> None:
        self._meter.record(
            tenant.org_id,
            tenant.project_id,
            tenant.environment_id,
            memories_written=count,
            bytes_stored=content_bytes,
        )
