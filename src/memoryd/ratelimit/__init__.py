"""Rate limiting, usage metering and key-revocation fan-out.

The pieces the composition root builds and the interceptors call:

Limiter (`RateLimiter` port; GCRA, see `gcra.py`)::

    redis = make_redis(settings.redis_url, settings.redis_timeout_ms / 1000)
    limiter = FailoverRateLimiter(
        RedisRateLimiter(redis, timeout_s=settings.redis_timeout_ms / 1000),
        LocalRateLimiter(clock),
        clock=clock,
        policy=settings.rate_limit_failure_policy,  # "fail-open" | "fail-closed"
        failure_threshold=settings.rate_limit_failure_threshold,
        max_probe_interval_s=settings.rate_limit_max_probe_interval_s,
        skew_tolerance_s=settings.redis_timeout_ms / 1000,
        local_when_down=is_org_key_bucket,  # key management survives an outage
    )
    # or, with no Redis URL (one replica): limiter = LocalRateLimiter(clock)

    decision = await limiter.check(
        [
            (api_key_bucket(p.project_id, p.key_id), Limit(100.0, 200)),
            (project_bucket(p.project_id), Limit(500.0, 1000)),
        ],
        cost=1,  # e.g. len(items) for BatchCreate
    )
    trailers = decision.trailers()  # x-ratelimit-*, and retry-after /
    if not decision.allowed:        # grpc-retry-pushback-ms when denied
        ...  # RESOURCE_EXHAUSTED with RetryInfo(decision.retry_after_s)

All buckets of one check are charged or none; the most restrictive decision
is returned. Buckets checked together must share a hash tag: use the bucket
helpers (`project_bucket`, `api_key_bucket`, `org_key_bucket`,
`auth_failure_peer_bucket`, `auth_failure_key_bucket`). `check` raises
`Unavailable` only under fail-closed (or from a bare `RedisRateLimiter`).

Usage (`UsageMeter` port): `LocalUsageMeter(clock)` or
`RedisUsageMeter(redis, clock)`; `await meter.record(org, project, env,
method=..., rate_limited=..., memories_written=..., bytes_stored=...)` and
`await meter.read(org, project|None, env|None, start, end)`; `close()` at
shutdown.

Revocation (`RevocationBus` port): `LocalRevocationBus()` or
`RedisRevocationBus(redis)`; `await bus.start(cache.evict,
on_resubscribed=cache.clear)` at start-up, `await bus.publish(key_id)` after a
revocation or rotation, `close()` at shutdown.
"""

from __future__ import annotations

from memoryd.ratelimit.failover import FailoverRateLimiter, FailurePolicy
from memoryd.ratelimit.gcra import (
    Decision,
    Limit,
    api_key_bucket,
    auth_failure_key_bucket,
    auth_failure_peer_bucket,
    is_org_key_bucket,
    org_key_bucket,
    project_bucket,
)
from memoryd.ratelimit.limiter import LocalRateLimiter, RateLimiter
from memoryd.ratelimit.redis_limiter import RedisRateLimiter
from memoryd.ratelimit.revocation import LocalRevocationBus, RedisRevocationBus, RevocationBus
from memoryd.ratelimit.usage import (
    LocalUsageMeter,
    RedisUsageMeter,
    UsageMeter,
)

__all__ = [
    "Decision",
    "FailoverRateLimiter",
    "FailurePolicy",
    "Limit",
    "LocalRateLimiter",
    "LocalRevocationBus",
    "LocalUsageMeter",
    "RateLimiter",
    "RedisRateLimiter",
    "RedisRevocationBus",
    "RedisUsageMeter",
    "RevocationBus",
    "UsageMeter",
    "api_key_bucket",
    "auth_failure_key_bucket",
    "auth_failure_peer_bucket",
    "is_org_key_bucket",
    "org_key_bucket",
    "project_bucket",
]
