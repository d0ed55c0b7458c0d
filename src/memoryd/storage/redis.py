"""Construction of the Redis client shared by the limiter, usage meter and
revocation bus.

The client is built for a hot path that must fail fast: socket connect and
read timeouts equal the per-operation budget, and redis-py's own retries are
off (its default retries with backoff would stack one timeout into seconds;
callers that want a second attempt decide so themselves). hiredis is used by
redis-py automatically when installed, which `redis[hiredis]` ensures.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.utils import HIREDIS_AVAILABLE

_log = logging.getLogger(__name__)


def make_redis(
    url: str,
    timeout_s: float,
    *,
    max_connections: int | None = None,
    client_name: str = "memoryd",
) -> Redis:
    """A `redis.asyncio.Redis` for `url` (redis://, rediss:// or unix://).

    Every socket connect and read gives up after `timeout_s` and raises
    `redis.exceptions.TimeoutError`/`ConnectionError`; nothing is retried.
    Responses are bytes (`decode_responses=False`). No I/O happens here: the
    first command connects. The caller owns the client and must `aclose()` it.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if not HIREDIS_AVAILABLE:
        _log.warning("hiredis is not installed: Redis replies are parsed in pure Python")
    client: Redis = Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
        decode_responses=False,
        health_check_interval=0,
        client_name=client_name,
        max_connections=max_connections,
    )
    return client
