"""FailoverRateLimiter: policies, backoff while down, recovery, logging and counters."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any

import pytest

from memoryd.domain.clock import ManualClock
from memoryd.domain.errors import Unavailable
from memoryd.ratelimit import (
    Decision,
    FailoverRateLimiter,
    Limit,
    LocalRateLimiter,
    is_org_key_bucket,
    org_key_bucket,
    project_bucket,
)

CHECK = [(project_bucket("p"), Limit(10.0, 3))]
PRIMARY_DECISION = Decision(True, 99, 98, 0.0, 0.0)


class FlakyPrimary:
    """A primary limiter that is up or down on command and counts its calls."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    @property
    def backend_name(self) -> str:
        return "flaky"

    async def check(self, checks: Sequence[tuple[str, Limit]], cost: int = 1) -> Decision:
        self.calls += 1
        if not self.up:
            raise Unavailable("down", reason="RATE_LIMITER_UNAVAILABLE")
        return PRIMARY_DECISION


def _failover(policy: str) -> tuple[FailoverRateLimiter, FlakyPrimary, ManualClock, list[bool]]:
    clock = ManualClock()
    primary = FlakyPrimary()
    changes: list[bool] = []
    limiter = FailoverRateLimiter(
        primary,
        LocalRateLimiter(clock),
        clock=clock,
        policy=policy,
        failure_threshold=1,  # these tests are about the down state, not about entering it
        probe_interval_s=0.5,
        max_probe_interval_s=2.0,
        on_state_change=changes.append,
    )
    return limiter, primary, clock, changes


async def test_fail_open_answers_locally_and_stops_calling_a_dead_primary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter, primary, _, changes = _failover("fail-open")
    assert await limiter.check(CHECK) == PRIMARY_DECISION

    primary.up = False
    with caplog.at_level(logging.WARNING, logger="memoryd.ratelimit.failover"):
        answers = [await limiter.check(CHECK) for _ in range(5)]

    # local burst 3, of which the primary's admission already used one (the mirror)
    assert [a.allowed for a in answers] == [True, True, False, False, False]
    assert primary.calls == 2  # one success, one failure; then no more calls while down
    assert limiter.degraded and changes == [True]
    assert (limiter.primary_failures, limiter.fallback_checks) == (1, 5)
    assert len(caplog.records) == 1


async def test_primary_is_probed_after_a_backoff_and_takes_over_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter, primary, clock, changes = _failover("fail-open")
    primary.up = False
    await limiter.check(CHECK)

    clock.advance(0.5)
    await limiter.check(CHECK)  # probe fails: backoff doubles to 1 s
    assert primary.calls == 2
    clock.advance(0.9)
    await limiter.check(CHECK)
    assert primary.calls == 2

    primary.up = True
    clock.advance(0.1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="memoryd.ratelimit.failover"):
        assert await limiter.check(CHECK) == PRIMARY_DECISION
        assert await limiter.check(CHECK) == PRIMARY_DECISION
    assert not limiter.degraded
    assert changes == [True, False]
    assert limiter.transitions == 2
    assert [r.getMessage() for r in caplog.records] == [
        "rate limiter backend flaky is answering again"
    ]


async def test_fail_closed_raises_unavailable_without_waiting_on_the_primary() -> None:
    limiter, primary, clock, _ = _failover("fail-closed")
    primary.up = False

    for _ in range(3):
        with pytest.raises(Unavailable) as raised:
            await limiter.check(CHECK)
        assert raised.value.code == "UNAVAILABLE"
    assert primary.calls == 1
    assert limiter.fallback_checks == 0

    primary.up = True
    clock.advance(0.5)
    assert await limiter.check(CHECK) == PRIMARY_DECISION


async def test_malformed_checks_are_not_backend_failures() -> None:
    limiter, _, _, _ = _failover("fail-open")
    with pytest.raises(ValueError):
        await limiter.check(CHECK, cost=0)
    assert not limiter.degraded


def test_unknown_policy_is_refused() -> None:
    clock = ManualClock()
    with pytest.raises(ValueError, match="fail-open"):
        FailoverRateLimiter(FlakyPrimary(), LocalRateLimiter(clock), clock=clock, policy="open")


def test_backend_name_says_what_happens_on_failure() -> None:
    open_, _, _, _ = _failover("fail-open")
    closed, _, _, _ = _failover("fail-closed")
    assert open_.backend_name == "flaky (fail-open to local)"
    assert closed.backend_name == "flaky (fail-closed)"


# --- a Redis-like primary: real GCRA state that never sees local admissions ------------


class FakeRedis:
    """GCRA buckets on the test's clock, like Redis: what the fallback admits
    while it is down is never charged here. `up` False raises at once (a
    refused connection); `stall` makes checks wait for `release` and then fail
    (a hung socket: everything in flight times out together)."""

    def __init__(self, clock: ManualClock) -> None:
        self._buckets = LocalRateLimiter(clock)
        self.up = True
        self.stall: asyncio.Event | None = None
        self.calls = 0

    @property
    def backend_name(self) -> str:
        return "fake-redis"

    async def check(self, checks: Sequence[tuple[str, Limit]], cost: int = 1) -> Decision:
        self.calls += 1
        if self.stall is not None:
            await self.stall.wait()
            raise Unavailable("timed out", reason="RATE_LIMITER_UNAVAILABLE")
        if not self.up:
            raise Unavailable("refused", reason="RATE_LIMITER_UNAVAILABLE")
        return await self._buckets.check(checks, cost)


def _with_fake_redis(
    policy: str, **options: Any
) -> tuple[FailoverRateLimiter, FakeRedis, ManualClock]:
    """The limiter as the server builds it: default thresholds and probe intervals."""
    clock = ManualClock()
    redis = FakeRedis(clock)
    limiter = FailoverRateLimiter(
        redis, LocalRateLimiter(clock), clock=clock, policy=policy, **options
    )
    return limiter, redis, clock


LIMITED = [(project_bucket("p"), Limit(20.0, 20))]


@pytest.mark.parametrize("policy", ["fail-open", "fail-closed"])
async def test_one_failed_check_does_not_switch_away_from_a_healthy_primary(policy: str) -> None:
    limiter, redis, clock = _with_fake_redis(policy)
    redis.up = False
    assert (await limiter.check(LIMITED)).allowed  # answered locally, never UNAVAILABLE
    redis.up = True
    clock.advance(0.01)
    before = redis.calls
    assert (await limiter.check(LIMITED)).allowed
    assert redis.calls == before + 1  # the very next check asks the primary again
    assert not limiter.degraded and limiter.transitions == 0


async def test_consecutive_failures_switch_to_the_policy() -> None:
    limiter, redis, _ = _with_fake_redis("fail-closed")
    redis.up = False
    for _ in range(2):
        assert (await limiter.check(LIMITED)).allowed
    assert not limiter.degraded
    with pytest.raises(Unavailable) as raised:
        await limiter.check(LIMITED)
    assert raised.value.reason == "RATE_LIMITER_UNAVAILABLE"
    assert limiter.degraded


async def test_checks_failed_together_by_one_stall_count_as_one_failure() -> None:
    limiter, redis, clock = _with_fake_redis("fail-closed")
    redis.stall = asyncio.Event()
    in_flight = [asyncio.create_task(limiter.check(LIMITED)) for _ in range(20)]
    await asyncio.sleep(0)
    clock.advance(0.25)  # the timeout passes for all of them at once
    redis.stall.set()
    answers = await asyncio.gather(*in_flight)
    assert all(a.allowed for a in answers)  # answered locally, none refused
    assert limiter.primary_failures == 20
    assert not limiter.degraded


async def test_a_flapping_primary_never_lets_a_tenant_exceed_its_limit() -> None:
    # The reported case: 20/s, 15 trips in 40 s. A client asks 100 times a
    # second; the primary fails for 0.5 s every 2.6 s.
    limiter, redis, clock = _with_fake_redis("fail-open")
    admitted = 0
    for tick in range(4000):  # 40 s in 10 ms steps
        redis.up = (tick % 260) >= 50
        admitted += (await limiter.check(LIMITED)).allowed
        clock.advance(0.01)
    assert limiter.transitions >= 30  # it really flapped: down and up 15 times
    limit = LIMITED[0][1]
    slack = 1 + math.ceil(limit.rate_per_s * 0.25)  # the mirror's skew tolerance
    assert admitted <= limit.burst + limit.rate_per_s * 40 + slack
    assert admitted >= limit.rate_per_s * 40  # and it is not starved either


@pytest.mark.parametrize("policy", ["fail-open", "fail-closed"])
async def test_primary_takes_over_within_two_seconds_after_a_long_outage(policy: str) -> None:
    limiter, redis, clock = _with_fake_redis(policy)
    redis.up = False
    refusals = 0

    async def tick() -> None:
        nonlocal refusals
        try:
            await limiter.check(LIMITED)
        except Unavailable:
            refusals += 1
        clock.advance(0.01)

    for _ in range(6000):  # a minute down: the probe backoff is at its cap
        await tick()
    assert limiter.degraded
    redis.up = True
    refusals = 0
    for _ in range(200):
        await tick()
        if not limiter.degraded:
            break
    assert not limiter.degraded
    assert refusals <= 100  # at most one probe interval (1 s) of refusals after it is back
    before = redis.calls
    await tick()
    assert redis.calls == before + 1


async def test_org_keys_are_limited_locally_while_a_fail_closed_primary_is_down() -> None:
    limiter, redis, _ = _with_fake_redis("fail-closed", local_when_down=is_org_key_bucket)
    redis.up = False
    for _ in range(2):
        await limiter.check(LIMITED)
    for _ in range(2):  # the third failure, then one while down
        with pytest.raises(Unavailable):
            await limiter.check(LIMITED)
    assert limiter.degraded
    org = [(org_key_bucket("o", "k"), Limit(1.0, 2))]
    assert [(await limiter.check(org)).allowed for _ in range(3)] == [True, True, False]
