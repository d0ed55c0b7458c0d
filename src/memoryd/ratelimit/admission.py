"""Admission of authenticated calls: the rate limiter as the call pipeline
sees it, and usage metering per call.

Data keys are charged against two buckets at once, their own and their
project's; org keys against their own. Limits come from the project's
overrides (`UpdateProject` → `rate_limits`), else the server defaults.
Some methods cost more than one unit (`costs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memoryd.domain.errors import QuotaViolation, ResourceExhausted
from memoryd.domain.project_cache import ProjectCache
from memoryd.domain.tenancy import KeyKind, Principal
from memoryd.ratelimit.gcra import Limit, api_key_bucket, org_key_bucket, project_bucket
from memoryd.ratelimit.limiter import RateLimiter
from memoryd.ratelimit.usage import UsageMeter

_MEMORY = "/memoryd.v1.MemoryService/"

# Units of rate limit a call costs, from its request (default 1). A batch
# costs one unit per ten items (at least one), so that batching stays the
# cheap way to write many memories while a 1,000-item batch still weighs 100.
COSTS: dict[str, Any] = {
    _MEMORY + "BatchCreateMemories": lambda req: max(1, len(req.requests) // 10),
    _MEMORY + "SearchMemories": lambda req: 2,
    _MEMORY + "ExportMemories": lambda req: 10,
    _MEMORY + "ImportMemories": lambda req: 10,
    _MEMORY + "PurgeMemories": lambda req: 5,
}


class RateLimitAdmission:
    def __init__(
        self,
        limiter: RateLimiter,
        projects: ProjectCache,
        *,
        key_limit: Limit,
        project_limit: Limit,
        ceiling: Limit | None = None,
    ) -> None:
        """`ceiling` caps a project's overrides (stored before a ceiling
        existed or was lowered); UpdateProject refuses higher ones."""
        self._limiter = limiter
        self._projects = projects
        self._key_limit = key_limit
        self._project_limit = project_limit
        self._ceiling = ceiling

    async def admit(
        self, principal: Principal, method: str, cost: int
    ) -> Sequence[tuple[str, str]]:
        if principal.kind is KeyKind.DATA:
            key_limit, project_limit = await self._limits(principal)
            checks = [
                (api_key_bucket(principal.project_id, principal.key_id), key_limit),
                (project_bucket(principal.project_id), project_limit),
            ]
        else:
            checks = [(org_key_bucket(principal.org_id, principal.key_id), self._key_limit)]
        decision = await self._limiter.check(checks, cost)
        trailers = decision.trailers()
        if not decision.allowed:
            raise ResourceExhausted(
                f"rate limit exceeded; retry in {decision.retry_after_s:.3f} s",
                [
                    QuotaViolation(
                        "api_key"
                        if principal.kind is KeyKind.ORG
                        else f"project:{principal.project_id}",
                        f"{decision.limit} requests burst",
                    )
                ],
                retry_after=decision.retry_after_s,
                reason="RATE_LIMITED",
                trailers=trailers,
            )
        return list(trailers.items())

    def refused(self, principal: Principal, method: str) -> None:
        return None

    async def _limits(self, p: Principal) -> tuple[Limit, Limit]:
        project = await self._projects.get_project(p.org_id, p.project_id)
        if project is None:
            return self._key_limit, self._project_limit
        r = project.rate_limits
        key = self._capped(r.key_requests_per_second, r.key_burst, self._key_limit)
        proj = self._capped(r.project_requests_per_second, r.project_burst, self._project_limit)
        return key, proj

    def _capped(self, rate: float, burst: int, default: Limit) -> Limit:
        """The override (0: the default), at most the ceiling."""
        c = self._ceiling
        return Limit(
            min(rate, c.rate_per_s) if rate and c else rate or default.rate_per_s,
            min(burst, c.burst) if burst and c else burst or default.burst,
        )


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
