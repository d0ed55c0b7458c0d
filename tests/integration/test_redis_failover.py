"""Redis going away and coming back, on a redis-server this test starts itself.

Covers the limiter's fail-open and fail-closed policies (Redis killed, and
Redis hung with SIGSTOP), recovery after a restart on the same port, the
script cache lost by SCRIPT FLUSH or a restart, usage counts kept across an
outage, and the revocation subscription surviving a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers.redis_server import RedisServer
from helpers.servers import MakeServer
from redis.asyncio import Redis

from memoryd.domain.clock import Clock, ManualClock, SystemClock
from memoryd.domain.errors import Unavailable
from memoryd.ratelimit import (
    FailoverRateLimiter,
    Limit,
    LocalRateLimiter,
    RedisRateLimiter,
    project_bucket,
)
from memoryd.storage.redis import make_redis
from memoryd.storage.revocation import RedisRevocationBus
from memoryd.usage import RedisUsageMeter
from memoryd.v1 import keys_pb2

pytestmark = pytest.mark.redis

TIMEOUT_S = 0.25  # the server's default
# Far above one check while Redis is down (nothing waits longer than TIMEOUT_S),
# far below a hang; real time, so it must hold on a busy machine too.
MAX_CALL_S = 2.0
CHECK = [(project_bucket("p"), Limit(1.0, 1000))]  # keys live ~1 s per check
KEY = "rl:" + project_bucket("p")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    instance = RedisServer(tmp_path)
    instance.start()
    yield instance
    instance.kill()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Redis]:
    redis = make_redis(server.url, TIMEOUT_S)
    yield redis
    await redis.aclose()


def _direct(server: RedisServer) -> Redis:
    return make_redis(server.url, 1.0)


def _failover(client: Redis, policy: str, clock: Clock | None = None) -> FailoverRateLimiter:
    clock = clock or SystemClock()
    return FailoverRateLimiter(
        RedisRateLimiter(client, timeout_s=TIMEOUT_S, key_prefix="rl:"),
        LocalRateLimiter(clock),
        clock=clock,
        policy=policy,
        probe_interval_s=0.1,
        max_probe_interval_s=0.4,
    )


async def _timed_checks(limiter: FailoverRateLimiter, n: int) -> list[bool]:
    allowed = []
    for _ in range(n):
        started = time.perf_counter()
        allowed.append((await limiter.check(CHECK)).allowed)
        assert time.perf_counter() - started < MAX_CALL_S
        await asyncio.sleep(0.01)
    return allowed


async def _until(
    condition: Callable[[], bool], action: Callable[[], object], limit_s: float
) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        result = action()
        if asyncio.iscoroutine(result):
            await result
        await asyncio.sleep(0.02)


async def test_fail_open_serves_locally_while_redis_is_dead_then_recovers(
    server: RedisServer, client: Redis
) -> None:
    limiter = _failover(client, "fail-open")
    assert (await limiter.check(CHECK)).allowed
    direct = _direct(server)
    assert await direct.exists(KEY)  # Redis decided
    await direct.aclose()

    server.kill()
    assert all(await _timed_checks(limiter, 30))
    assert limiter.degraded
    assert limiter.fallback_checks == 30
    assert limiter.primary_failures >= 1

    server.start()  # same port, empty: a key there proves Redis decides again
    await _until(lambda: not limiter.degraded, lambda: limiter.check(CHECK), limit_s=10)
    direct = _direct(server)
    assert await direct.exists(KEY)
    await direct.aclose()
    assert limiter.transitions == 2


async def test_fail_open_answers_within_the_deadline_while_redis_hangs(
    server: RedisServer, client: Redis
) -> None:
    clock = ManualClock()  # probes only when the test moves it: counts are exact
    limiter = _failover(client, "fail-open", clock)
    assert (await limiter.check(CHECK)).allowed

    server.pause()  # accepts nothing, answers nothing: only timeouts tell
    try:
        assert all(await _timed_checks(limiter, 30))
        assert limiter.degraded
        # Only the checks up to the failure threshold waited for the timeout.
        assert limiter.primary_failures == 3
    finally:
        server.resume()

    async def later() -> None:
        clock.advance(0.5)
        await limiter.check(CHECK)

    await _until(lambda: not limiter.degraded, later, limit_s=10)


async def test_fail_closed_refuses_quickly_then_recovers(
    server: RedisServer, client: Redis
) -> None:
    limiter = _failover(client, "fail-closed")
    assert (await limiter.check(CHECK)).allowed

    server.kill()
    # The first failures are taken for a blip and answered locally; the
    # third in a row applies the policy.
    assert all([(await limiter.check(CHECK)).allowed for _ in range(2)])
    for _ in range(10):
        started = time.perf_counter()
        with pytest.raises(Unavailable):
            await limiter.check(CHECK)
        assert time.perf_counter() - started < MAX_CALL_S
    assert limiter.fallback_checks == 2

    server.start()

    async def attempt() -> None:
        with contextlib.suppress(Unavailable):
            await limiter.check(CHECK)

    await _until(lambda: not limiter.degraded, attempt, limit_s=10)
    assert (await limiter.check(CHECK)).allowed


async def test_script_cache_loss_is_recovered_by_reloading(
    server: RedisServer, client: Redis
) -> None:
    limiter = RedisRateLimiter(client, timeout_s=TIMEOUT_S, key_prefix="rl:")
    check = [(project_bucket("p"), Limit(0.01, 3))]
    assert (await limiter.check(check)).remaining == 2
    assert limiter.script_loads == 1  # a fresh server never saw it

    await client.script_flush()
    assert (await limiter.check(check)).remaining == 1
    assert limiter.script_loads == 2
    assert (await limiter.check(check)).remaining == 0
    assert limiter.script_loads == 2  # loaded once, then EVALSHA only


async def test_bare_redis_limiter_raises_unavailable_within_its_timeout(
    server: RedisServer,
) -> None:
    # The socket would wait 60 s: only the limiter's own timeout can end the
    # call within the bound, which is wide enough for a busy machine.
    patient = make_redis(server.url, 60.0)
    limiter = RedisRateLimiter(patient, timeout_s=TIMEOUT_S, key_prefix="rl:")
    try:
        await limiter.check(CHECK)
        server.pause()
        started = time.perf_counter()
        with pytest.raises(Unavailable) as raised:
            await limiter.check(CHECK)
        assert time.perf_counter() - started < 10.0
        assert raised.value.reason == "RATE_LIMITER_UNAVAILABLE"
    finally:
        server.resume()
        await patient.aclose()


async def test_usage_counts_survive_an_outage(server: RedisServer) -> None:
    redis = make_redis(server.url, 1.0)
    meter = RedisUsageMeter(redis, ManualClock(datetime(2026, 5, 1, 12, tzinfo=UTC)))
    day = datetime(2026, 5, 1).date()
    try:
        meter.record("org", "p", "e", method="/m/A")
        await meter.flush()
        server.kill()
        meter.record("org", "p", "e", method="/m/A")
        meter.record("org", "p", "e", memories_written=1, bytes_stored=10)
        with pytest.raises(Unavailable):
            await meter.flush()
        assert meter.pending_keys == 1

        server.start()  # empty again: only what is still pending comes back
        await meter.flush()
        [record] = await meter.read("org", None, None, day, day)
        assert (record.calls, record.memories_written, record.bytes_stored) == (1, 1, 10)
        assert meter.flush_failures == 1 and meter.dropped_keys == 0
    finally:
        await meter.close()
        await redis.aclose()


async def test_revocations_flow_again_after_redis_restarts(server: RedisServer) -> None:
    publisher_redis, listener_redis = make_redis(server.url, 1.0), make_redis(server.url, 1.0)
    publisher = RedisRevocationBus(publisher_redis, reconnect_min_s=0.05, reconnect_max_s=0.2)
    listener = RedisRevocationBus(listener_redis, reconnect_min_s=0.05, reconnect_max_s=0.2)
    revoked: list[str] = []
    resubscribed: list[bool] = []
    try:
        await listener.start(revoked.append, on_resubscribed=lambda: resubscribed.append(True))
        await publisher.publish("before")
        await _until(lambda: revoked == ["before"], lambda: None, limit_s=5)

        server.kill()
        await publisher.publish("lost")  # logged, not raised: nobody can hear it
        assert publisher.publish_failures == 1
        server.start()
        await _until(lambda: bool(resubscribed), lambda: None, limit_s=10)

        await publisher.publish("after")
        await _until(lambda: revoked == ["before", "after"], lambda: None, limit_s=5)
        assert listener.reconnects >= 1
    finally:
        await listener.close()
        await publisher.close()
        await publisher_redis.aclose()
        await listener_redis.aclose()


async def test_revocation_listener_starts_even_when_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # not started yet
    redis = make_redis(server.url, 0.2)
    listener = RedisRevocationBus(redis, reconnect_min_s=0.05, reconnect_max_s=0.2)
    revoked: list[str] = []
    resubscribed: list[bool] = []
    try:
        await listener.start(revoked.append, on_resubscribed=lambda: resubscribed.append(True))
        server.start()
        await _until(lambda: bool(resubscribed), lambda: None, limit_s=10)
        publisher = make_redis(server.url, 1.0)
        try:
            await publisher.publish(listener.channel, "k")
        finally:
            await publisher.aclose()
        await _until(lambda: revoked == ["k"], lambda: None, limit_s=5)
    finally:
        await listener.close()
        await redis.aclose()
        server.kill()


async def test_a_server_exports_what_its_redis_parts_count_during_an_outage(
    server: RedisServer, make_server: MakeServer
) -> None:
    memoryd = await make_server(redis_url=server.url)
    owner = memoryd.owner
    project = await memoryd.project()
    created = await owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            project_id=project.id,
            environment_id=project.environments[0].id,
            name="to revoke",
            scopes=["memory:*"],
        ),
        metadata=owner.md(),
    )
    registry = memoryd.app.metrics.registry

    def value(name: str) -> float:
        return registry.get_sample_value(f"{name}_total") or 0.0

    assert value("memoryd_revocation_publish_failures") == 0
    server.kill()
    # fail-open: limited locally, and the revocation is only logged as unpublished
    await owner.keys.RevokeApiKey(
        keys_pb2.RevokeApiKeyRequest(id=created.api_key.id), metadata=owner.md()
    )
    assert value("memoryd_rate_limit_backend_failures") >= 1
    assert value("memoryd_rate_limit_fallback_checks") >= 1
    assert value("memoryd_revocation_publish_failures") == 1
    # the usage of that call waits for the next flush, which fails
    await _until(lambda: value("memoryd_usage_flush_failures") >= 1, lambda: None, limit_s=10)
