"""RedisRateLimiter against the real Redis (MEMORYD_TEST_REDIS_URL).

These tests fail, never skip, when Redis is unreachable. Keys live under a
prefix unique to the run and are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from helpers.stores import REDIS_URL
from redis.asyncio import Redis
from redis.exceptions import RedisError

from memoryd.ratelimit import Limit, RedisRateLimiter, api_key_bucket, project_bucket
from memoryd.storage.redis import make_redis

pytestmark = pytest.mark.redis

TIMEOUT_S = 1.0  # generous: these tests are about the algorithm, not about latency


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = make_redis(REDIS_URL, TIMEOUT_S)
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


async def test_concurrent_clients_get_the_configured_rate_in_real_time(
    redis: Redis, prefix: str
) -> None:
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix)
    # The bucket is drained before the window, and its burst is a whole second
    # of refill: a stall of the machine (up to 1 s) refills it without
    # overflowing, so no admission is lost to a busy machine.
    limit = Limit(rate_per_s=200.0, burst=200)
    check = [(api_key_bucket("p", "k"), limit), (project_bucket("p"), Limit(1e5, 10**5))]
    clients, window_s, admitted = 20, 1.0, 0
    # Open every client's connection before the window starts.
    await asyncio.gather(
        *(limiter.check([(project_bucket("warm-up"), Limit(1e5, 10**5))]) for _ in range(clients))
    )
    drain_sent = time.perf_counter()
    assert (await limiter.check(check, cost=limit.burst)).remaining == 0
    drained = first_sent = time.perf_counter()
    last_denied_sent = 0.0

    async def client() -> None:
        nonlocal admitted, last_denied_sent
        while (sent := time.perf_counter()) < first_sent + window_s:
            decision = await limiter.check(check)
            admitted += decision.allowed
            if not decision.allowed:
                last_denied_sent = max(last_denied_sent, sent)

    await asyncio.gather(*(client() for _ in range(clients)))
    last_done = time.perf_counter()

    # Exact bounds from when the checks ran (no real-time rate is promised:
    # a busy machine sends fewer checks, and that is not the limiter's doing).
    # The bucket was empty after the drain ran; a denial proves it empty again
    # then, so every unit refilled in between had been admitted.
    assert last_denied_sent > 0, "the clients never emptied the bucket"
    assert admitted >= limit.rate_per_s * (last_denied_sent - drained) - 1
    assert admitted <= limit.rate_per_s * (last_done - drain_sent) + 1


async def test_two_replicas_enforce_one_shared_limit(redis: Redis, prefix: str) -> None:
    other = make_redis(REDIS_URL, TIMEOUT_S)  # a second pool, as another replica has
    try:
        replicas = [
            RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix),
            RedisRateLimiter(other, timeout_s=TIMEOUT_S, key_prefix=prefix),
        ]
        limit = Limit(rate_per_s=0.01, burst=50)  # refills nothing during the test
        keys = [api_key_bucket("p", f"k{i}") for i in range(4)]

        in_flight = asyncio.Semaphore(16)  # interleaved, without a connection storm

        async def call(i: int) -> tuple[int, bool]:
            replica = i % 2
            check = [(keys[i % 4], Limit(100.0, 100)), (project_bucket("p"), limit)]
            async with in_flight:
                return replica, (await replicas[replica].check(check)).allowed

        results = await asyncio.gather(*(call(i) for i in range(120)))
    finally:
        await other.aclose()

    admitted = [replica for replica, allowed in results if allowed]
    assert len(admitted) == 50
    assert set(admitted) == {0, 1}


async def test_retry_after_is_exact(redis: Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix)
    check = [(project_bucket("p"), Limit(rate_per_s=1.0, burst=1))]

    started = time.perf_counter()
    assert (await limiter.check(check)).allowed
    denied = await limiter.check(check)
    denied_at = time.perf_counter()
    assert not denied.allowed
    assert 1.0 - (denied_at - started) <= denied.retry_after_s <= 1.0

    # Bounds from measured times, with 0.7 s to spare for a busy machine.
    await asyncio.sleep(0.3)
    early_sent = time.perf_counter()
    early = await limiter.check(check)
    early_done = time.perf_counter()
    assert not early.allowed
    assert early.retry_after_s <= denied.retry_after_s - (early_sent - denied_at)
    assert early.retry_after_s >= denied.retry_after_s - (early_done - started)

    await asyncio.sleep(early.retry_after_s)
    assert (await limiter.check(check)).allowed


async def test_buckets_expire_once_full_again(redis: Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix)
    bucket = project_bucket("p")
    started = time.perf_counter()
    decision = await limiter.check([(bucket, Limit(rate_per_s=10.0, burst=5))], cost=3)

    ttl_ms = await redis.pttl(prefix + bucket)
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert decision.reset_after_s == pytest.approx(0.3, abs=1e-6)  # one script, one instant
    assert 301 - elapsed_ms - 1 <= ttl_ms <= 302  # the key lives until the bucket is full


async def test_refusals_charge_no_bucket(redis: Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix)
    key, project = api_key_bucket("p", "k"), project_bucket("p")
    both = [(key, Limit(0.01, 10)), (project, Limit(0.01, 2))]

    results = [await limiter.check(both) for _ in range(4)]

    assert [r.allowed for r in results] == [True, True, False, False]
    assert results[-1].limit == 2
    alone = await limiter.check([(key, Limit(0.01, 10))])
    assert alone.remaining == 7  # 10 - 2 admitted - this one


async def test_cost_is_charged_by_the_script(redis: Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix)
    check = [(project_bucket("p"), Limit(rate_per_s=1.0, burst=10))]

    started = time.perf_counter()
    assert (await limiter.check(check, cost=7)).remaining == 3
    denied = await limiter.check(check, cost=5)
    elapsed = time.perf_counter() - started
    assert not denied.allowed
    assert denied.remaining == 3
    assert 2.0 - elapsed <= denied.retry_after_s <= 2.0


async def test_concurrent_checks_share_round_trips_and_decide_as_separate_calls(
    redis: Redis, prefix: str
) -> None:
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix)
    shared = (project_bucket("p"), Limit(rate_per_s=0.01, burst=50))  # refills nothing here
    checks = [[(api_key_bucket("p", f"k{i % 3}"), Limit(0.01, 1000)), shared] for i in range(200)]

    decisions = await asyncio.gather(*(limiter.check(c) for c in checks))

    admitted = [d for d in decisions if d.allowed]
    assert len(admitted) == 50
    # each admitted check saw the bucket as a call of its own would: one unit less each time
    assert sorted(d.remaining for d in admitted) == list(range(50))
    assert all(d.limit == 50 and d.retry_after_s > 0 for d in decisions if not d.allowed)
    assert limiter.round_trips < len(checks) / 4


async def test_a_flushed_script_is_loaded_again_once_for_a_whole_batch(
    redis: Redis, prefix: str
) -> None:
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix)
    check = [(project_bucket("p"), Limit(rate_per_s=0.01, burst=100))]
    await limiter.check(check)  # the script is in Redis now
    loads = limiter.script_loads
    await redis.script_flush()

    decisions = await asyncio.gather(*(limiter.check(check) for _ in range(40)))

    assert all(d.allowed for d in decisions)
    assert sorted(d.remaining for d in decisions) == list(range(59, 99))
    assert limiter.script_loads == loads + 1


async def test_checks_made_during_a_round_trip_go_out_together_after_it(
    redis: Redis, prefix: str
) -> None:
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix)
    check = [(project_bucket("p"), Limit(rate_per_s=0.01, burst=100))]
    first = asyncio.create_task(limiter.check(check))
    await asyncio.sleep(0)  # the check is made, its round trip scheduled
    await asyncio.sleep(0)  # the lone check is on its way
    assert limiter.round_trips == 1

    later = await asyncio.gather(*(limiter.check(check) for _ in range(30)))

    assert (await first).remaining == 99
    assert sorted(d.remaining for d in later) == list(range(69, 99))
    assert limiter.round_trips == 2


async def test_a_callers_next_check_never_waits_for_coalescing(redis: Redis, prefix: str) -> None:
    # An hour of coalescing would time every delayed check out (TIMEOUT_S):
    # a caller checking again right after its answer starts a round trip of
    # its own at once, whatever the rate.
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix, coalesce_s=3600.0)
    check = [(project_bucket("p"), Limit(rate_per_s=0.01, burst=100))]

    decisions = [await limiter.check(check) for _ in range(50)]

    assert [d.remaining for d in decisions] == list(range(99, 49, -1))
    assert limiter.round_trips == 50


async def _evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_one_projects_checks_of_a_round_trip_are_one_script_call(
    redis: Redis, prefix: str
) -> None:
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix)
    checks = [
        [
            (api_key_bucket("p", f"k{i % 4}"), Limit(0.01, 1000)),
            (project_bucket("p"), Limit(0.01, 30)),
        ]
        for i in range(60)
    ]
    before = await _evalsha_calls(redis)

    decisions = await asyncio.gather(*(limiter.check(c) for c in checks))

    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(30))
    assert sum(not d.allowed for d in decisions) == 30
    assert limiter.round_trips < len(checks) / 4
    assert await _evalsha_calls(redis) - before == limiter.round_trips


async def test_checks_of_several_projects_share_a_round_trip_one_script_call_each(
    redis: Redis, prefix: str
) -> None:
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix)
    projects = ["a", "b", "c"]
    checks = [
        [
            (api_key_bucket(projects[i % 3], "k"), Limit(0.01, 1000)),
            (project_bucket(projects[i % 3]), Limit(0.01, 10 * (i % 3 + 1))),
        ]
        for i in range(90)
    ]
    before = await _evalsha_calls(redis)

    decisions = await asyncio.gather(*(limiter.check(c) for c in checks))

    for p, burst in enumerate((10, 20, 30)):
        mine = decisions[p::3]
        # each project's bucket decided as separate calls would, whatever the others did
        assert sorted(d.remaining for d in mine if d.allowed) == list(range(burst))
        assert all(d.limit == burst for d in mine if not d.allowed)
    calls = await _evalsha_calls(redis) - before
    assert limiter.round_trips < len(checks) / 4
    assert limiter.round_trips <= calls <= 3 * limiter.round_trips


async def test_a_flushed_script_is_loaded_once_for_every_project_of_a_batch(
    redis: Redis, prefix: str
) -> None:
    limiter = RedisRateLimiter(redis, timeout_s=TIMEOUT_S, key_prefix=prefix)
    await limiter.check([(project_bucket("a"), Limit(0.01, 100))])
    loads = limiter.script_loads
    await redis.script_flush()

    decisions = await asyncio.gather(
        *(limiter.check([(project_bucket("ab"[i % 2]), Limit(0.01, 100))]) for i in range(40))
    )

    assert sorted(d.remaining for d in decisions[0::2]) == list(range(79, 99))
    assert sorted(d.remaining for d in decisions[1::2]) == list(range(80, 100))
    assert limiter.script_loads == loads + 1
