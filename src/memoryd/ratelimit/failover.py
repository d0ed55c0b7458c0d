"""A limiter that survives its shared backend: Redis first, a policy when it fails.

While the primary (Redis) answers, every check goes to it. The first failure
marks it down, logged once. While down, checks do not touch the primary at
all (a dead Redis would otherwise add its timeout to every call): with
`fail-open` they are answered by the fallback (in-process) limiter, with
`fail-closed` they raise `Unavailable`. After a backoff (doubling from
`probe_interval_s` up to `max_probe_interval_s`) one check at a time probes
the primary; its first success marks it up again, logged once.

Fail-open trade-off: each replica then enforces the full limit on its own,
so N replicas admit up to N times the limit until Redis is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

from memoryd.domain.clock import Clock
from memoryd.domain.errors import Unavailable
from memoryd.ratelimit.gcra import Decision, Limit, validate_checks
from memoryd.ratelimit.limiter import RateLimiter

_log = logging.getLogger(__name__)

FailurePolicy = Literal["fail-open", "fail-closed"]


class FailoverRateLimiter:
    """`primary` with `fallback` behind it, per `policy` (see module docstring).

    Metrics: `primary_failures` counts checks the primary failed,
    `fallback_checks` checks answered by the fallback, `transitions` the
    down/up changes; `degraded` is True while the primary is considered down.
    Optional hooks, called synchronously: `on_primary_failure(exc)` for every
    failure, `on_state_change(degraded)` on every transition.
    """

    def __init__(
        self,
        primary: RateLimiter,
        fallback: RateLimiter,
        *,
        clock: Clock,
        policy: str = "fail-open",
        probe_interval_s: float = 0.5,
        max_probe_interval_s: float = 5.0,
        on_primary_failure: Callable[[BaseException], None] | None = None,
        on_state_change: Callable[[bool], None] | None = None,
    ) -> None:
        # A plain str, so settings can pass their validated string through.
        if policy != "fail-open" and policy != "fail-closed":
            raise ValueError(f"policy must be 'fail-open' or 'fail-closed', got {policy!r}")
        self._primary = primary
        self._fallback = fallback
        self._clock = clock
        self._policy: FailurePolicy = "fail-open" if policy == "fail-open" else "fail-closed"
        self._probe_interval_s = probe_interval_s
        self._max_probe_interval_s = max_probe_interval_s
        self._on_primary_failure = on_primary_failure
        self._on_state_change = on_state_change
        self._down = False
        self._probing = False
        self._backoff_s = probe_interval_s
        self._next_probe_at = 0.0
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
        """As `RateLimiter.check`; raises `Unavailable` only under `fail-closed`."""
        # Validated here so a caller bug is a ValueError on every path, never
        # mistaken for (or hidden by) a backend failure.
        validate_checks(checks, cost)
        probe = False
        if self._down:
            if self._probing or self._clock.monotonic() < self._next_probe_at:
                return await self._without_primary(checks, cost, None)
            probe = self._probing = True
        try:
            decision = await self._primary.check(checks, cost)
        except Unavailable as exc:
            self._failed(exc, probe)
            return await self._without_primary(checks, cost, exc)
        finally:
            if probe:
                self._probing = False
        if probe:
            self._recovered()
        return decision

    async def _without_primary(
        self, checks: Sequence[tuple[str, Limit]], cost: int, cause: Unavailable | None
    ) -> Decision:
        if self._policy == "fail-closed":
            if cause is not None:
                raise cause
            raise Unavailable(
                f"the rate-limit backend ({self._primary.backend_name}) is unavailable "
                "and the server fails closed; retry shortly",
                reason="RATE_LIMITER_UNAVAILABLE",
            )
        self.fallback_checks += 1
        return await self._fallback.check(checks, cost)

    def _failed(self, exc: Unavailable, probe: bool) -> None:
        self.primary_failures += 1
        if self._on_primary_failure is not None:
            self._on_primary_failure(exc)
        now = self._clock.monotonic()
        if probe:
            self._backoff_s = min(self._backoff_s * 2, self._max_probe_interval_s)
            self._next_probe_at = now + self._backoff_s
            return
        if self._down:
            return  # a check already in flight when the primary went down
        self._down = True
        self._backoff_s = self._probe_interval_s
        self._next_probe_at = now + self._backoff_s
        self.transitions += 1
        _log.warning(
            "rate limiter backend %s is unavailable (%s); %s until it answers again",
            self._primary.backend_name,
            exc.__cause__.__class__.__name__ if exc.__cause__ else exc.message,
            f"limiting with {self._fallback.backend_name}"
            if self._policy == "fail-open"
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
