"""The per-environment memory count behind the memory quota: exact when
refreshed from the store, trusted (and counted up) for COUNT_TTL_S seconds
of the injected clock in between."""

from __future__ import annotations

from datetime import datetime

import pytest

from memoryd.domain.clock import ManualClock
from memoryd.domain.errors import ResourceExhausted
from memoryd.domain.memories.quota import COUNT_TTL_S, EnvironmentCounts
from memoryd.domain.memory import Filter
from memoryd.domain.tenancy import Tenant

TENANT = Tenant("org", "prj", "env", "carol")


class CountingStore:
    """The one VectorStore call the count cache makes: `count`."""

    def __init__(self, memories: int) -> None:
        self.memories = memories
        self.counted: list[Tenant] = []

    async def count(self, tenant: Tenant, flt: Filter, now: datetime) -> int:
        self.counted.append(tenant)
        return self.memories


def counts(store: CountingStore, clock: ManualClock, seen: list[int]) -> EnvironmentCounts:
    return EnvironmentCounts(store, clock, seen.append)  # type: ignore[arg-type]


async def test_the_count_refreshes_after_its_interval_and_not_before() -> None:
    store, clock, seen = CountingStore(10), ManualClock(), []
    cache = counts(store, clock, seen)
    await cache.reserve(TENANT, limit=100, n=1)
    assert seen == [10]
    # the whole environment is counted, whoever the end user
    assert store.counted == [TENANT.across_end_users()]

    store.memories = 50  # another replica wrote meanwhile
    clock.advance(COUNT_TTL_S)
    await cache.reserve(TENANT, limit=100, n=1)
    assert len(store.counted) == 1  # still within the interval: 10 + 1 + 1 counted up

    clock.advance(0.001)
    await cache.reserve(TENANT, limit=100, n=1)
    assert len(store.counted) == 2
    assert seen == [10, 50]


async def test_writes_are_counted_up_between_refreshes_against_the_quota() -> None:
    store, clock, seen = CountingStore(8), ManualClock(), []
    cache = counts(store, clock, seen)
    await cache.reserve(TENANT, limit=10, n=2)  # 8 + 2 = 10: at the quota
    with pytest.raises(ResourceExhausted) as info:
        await cache.reserve(TENANT, limit=10, n=1)
    assert info.value.reason == "MEMORY_QUOTA_EXCEEDED"
    assert len(store.counted) == 1  # refused from the counted-up figure


async def test_a_forgotten_count_is_read_again_at_the_next_write() -> None:
    store, clock, seen = CountingStore(3), ManualClock(), []
    cache = counts(store, clock, seen)
    await cache.reserve(TENANT, limit=10, n=1)
    store.memories = 0  # a purge
    cache.forget(Tenant("org", "prj", "env"))
    await cache.reserve(TENANT, limit=10, n=1)
    assert seen == [3, 0]
