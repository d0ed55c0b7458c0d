"""ProjectCache: fresh for its TTL, and while the control store is
unavailable, the last known project for a bounded stale window."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from memoryd.domain.clock import ManualClock
from memoryd.domain.control import Project, ProjectSettings, Quotas, RateLimits
from memoryd.domain.errors import Unavailable
from memoryd.domain.project_cache import ProjectCache, Unknown

_T = datetime(2026, 1, 1, tzinfo=UTC)


def _project(display_name: str) -> Project:
    return Project(
        id="prj_1",
        org_id="org_1",
        name="app",
        display_name=display_name,
        settings=ProjectSettings(),
        rate_limits=RateLimits(),
        quotas=Quotas(),
        create_time=_T,
        update_time=_T,
    )


class _Store:
    """A control store whose database can be switched off, and whose reads
    can be held (`gate`) after they have taken the project."""

    def __init__(self) -> None:
        self.project = _project("v1")
        self.down = False
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.held = asyncio.Event()  # set once a read waits at the gate

    async def get_project(self, org_id: str, project_id: str) -> Project | None:
        self.reads += 1
        if self.down:
            raise Unavailable("down", reason="DATABASE_UNAVAILABLE")
        project = self.project
        if self.gate is not None:
            self.held.set()
            await self.gate.wait()
        return project


def _cache(store: _Store, clock: ManualClock, stale_s: float = 300.0) -> ProjectCache:
    backing: Any = store
    return ProjectCache(backing, clock, ttl_s=5.0, stale_s=stale_s)


async def test_a_project_is_read_again_after_its_ttl() -> None:
    store, clock = _Store(), ManualClock()
    cache = _cache(store, clock)
    assert (await cache.get_project("org_1", "prj_1")) == _project("v1")
    store.project = _project("v2")
    clock.advance(4.9)
    assert (await cache.get_project("org_1", "prj_1")).display_name == "v1"  # type: ignore[union-attr]
    clock.advance(0.2)
    assert (await cache.get_project("org_1", "prj_1")).display_name == "v2"  # type: ignore[union-attr]
    assert store.reads == 2


async def test_an_unavailable_store_serves_the_last_known_project_within_the_window() -> None:
    store, clock = _Store(), ManualClock()
    cache = _cache(store, clock, stale_s=300.0)
    await cache.get_project("org_1", "prj_1")  # read at t=0
    store.down = True
    clock.advance(10)
    assert (await cache.get_project("org_1", "prj_1")) == _project("v1")
    reads = store.reads
    clock.advance(1)  # a failed refresh is not retried on every call
    assert (await cache.get_project("org_1", "prj_1")) == _project("v1")
    assert store.reads == reads
    clock.advance(300 - 11)  # exactly 300 s old: still served
    assert (await cache.get_project("org_1", "prj_1")) == _project("v1")
    clock.advance(5.1)  # older than the window
    with pytest.raises(Unavailable) as err:
        await cache.get_project("org_1", "prj_1")
    assert err.value.reason == "DATABASE_UNAVAILABLE"


async def test_a_recovered_store_restarts_the_window() -> None:
    store, clock = _Store(), ManualClock()
    cache = _cache(store, clock, stale_s=60.0)
    await cache.get_project("org_1", "prj_1")
    store.down = True
    clock.advance(50)
    await cache.get_project("org_1", "prj_1")
    store.down = False
    store.project = _project("v2")
    clock.advance(6)
    assert (await cache.get_project("org_1", "prj_1")) == _project("v2")
    store.down = True
    clock.advance(59)  # 59 s after the last successful read
    assert (await cache.get_project("org_1", "prj_1")) == _project("v2")


async def test_without_a_cached_project_or_with_no_window_unavailable_passes_through() -> None:
    store, clock = _Store(), ManualClock()
    store.down = True
    with pytest.raises(Unavailable):
        await _cache(store, clock).get_project("org_1", "prj_1")
    store.down = False
    cache = _cache(store, clock, stale_s=0.0)
    await cache.get_project("org_1", "prj_1")
    store.down = True
    clock.advance(5.1)
    with pytest.raises(Unavailable):
        await cache.get_project("org_1", "prj_1")


async def _settled(cache: ProjectCache) -> None:
    while cache._refreshing:
        await asyncio.gather(*cache._refreshing.values())


async def test_a_project_used_near_its_ttl_is_read_again_behind_the_call() -> None:
    store, clock = _Store(), ManualClock()
    cache = _cache(store, clock)
    await cache.get_project("org_1", "prj_1")
    store.project = _project("v2")
    clock.advance(3.9)  # before the last fifth of the TTL: nothing
    assert (await cache.get_project("org_1", "prj_1")) == _project("v1")
    await _settled(cache)
    assert store.reads == 1
    clock.advance(0.2)  # in it: the cached project answers, read again behind it, once
    for _ in range(3):
        assert (await cache.get_project("org_1", "prj_1")) == _project("v1")
    await _settled(cache)
    assert store.reads == 2
    clock.advance(1)  # past the first TTL, within the refreshed one: no read
    assert (await cache.get_project("org_1", "prj_1")) == _project("v2")
    assert store.reads == 2


async def test_a_refresh_read_before_a_forget_does_not_fill_the_cache() -> None:
    store, clock = _Store(), ManualClock()
    cache = _cache(store, clock)
    await cache.get_project("org_1", "prj_1")
    clock.advance(4.5)
    store.gate = asyncio.Event()
    await cache.get_project("org_1", "prj_1")  # starts a refresh, which reads v1 and waits
    await store.held.wait()
    store.project = _project("v2")  # changed on this replica: it forgets the project
    cache.forget("org_1", "prj_1")
    store.gate.set()
    await _settled(cache)
    store.gate = None
    assert (await cache.get_project("org_1", "prj_1")) == _project("v2")
    assert store.reads == 3


async def test_a_failed_refresh_leaves_the_project_until_its_ttl() -> None:
    store, clock = _Store(), ManualClock()
    cache = _cache(store, clock, stale_s=0.0)
    await cache.get_project("org_1", "prj_1")
    store.down = True
    clock.advance(4.5)
    assert (await cache.get_project("org_1", "prj_1")) == _project("v1")
    await _settled(cache)
    for _ in range(3):  # still within its TTL; the failed read is not tried again per call
        assert (await cache.get_project("org_1", "prj_1")) == _project("v1")
        await _settled(cache)
    assert store.reads == 2
    clock.advance(0.6)
    with pytest.raises(Unavailable):
        await cache.get_project("org_1", "prj_1")


async def test_close_stops_a_refresh_in_flight() -> None:
    store, clock = _Store(), ManualClock()
    cache = _cache(store, clock)
    await cache.get_project("org_1", "prj_1")
    clock.advance(4.5)
    store.gate = asyncio.Event()  # never set: the refresh waits for ever
    await cache.get_project("org_1", "prj_1")
    await store.held.wait()
    await cache.close()
    assert not cache._refreshing


async def test_peek_answers_a_fresh_entry_without_a_read_and_nothing_else() -> None:
    store, clock = _Store(), ManualClock()
    cache = _cache(store, clock)
    assert cache.peek("org_1", "prj_1") is Unknown.UNKNOWN  # never read
    assert store.reads == 0
    project = await cache.get_project("org_1", "prj_1")
    assert cache.peek("org_1", "prj_1") is project
    assert store.reads == 1
    clock.advance(5.1)  # past the TTL: only a read can tell
    assert cache.peek("org_1", "prj_1") is Unknown.UNKNOWN
    assert store.reads == 1


async def test_peek_knows_a_project_that_does_not_exist() -> None:
    store, clock = _Store(), ManualClock()
    cache = _cache(store, clock)
    store.project = None  # type: ignore[assignment]
    assert await cache.get_project("org_1", "prj_1") is None
    assert cache.peek("org_1", "prj_1") is None
