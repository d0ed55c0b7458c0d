"""Quotas: a project's effective limits (its overrides against the server's
defaults and ceilings), and the per-environment memory count the memory
quota is checked against."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from memoryd.domain.clock import Clock
from memoryd.domain.control import Project
from memoryd.domain.errors import QuotaViolation, ResourceExhausted
from memoryd.domain.memories.model import Defaults
from memoryd.domain.memories.validation import SizeLimits
from memoryd.domain.memory import Filter, VectorStore
from memoryd.domain.tenancy import Tenant

# Seconds an environment's exact count is trusted (counted up by this
# replica's writes in between) before the store is asked again.
COUNT_TTL_S = 5.0


def effective_quota(defaults: Defaults, project: Project, name: str) -> int:
    """The project's override of quota `name` when set, else the server's
    default; never above the server's ceiling (an override stored before
    the ceiling was lowered is capped here)."""
    default = int(getattr(defaults, name))
    value = int(getattr(project.quotas, name))
    if value <= 0:
        return default
    if name == "max_memories_per_environment":
        return min(value, defaults.max_memories_per_environment_override)
    return min(value, default)  # content and metadata sizes: the default is the cap


def size_limits(defaults: Defaults, project: Project) -> SizeLimits:
    """The byte limits of one memory of `project`."""
    return SizeLimits(
        content_bytes=effective_quota(defaults, project, "max_content_bytes"),
        metadata_bytes=effective_quota(defaults, project, "max_metadata_bytes"),
    )


class EnvironmentCounts:
    """The memory quota of environments, checked against a count cache.

    The count of an environment is exact when refreshed from the store (at
    most every `ttl_s` seconds of `clock.monotonic()`) and counted up by
    this replica's writes in between; replicas may each admit a few
    seconds' worth past the quota. `on_count` sees each exact count (for a
    metric); `on_level` sees each reserve's environment, its count and the
    limit, and whether the count is exact (just read from the store, plus
    this write) rather than counted up from an older one (for quota
    alerts: a count this replica counted up misses other replicas' writes,
    so only an exact one may say the level fell; it must be cheap and never
    raise). It sees the count before the write when that was just read,
    and the count after it unless refused."""

    def __init__(
        self,
        store: VectorStore,
        clock: Clock,
        on_count: Callable[[int], None],
        ttl_s: float = COUNT_TTL_S,
        on_level: Callable[[Tenant, int, int, bool], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_count = on_count
        self._ttl_s = ttl_s
        self._on_level = on_level
        # environment key -> (monotonic time the count expires, count)
        self._counts: dict[str, tuple[float, int]] = {}
        self._lock = asyncio.Lock()

    async def reserve(self, tenant: Tenant, limit: int, n: int) -> None:
        """Counts `n` new memories in `tenant`'s environment, or raises
        ResourceExhausted (MEMORY_QUOTA_EXCEEDED) when they would take it
        past `limit` memories (of every end user)."""
        env_tenant = tenant.across_end_users()
        key = env_tenant.key
        async with self._lock:
            mono = self._clock.monotonic()
            cached = self._counts.get(key)
            if cached is not None and cached[0] >= mono:
                (expires, count), exact = cached, False
            else:
                expires, count = mono + self._ttl_s, await self._exact(env_tenant)
                exact = True
                if self._on_level is not None:
                    self._on_level(env_tenant, count, limit, True)
            if count + n > limit:
                self._counts[key] = (mono + self._ttl_s, count)
                raise _exceeded(tenant, count, limit)
            self._counts[key] = (expires, count + n)
            if self._on_level is not None:
                self._on_level(env_tenant, count + n, limit, exact)

    def forget(self, tenant: Tenant) -> None:
        """Drops the count of `tenant`'s environment (after deletes), so the
        next write counts it again."""
        self._counts.pop(tenant.key, None)

    async def _exact(self, env_tenant: Tenant) -> int:
        count = await self._store.count(env_tenant, Filter(), self._clock.now())
        self._on_count(count)
        return count


def _exceeded(tenant: Tenant, count: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"this environment holds {count} memories; its quota is {limit}",
        [
            QuotaViolation(
                f"environment:{tenant.environment_id}", f"max_memories_per_environment={limit}"
            )
        ],
        reason="MEMORY_QUOTA_EXCEEDED",
    )
