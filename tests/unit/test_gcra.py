"""GCRA math and the in-process limiter, on an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memoryd.domain.clock import ManualClock
from memoryd.ratelimit import (
    Decision,
    Limit,
    LocalRateLimiter,
    api_key_bucket,
    auth_failure_key_bucket,
    auth_failure_peer_bucket,
    org_key_bucket,
    project_bucket,
)
from memoryd.ratelimit.gcra import gcra, hash_tag, most_restrictive, validate_checks

KEY = api_key_bucket("proj_1", "key_1")
PROJECT = project_bucket("proj_1")


def _limiter() -> tuple[LocalRateLimiter, ManualClock]:
    clock = ManualClock()
    return LocalRateLimiter(clock), clock


async def _admitted(limiter: LocalRateLimiter, limit: Limit, n: int, cost: int = 1) -> int:
    decisions = [await limiter.check([(KEY, limit)], cost) for _ in range(n)]
    return sum(d.allowed for d in decisions)


async def test_burst_is_admitted_at_once_then_one_per_interval() -> None:
    limiter, clock = _limiter()
    limit = Limit(rate_per_s=10.0, burst=5)

    assert await _admitted(limiter, limit, 8) == 5
    denied = await limiter.check([(KEY, limit)])
    assert not denied.allowed
    assert denied.retry_after_s == pytest.approx(0.1)

    clock.advance(0.1)
    assert await _admitted(limiter, limit, 3) == 1
    clock.advance(0.25)
    assert await _admitted(limiter, limit, 3) == 2


async def test_refill_stops_at_the_burst() -> None:
    limiter, clock = _limiter()
    limit = Limit(rate_per_s=10.0, burst=5)
    await _admitted(limiter, limit, 5)

    clock.advance(60)

    assert await _admitted(limiter, limit, 20) == 5


async def test_decision_reports_remaining_reset_and_exact_retry_after() -> None:
    limiter, clock = _limiter()
    limit = Limit(rate_per_s=4.0, burst=2)

    first = await limiter.check([(KEY, limit)])
    assert first == Decision(True, limit=2, remaining=1, reset_after_s=0.25, retry_after_s=0.0)
    second = await limiter.check([(KEY, limit)])
    assert (second.allowed, second.remaining, second.reset_after_s) == (True, 0, 0.5)

    clock.advance(0.1)
    third = await limiter.check([(KEY, limit)])
    assert not third.allowed
    assert third.remaining == 0
    assert third.retry_after_s == pytest.approx(0.15)
    assert third.reset_after_s == pytest.approx(0.4)

    clock.advance(third.retry_after_s)
    assert (await limiter.check([(KEY, limit)])).allowed


async def test_cost_charges_several_units() -> None:
    limiter, _ = _limiter()
    limit = Limit(rate_per_s=10.0, burst=10)

    assert (await limiter.check([(KEY, limit)], cost=4)).remaining == 6
    assert (await limiter.check([(KEY, limit)], cost=4)).remaining == 2
    denied = await limiter.check([(KEY, limit)], cost=4)
    assert not denied.allowed
    assert denied.remaining == 2
    assert denied.retry_after_s == pytest.approx(0.2)  # two more units at 0.1 s each
    assert (await limiter.check([(KEY, limit)], cost=2)).allowed


async def test_cost_above_burst_needs_a_full_bucket_and_is_paid_in_full() -> None:
    limiter, clock = _limiter()
    limit = Limit(rate_per_s=1.0, burst=5)

    big = await limiter.check([(KEY, limit)], cost=8)
    assert big.allowed and big.remaining == 0
    after = await limiter.check([(KEY, limit)])
    assert not after.allowed
    assert after.retry_after_s == pytest.approx(4.0)  # 3 s of debt, then 1 unit

    clock.advance(2)
    assert not (await limiter.check([(KEY, limit)], cost=8)).allowed  # bucket not full


async def test_buckets_are_charged_all_or_nothing() -> None:
    limiter, _ = _limiter()
    key_limit, project_limit = Limit(100.0, 10), Limit(100.0, 3)
    both = [(KEY, key_limit), (PROJECT, project_limit)]

    assert [(await limiter.check(both)).allowed for _ in range(5)] == [True] * 3 + [False] * 2
    refused = await limiter.check(both)
    assert refused.limit == 3  # the project decided
    assert refused.retry_after_s == pytest.approx(0.01)

    # The three refusals did not drain the key: 10 - 3 admitted = 7 left, one now used.
    alone = await limiter.check([(KEY, key_limit)])
    assert alone.allowed and alone.remaining == 6


async def test_the_most_restrictive_bucket_is_reported() -> None:
    limiter, _ = _limiter()
    decision = await limiter.check([(KEY, Limit(1.0, 50)), (PROJECT, Limit(1000.0, 4))])
    assert (decision.limit, decision.remaining) == (4, 3)


async def test_concurrent_clients_get_the_configured_rate_within_one_percent() -> None:
    limiter, clock = _limiter()
    limit = Limit(rate_per_s=100.0, burst=20)
    window_s, tick_s, clients = 10.0, 0.005, 20
    admitted = 0

    async def client() -> bool:
        return (await limiter.check([(KEY, limit), (PROJECT, Limit(1e6, 10**6))])).allowed

    for _ in range(round(window_s / tick_s)):
        admitted += sum(await asyncio.gather(*(client() for _ in range(clients))))
        clock.advance(tick_s)

    expected = limit.burst + limit.rate_per_s * window_s
    assert abs(admitted - expected) <= 0.01 * expected


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=500.0),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.05), min_size=1, max_size=400),
    cost=st.integers(min_value=1, max_value=5),
)
def test_never_admits_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float], cost: int
) -> None:
    limit = Limit(rate, burst)
    tat: float | None = None
    now = admitted = 0.0
    for gap in gaps:
        now += gap
        decision, new_tat = gcra(tat, now, limit, cost)
        if decision.allowed:
            admitted += cost
            tat = new_tat
        # The bucket never holds more than its burst, nor more than it earned.
        assert admitted <= max(burst, cost) + rate * now + 1e-6
        assert 0 <= decision.remaining <= burst


def test_limit_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Limit(0.0, 1)
    with pytest.raises(ValueError):
        Limit(1.0, 0)
    with pytest.raises(ValueError):
        Limit(float("inf"), 1)


async def test_malformed_checks_are_refused() -> None:
    limiter, _ = _limiter()
    with pytest.raises(ValueError, match="at least one bucket"):
        await limiter.check([], 1)
    with pytest.raises(ValueError, match="cost"):
        await limiter.check([(KEY, Limit(1, 1))], 0)
    with pytest.raises(ValueError, match="hash tag"):
        # Two projects could live in two Redis Cluster slots.
        await limiter.check([(KEY, Limit(1, 1)), (project_bucket("proj_2"), Limit(1, 1))])
    with pytest.raises(ValueError, match="duplicate"):
        await limiter.check([(KEY, Limit(1, 1)), (KEY, Limit(1, 1))])


def test_bucket_helpers_tag_what_is_checked_together() -> None:
    assert hash_tag(api_key_bucket("p", "k")) == hash_tag(project_bucket("p")) == "p:p"
    assert hash_tag(org_key_bucket("o", "k")) == "o:o"
    assert hash_tag(auth_failure_peer_bucket("ipv4:1.2.3.4:5")) == "authfail"
    assert hash_tag(auth_failure_key_bucket("k")) == "authfail"
    validate_checks([(auth_failure_peer_bucket("x"), Limit(1, 1))], 1)
    with pytest.raises(ValueError):
        project_bucket("a}b")


def test_most_restrictive_prefers_the_longest_wait_then_the_fewest_left() -> None:
    ok_many = Decision(True, 10, 9, 0.1, 0.0)
    ok_few = Decision(True, 10, 1, 0.9, 0.0)
    no_short = Decision(False, 5, 0, 1.0, 0.2)
    no_long = Decision(False, 3, 0, 2.0, 0.7)
    assert most_restrictive([ok_many, ok_few]) == ok_few
    assert most_restrictive([ok_many, no_short, no_long, ok_few]) == no_long


def test_trailers_say_limit_remaining_reset_and_when_to_retry() -> None:
    assert dict(Decision(True, 10, 7, 0.3, 0.0).trailers()) == {
        "x-ratelimit-limit": "10",
        "x-ratelimit-remaining": "7",
        "x-ratelimit-reset": "1",
    }
    denied = dict(Decision(False, 10, 0, 2.5, 1.2345).trailers())
    assert denied["retry-after"] == "2"
    assert denied["grpc-retry-pushback-ms"] == "1235"
    assert denied["x-ratelimit-reset"] == "3"


async def test_idle_buckets_are_swept_and_memory_is_bounded() -> None:
    clock = ManualClock()
    limiter = LocalRateLimiter(clock, max_buckets=100, sweep_interval_s=10.0)
    limit = Limit(10.0, 5)
    for i in range(50):
        await limiter.check([(api_key_bucket("p", f"k{i}"), limit)])
    assert len(limiter) == 50

    clock.advance(11)  # every bucket is full again, and a sweep is due
    await limiter.check([(KEY, limit)])
    assert len(limiter) == 1
    assert limiter.evicted_live == 0

    for i in range(150):
        await limiter.check([(api_key_bucket("p", f"k{i}"), limit)])
    assert len(limiter) == 100
    assert limiter.evicted_live == 51  # live buckets (and KEY) had to go


async def test_eviction_prefers_the_least_recently_charged_bucket() -> None:
    clock = ManualClock()
    limiter = LocalRateLimiter(clock, max_buckets=2)
    limit = Limit(1.0, 2)
    a, b, c = (api_key_bucket("p", name) for name in "abc")
    await limiter.check([(a, limit)])
    await limiter.check([(b, limit)])
    await limiter.check([(a, limit)])  # a is now recent, b the oldest
    await limiter.check([(c, limit)])

    assert not (await limiter.check([(a, limit)])).allowed  # a kept its state
    assert (await limiter.check([(b, limit)])).remaining == 1  # b started over
