"""RedisUsageMeter against the real Redis (MEMORYD_TEST_REDIS_URL).

Fails, never skips, when Redis is unreachable; keys live under a prefix
unique to the run and are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import pytest
from helpers.stores import REDIS_URL
from redis.asyncio import Redis
from redis.exceptions import RedisError

from memoryd.domain.clock import ManualClock
from memoryd.domain.control import UsageRecord
from memoryd.storage.redis import make_redis
from memoryd.usage import RedisUsageMeter

pytestmark = pytest.mark.redis

SEARCH = "/memoryd.v1.MemoryService/SearchMemories"
CREATE = "/memoryd.v1.MemoryService/CreateMemory"
DAY = date(2026, 3, 14)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = make_redis(REDIS_URL, 1.0)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.fail(f"Redis at {REDIS_URL} is unreachable ({exc!r}); start redis-server")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    value = f"memoryd-test:{uuid.uuid4().hex}:"
    yield value
    keys = [key async for key in redis.scan_iter(match=value + "*")]
    if keys:
        await redis.delete(*keys)


def _clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC))


async def test_counters_round_trip_per_environment_and_day(redis: Redis, prefix: str) -> None:
    clock = _clock()
    meter = RedisUsageMeter(redis, clock, key_prefix=prefix)
    meter.record("org", "p1", "prod", method=SEARCH)
    meter.record("org", "p1", "prod", method=SEARCH)
    meter.record("org", "p1", "prod", method=CREATE)
    meter.record("org", "p1", "prod", memories_written=2, bytes_stored=300)
    meter.record("org", "p1", "prod", method=SEARCH, rate_limited=True)
    meter.record("org", "p:2", "dev:x", method=SEARCH)  # ids with separators
    meter.record("other", "p1", "prod", method=SEARCH)
    clock.advance(1)
    meter.record("org", "p1", "prod", method=SEARCH)
    await meter.close()

    reader = RedisUsageMeter(redis, clock, key_prefix=prefix)  # another replica
    records = await reader.read("org", None, None, DAY, date(2026, 3, 15))

    assert records == [
        UsageRecord("p1", "prod", DAY, 3, {CREATE: 1, SEARCH: 2}, 2, 300, 1),
        UsageRecord("p:2", "dev:x", DAY, 1, {SEARCH: 1}, 0, 0, 0),
        UsageRecord("p1", "prod", date(2026, 3, 15), 1, {SEARCH: 1}, 0, 0, 0),
    ]
    assert [r.project_id for r in await reader.read("org", "p:2", None, DAY, DAY)] == ["p:2"]
    assert len(await reader.read("org", None, "prod", DAY, DAY)) == 1
    assert await reader.read("org", None, None, date(2026, 3, 16), date(2026, 3, 20)) == []
    assert len(await reader.read("other", None, None, DAY, DAY)) == 1


async def test_replicas_add_up_and_keys_expire_after_the_retention(
    redis: Redis, prefix: str
) -> None:
    clock = _clock()
    replicas = [RedisUsageMeter(redis, clock, key_prefix=prefix) for _ in range(3)]

    async def traffic(meter: RedisUsageMeter) -> None:
        for _ in range(200):
            meter.record("org", "p", "e", method=SEARCH)
            await asyncio.sleep(0)

    await asyncio.gather(*(traffic(meter) for meter in replicas))
    for meter in replicas:
        await meter.close()

    [record] = await RedisUsageMeter(redis, clock, key_prefix=prefix).read(
        "org", None, None, DAY, DAY
    )
    assert record.calls == 600
    keys = [key async for key in redis.scan_iter(match=prefix + "*")]
    assert len(keys) == 2  # one day hash, one index
    for key in keys:
        assert 399 * 86_400 < await redis.ttl(key) <= 400 * 86_400


async def test_record_writes_in_the_background(redis: Redis, prefix: str) -> None:
    clock = _clock()
    meter = RedisUsageMeter(redis, clock, key_prefix=prefix, flush_interval_s=0.05)
    reader = RedisUsageMeter(redis, clock, key_prefix=prefix)
    try:
        meter.record("org", "p", "e", method=SEARCH)
        for _ in range(500):  # no flush was asked for: wait for the background one
            if meter.pending_keys == 0:
                break
            await asyncio.sleep(0.01)
        assert meter.pending_keys == 0
        [record] = await reader.read("org", None, None, DAY, DAY)
        assert record.calls == 1
    finally:
        await meter.close()
