"""The rate-limiter port and its in-process backend.

`RateLimiter.check` charges one call against one or more buckets at once
(typically the caller's key and its project) and answers with the most
restrictive `Decision`. Checks are all-or-nothing: when any bucket denies,
none is charged, so a call refused by its project does not also drain its
key (and vice versa).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from memoryd.domain.clock import Clock
from memoryd.ratelimit.gcra import Decision, Limit, gcra, most_restrictive, validate_checks


class RateLimiter(Protocol):
    """Charges calls against named GCRA buckets.

    `check(checks, cost)`: `checks` pairs a bucket name with its limit (build
    names with the helpers of `memoryd.ratelimit.gcra`; the buckets of one
    check must share a hash tag), `cost` (>= 1) is how many units the call
    uses. All buckets are charged or none. Raises ValueError for a malformed
    check and `memoryd.domain.errors.Unavailable` when the backend cannot
    answer (only backends with I/O do).
    """

    @property
    def backend_name(self) -> str:
        """A short name for logs and metrics, e.g. "redis" or "local"."""
        ...

    async def check(self, checks: Sequence[tuple[str, Limit]], cost: int = 1) -> Decision: ...


class LocalRateLimiter:
    """GCRA buckets in this process's memory: correct for one replica only.

    Time is `clock.monotonic()`. Memory is bounded: a bucket whose TAT has
    passed is full again and indistinguishable from a missing one, so it is
    dropped by a sweep every `sweep_interval_s` (lossless). If more than
    `max_buckets` are held, the least recently charged ones are dropped;
    those not yet full again are counted in `evicted_live` (lossy: they start
    over with a full burst; exported as `memoryd_rate_limit_local_evictions`).

    Not thread-safe; `check` never awaits, so it is atomic on one event loop.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        max_buckets: int = 100_000,
        sweep_interval_s: float = 10.0,
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self._clock = clock
        self._max_buckets = max_buckets
        self._sweep_interval_s = sweep_interval_s
        # name -> TAT, least recently charged first.
        self._tats: OrderedDict[str, float] = OrderedDict()
        self._next_sweep = clock.monotonic() + sweep_interval_s
        self.evicted_live = 0

    @property
    def backend_name(self) -> str:
        return "local"

    def __len__(self) -> int:
        """How many buckets are held (for tests and metrics)."""
        return len(self._tats)

    async def check(self, checks: Sequence[tuple[str, Limit]], cost: int = 1) -> Decision:
        return self.decide(checks, cost)

    def decide(self, checks: Sequence[tuple[str, Limit]], cost: int = 1) -> Decision:
        """`check` without the coroutine: this backend never waits, so the
        call pipeline decides here directly (`RateLimitAdmission.admit_now`)."""
        validate_checks(checks, cost)
        now = self._clock.monotonic()
        if now >= self._next_sweep:
            self._sweep(now)
        tats = self._tats
        if len(checks) == 1:  # an org key's
            name, limit = checks[0]
            decision, new_tat = gcra(tats.get(name), now, limit, cost)
            if decision.allowed:
                self._charged(name, new_tat, now)
            return decision
        results = [gcra(tats.get(name), now, limit, cost) for name, limit in checks]
        decisions = [decision for decision, _ in results]
        if all(d.allowed for d in decisions):
            for (name, _), (_, new_tat) in zip(checks, results, strict=True):
                self._charged(name, new_tat, now)
        return most_restrictive(decisions)

    def _charged(self, name: str, tat: float, now: float) -> None:
        self._tats[name] = tat
        self._tats.move_to_end(name)
        if len(self._tats) > self._max_buckets:
            self._shrink(now)

    def _sweep(self, now: float) -> None:
        for name in [name for name, tat in self._tats.items() if tat <= now]:
            del self._tats[name]
        self._next_sweep = now + self._sweep_interval_s

    def _shrink(self, now: float) -> None:
        # Dropping the least recently charged bucket is O(1); a full sweep per
        # call would be O(n) exactly when memory is under pressure.
        while len(self._tats) > self._max_buckets:
            _, tat = self._tats.popitem(last=False)
            if tat > now:
                self.evicted_live += 1
