"""GCRA (generic cell rate algorithm): the limiter math, pure and clock-free.

A bucket's whole state is one number, its *theoretical arrival time* (TAT):
the instant at which the bucket would be full again. With emission interval
`T = 1 / rate_per_s` and tolerance `tau = burst * T`, a request of cost `c`
arriving at `now` is admitted when

    max(TAT, now) + min(c, burst) * T - tau <= now

and then moves the TAT to `max(TAT, now) + c * T`. A fresh (or idle) bucket
therefore admits `burst` units at once, then one unit every `T` seconds.

A cost above the burst is admitted only when the bucket is full and then
charged in full: the bucket goes into debt and later calls wait until it is
paid off. That keeps the long-run rate exact without making a large call
impossible.

The same formulas run in the Redis Lua script (`redis_limiter.py`); the unit
tests of this module pin the behaviour both backends share.

Bucket names may carry a Redis Cluster hash tag (`{...}`): every bucket of one
multi-bucket check must carry the same tag so the Redis backend can update
them in one script on one cluster slot. Use the helpers below to build names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

# Float rounding must not turn an exact boundary ("the bucket refills at
# exactly now") into a denial; 1 ns is far below any meaningful interval.
_EPSILON_S = 1e-9


@dataclass(frozen=True)
class Limit:
    """A sustained rate with a burst: `burst` units at once, `rate_per_s` after."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            raise ValueError(f"rate_per_s must be a positive number, got {self.rate_per_s!r}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst!r}")

    @property
    def emission_interval_s(self) -> float:
        """Seconds one unit takes to refill."""
        return 1.0 / self.rate_per_s


class Decision(NamedTuple):
    """The answer of one check, for the caller and its response trailers.

    `limit` is the burst of the deciding bucket, `remaining` the units it
    could still admit right now, `reset_after_s` the time until it is full
    again, `retry_after_s` the exact wait before the same call would be
    admitted (0 when allowed). A named tuple: every checked call makes one.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after_s: float
    retry_after_s: float

    def trailers(self) -> list[tuple[str, str]]:
        """The rate-limit response metadata for this decision, in order.

        Always `x-ratelimit-limit`, `x-ratelimit-remaining` and
        `x-ratelimit-reset` (whole seconds, rounded up); when denied also
        `retry-after` (whole seconds, rounded up, as HTTP does) and
        `grpc-retry-pushback-ms` (exact, in ms) so gRPC's retry policy waits.
        """
        out = [
            ("x-ratelimit-limit", str(self.limit)),
            ("x-ratelimit-remaining", str(self.remaining)),
            ("x-ratelimit-reset", str(math.ceil(self.reset_after_s - _EPSILON_S))),
        ]
        if not self.allowed:
            out.append(("retry-after", str(max(1, math.ceil(self.retry_after_s - _EPSILON_S)))))
            out.append(
                ("grpc-retry-pushback-ms", str(max(1, math.ceil(self.retry_after_s * 1000))))
            )
        return out


def gcra(tat: float | None, now: float, limit: Limit, cost: int) -> tuple[Decision, float]:
    """One GCRA step for one bucket.

    `tat` is the stored theoretical arrival time (None for a bucket never seen
    or expired), `now` the current time on the same scale, `cost` >= 1.
    Returns the decision and the bucket's new TAT; a denied call leaves the
    bucket as it was, so callers store nothing then.
    """
    t = 1.0 / limit.rate_per_s
    burst = limit.burst
    tau = burst * t
    base = now if tat is None or tat < now else tat
    allow_at = base + (cost if cost < burst else burst) * t - tau
    if allow_at <= now + _EPSILON_S:
        new_tat = base + cost * t
        debt = new_tat - now
        return Decision(True, burst, _remaining(tau, debt, t), debt, 0.0), new_tat
    debt = base - now
    return Decision(False, burst, _remaining(tau, debt, t), debt, allow_at - now), base


def _remaining(tau: float, debt_s: float, t: float) -> int:
    return max(0, math.floor((tau - debt_s) / t + 1e-6))


def most_restrictive(decisions: Sequence[Decision]) -> Decision:
    """The decision a multi-bucket check reports.

    A denial beats an admission; among denials the longest wait wins; among
    admissions the fewest remaining units (then the longest reset) win.
    """
    if len(decisions) == 1:
        return decisions[0]
    if not decisions:
        raise ValueError("no decisions")
    denied = [d for d in decisions if not d.allowed]
    if denied:
        return max(denied, key=lambda d: d.retry_after_s)
    return min(decisions, key=lambda d: (d.remaining, -d.reset_after_s))


# --- bucket names -------------------------------------------------------------------


def project_bucket(project_id: str) -> str:
    """The bucket shared by every call of a project."""
    return f"{{p:{_checked(project_id)}}}project"


def api_key_bucket(project_id: str, key_id: str) -> str:
    """The bucket of one data key; tagged by its project so both check together."""
    return f"{{p:{_checked(project_id)}}}key:{key_id}"


def org_key_bucket(org_id: str, key_id: str) -> str:
    """The bucket of one org (admin) key, which has no project."""
    return f"{{o:{_checked(org_id)}}}key:{key_id}"


def is_org_key_bucket(bucket: str) -> bool:
    """True for a name made by `org_key_bucket`."""
    return bucket.startswith("{o:")


def auth_failure_peer_bucket(peer: str) -> str:
    """Failed authentications from one client address.

    All auth-failure buckets share one tag so that the peer and the key id
    can be charged in one check; they only see traffic from failing callers.
    """
    return f"{{authfail}}peer:{peer}"


def auth_failure_key_bucket(key_id: str) -> str:
    """Failed authentications naming one key id (see auth_failure_peer_bucket)."""
    return f"{{authfail}}key:{key_id}"


def hash_tag(bucket: str) -> str | None:
    """The Redis Cluster hash tag of a name: the text inside its first `{...}`
    when that is non-empty (the rule Redis Cluster itself applies)."""
    start = bucket.find("{")
    if start < 0:
        return None
    end = bucket.find("}", start + 1)
    if end <= start + 1:
        return None
    return bucket[start + 1 : end]


def validate_checks(checks: Sequence[tuple[str, Limit]], cost: int) -> None:
    """Raise ValueError for a malformed check.

    A check needs at least one bucket and a cost of at least 1; the buckets
    of a multi-bucket check must be distinct and share one hash tag (else the
    Redis script could not run on Redis Cluster).
    """
    if not checks:
        raise ValueError("a rate-limit check needs at least one bucket")
    if cost < 1:
        raise ValueError(f"cost must be at least 1, got {cost}")
    if len(checks) == 1:
        return
    names = [name for name, _ in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate buckets in one check: {names}")
    if len(names) > 1:
        tags = {hash_tag(name) for name in names}
        if len(tags) != 1 or None in tags:
            raise ValueError(f"buckets checked together must share one hash tag {{...}}: {names}")


def _checked(tag_part: str) -> str:
    if not tag_part or "{" in tag_part or "}" in tag_part:
        raise ValueError(f"id {tag_part!r} cannot be part of a bucket hash tag")
    return tag_part
