"""A limiter that survives its shared backend: Redis first, a policy when it fails.

While the primary (Redis) answers, every check goes to it. One failed check
does not mark it down: on a busy machine a healthy Redis now and then misses
its deadline, and flipping the whole replica to its fallback (or, under
fail-closed, to refusing) for a probe interval on every such miss is worse
than the miss. The primary is marked down after `failure_threshold`
consecutive failures, logged once; checks that were already in flight
together when a failure was seen (one stalled event loop or socket fails them
all at once) count as one failure. A failed check below the threshold is
answered by the fallback, under either policy.

While down, checks do not touch the primary at all (a dead Redis would
otherwise add its timeout to every call): with `fail-open` they are answered
by the fallback (in-process) limiter, with `fail-closed` they raise
`Unavailable`, except checks whose buckets all match `local_when_down` (org
keys: key management must stay possible during an outage), which the
fallback answers. After a backoff (doubling from `probe_interval_s` up to
`max_probe_interval_s`) one check at a time probes the primary; its first
success marks it up again, logged once. With the default cap of 1 s the
primary takes over at most about a second after it answers again.

The fallback is a mirror, not a spare: every call admitted by the primary is
charged to the fallback's buckets too, and must be admitted by them (with
`skew_tolerance_s` of slack, for the jitter between Redis' clock and ours).
So the fallback never starts an outage with a fresh burst, and calls admitted
locally during an outage still count when the primary is back (Redis never
saw them): on one replica the limit holds across any number of flaps, within
`1 + rate * skew_tolerance_s` units.

Fail-open trade-off: each replica then enforces the full limit on its own,
so N replicas admit up to N times the limit until Redis is back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal

from memoryd.domain.clock import Clock
from memoryd.domain.errors import Unavailable
from memoryd.ratelimit.gcra import Decision, Limit, validate_checks
from memoryd.ratelimit.limiter import LocalRateLimiter, RateLimiter

# limits whose widened mirror is kept made (cleared when full)
_MAX_WIDENED = 10_000

_log = logging.getLogger(__name__)

FailurePolicy = Literal["fail-open", "fail-closed"]


class FailoverRateLimiter:
    """`primary` with `fallback` behind it, per `policy` (see module docstring).

    Counters (exported as `memoryd_rate_limit_*` metrics): `primary_failures`
    counts checks the primary failed, `fallback_checks` checks answered by the
    fallback, `transitions` the down/up changes; `degraded` is True while the
    primary is considered down. Optional hook, called synchronously:
    `on_state_change(degraded)` on every transition.
    """

    def __init__(
        self,
        primary: RateLimiter,
        fallback: LocalRateLimiter,
        *,
        clock: Clock,
        policy: str = "fail-open",
        failure_threshold: int = 3,
        probe_interval_s: float = 0.1,
        max_probe_interval_s: float = 1.0,
        skew_tolerance_s: float = 0.25,
        local_when_down: Callable[[str], bool] | None = None,
        on_state_change: Callable[[bool], None] | None = None,
    ) -> None:
        # A plain str, so settings can pass their validated string through.
        if policy != "fail-open" and policy != "fail-closed":
            raise ValueError(f"policy must be 'fail-open' or 'fail-closed', got {policy!r}")
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        self._primary = primary
        self._fallback = fallback
        self._clock = clock
        self._policy: FailurePolicy = "fail-open" if policy == "fail-open" else "fail-closed"
        self._failure_threshold = failure_threshold
        self._probe_interval_s = probe_interval_s
        self._max_probe_interval_s = max_probe_interval_s
        self._skew_tolerance_s = skew_tolerance_s
        self._local_when_down = local_when_down
        self._on_state_change = on_state_change
        self._down = False
        self._probing = False
        self._backoff_s = probe_interval_s
        self._next_probe_at = 0.0
        self._streak = 0  # consecutive failures while up
        # each limit → its mirror's, widened by the slack (limits are few)
        self._slack: dict[Limit, Limit] = {}
        self._last_failure_seen_at = -math.inf
        self.primary_failures = 0
        self.fallback_checks = 0
        self.transitions = 0

    @property
    def backend_name(self) -> str:
        if self._policy == "fail-open":
            return f"{self._primary.backend_name} (fail-open to {self._fallback.backend_name})"
        return f"{self._primary.backend_name} (fail-closed)"

    @property
    def policy(self) -> FailurePolicy:
        return self._policy

    @property
    def degraded(self) -> bool:
        """True while the primary is considered down."""
        return self._down

    async def check(self, checks: Sequence[tuple[str, Limit]], cost: int = 1) -> Decision:
        """As `RateLimiter.check`; raises `Unavailable` only under `fail-closed`
        while the primary is down (never for `local_when_down` buckets)."""
        # Validated here so a caller bug is a ValueError on every path, never
        # mistaken for (or hidden by) a backend failure.
        validate_checks(checks, cost)
        probe = False
        if self._down:
            if self._probing or self._clock.monotonic() < self._next_probe_at:
                return self._without_primary(checks, cost, None)
            probe = self._probing = True
        started = self._clock.monotonic()
        try:
            decision = await self._primary.check(checks, cost)
        except Unavailable as exc:
            self._failed(exc, probe, started)
            if not self._down:  # a transient failure: answered locally
                return self._local(checks, cost)
            return self._without_primary(checks, cost, exc)
        finally:
            if probe:
                self._probing = False
        self._streak = 0
        if probe:
            self._recovered()
        return self._mirror(checks, cost, decision)

    def _mirror(
        self, checks: Sequence[tuple[str, Limit]], cost: int, decision: Decision
    ) -> Decision:
        """Charge a call the primary admitted to the fallback's buckets as well."""
        if not decision.allowed:
            return decision
        mirrored = [(name, self._with_slack(limit)) for name, limit in checks]
        local = self._fallback.decide(mirrored, cost)
        if local.allowed:
            return decision
        # Report the configured burst, not the mirror's slack-widened one.
        return Decision(False, decision.limit, 0, local.reset_after_s, local.retry_after_s)

    def _with_slack(self, limit: Limit) -> Limit:
        widened = self._slack.get(limit)
        if widened is None:
            slack = 1 + math.ceil(limit.rate_per_s * self._skew_tolerance_s)
            widened = Limit(limit.rate_per_s, limit.burst + slack)
            if len(self._slack) >= _MAX_WIDENED:
                self._slack.clear()
            self._slack[limit] = widened
        return widened

    def _without_primary(
        self, checks: Sequence[tuple[str, Limit]], cost: int, cause: Unavailable | None
    ) -> Decision:
        if self._policy == "fail-closed" and not self._local_always(checks):
            if cause is not None:
                raise cause
            raise Unavailable(
                f"the rate-limit backend ({self._primary.backend_name}) is unavailable "
                "and the server fails closed; retry shortly",
                reason="RATE_LIMITER_UNAVAILABLE",
            )
        return self._local(checks, cost)

    def _local_always(self, checks: Sequence[tuple[str, Limit]]) -> bool:
        match = self._local_when_down
        return match is not None and all(match(name) for name, _ in checks)

    def _local(self, checks: Sequence[tuple[str, Limit]], cost: int) -> Decision:
        self.fallback_checks += 1
        return self._fallback.decide(checks, cost)

    def _failed(self, exc: Unavailable, probe: bool, started: float) -> None:
        self.primary_failures += 1
        now = self._clock.monotonic()
        if probe:
            self._backoff_s = min(self._backoff_s * 2, self._max_probe_interval_s)
            self._next_probe_at = now + self._backoff_s
            return
        if self._down:
            return  # a check already in flight when the primary went down
        if started < self._last_failure_seen_at:
            return  # in flight with a failure already counted: the same stall
        self._last_failure_seen_at = now
        self._streak += 1
        if self._streak >= self._failure_threshold:
            self._mark_down(exc, now)

    def _mark_down(self, exc: Unavailable, now: float) -> None:
        self._down = True
        self._streak = 0
        self._backoff_s = min(self._probe_interval_s, self._max_probe_interval_s)
        self._next_probe_at = now + self._backoff_s
        self.transitions += 1
        _log.warning(
            "rate limiter backend %s is unavailable (%s, %d checks in a row); %s until it "
            "answers again",
            self._primary.backend_name,
            exc.__cause__.__class__.__name__ if exc.__cause__ else exc.message,
            self._failure_threshold,
            f"limiting with {self._fallback.backend_name}"
            if self._policy == "fail-open"
            else "refusing calls (fail-closed; org keys are limited locally)"
            if self._local_when_down is not None
            else "refusing calls (fail-closed)",
        )
        if self._on_state_change is not None:
            self._on_state_change(True)

    def _recovered(self) -> None:
        if not self._down:
            return
        self._down = False
        self._backoff_s = self._probe_interval_s
        self.transitions += 1
        _log.info("rate limiter backend %s is answering again", self._primary.backend_name)
        if self._on_state_change is not None:
            self._on_state_change(False)
