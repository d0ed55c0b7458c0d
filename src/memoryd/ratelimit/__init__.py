"""Rate limiting: GCRA buckets, the in-process and Redis backends, failover
between them, and admission of calls (`admission.py`).

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

The Redis backend lives here, not in `memoryd.storage`: its Lua script is
the GCRA math itself (it mirrors `gcra.py` exactly).
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

__all__ = [
    "Decision",
    "FailoverRateLimiter",
    "FailurePolicy",
    "Limit",
    "LocalRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "api_key_bucket",
    "auth_failure_key_bucket",
    "auth_failure_peer_bucket",
    "is_org_key_bucket",
    "org_key_bucket",
    "project_bucket",
]
