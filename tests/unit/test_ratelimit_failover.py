"""FailoverRateLimiter: policies, backoff while down, recovery, logging and counters."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from memoryd.domain.clock import ManualClock
from memoryd.domain.errors import Unavailable
from memoryd.ratelimit import (
    Decision,
    FailoverRateLimiter,
    Limit,
    LocalRateLimiter,
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

    assert [a.allowed for a in answers] == [True, True, True, False, False]  # local burst 3
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
