"""The `auth` and `auth-redis` suites: health Check (no authentication)
against authenticated, rate-limited WhoAmI, on one server process, with the
in-process limiter (`auth`) or the Redis one (`auth-redis`)."""

from __future__ import annotations

import statistics
import time

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import ServerProcess, drive, h2load_checked, vars_of
from memoryd.config import Settings
from memoryd.ratelimit import Limit, RedisRateLimiter, api_key_bucket, project_bucket
from memoryd.storage.redis import make_redis
from memoryd.v1 import keys_pb2, keys_pb2_grpc

SUITES = ("auth", "auth-redis")


async def run_auth(settings: Settings, suite: str, seconds: float, concurrency: int) -> None:
    """Runs suite `auth` or `auth-redis` on a server started from `settings`
    with limits no call reaches, printing each figure as it comes."""
    redis_url = ""
    if suite == "auth-redis":
        redis_url = settings.redis_url or "redis://127.0.0.1:6379/0"
        print(
            f"one Redis rate-limit check: {await redis_check_us(redis_url):.0f} us "
            "(median of 5,000, sequential, from this process)",
            flush=True,
        )
    auth_settings = Settings(
        **{
            **vars_of(settings),
            "embedding_provider": "hashing",
            "embedding_dimension": 64,
            "redis_url": redis_url,
            # every call is checked by the limiter, none is refused
            "key_requests_per_second": 1e9,
            "key_burst": 1_000_000_000,
        }
    )
    backend = "Redis" if redis_url else "in-process"
    print(f"-- auth suite, rate limiter: {backend}", flush=True)
    async with ServerProcess(auth_settings) as server:
        for line in await auth_suite(server, seconds, concurrency):
            print(line, flush=True)


async def auth_suite(server: ServerProcess, seconds: float, concurrency: int) -> list[str]:
    lines: list[str] = []
    channel = aio.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    keys = keys_pb2_grpc.KeyServiceStub(channel)
    md = (("x-api-key", server.owner_key),)
    me = await keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=md)  # fails loudly if auth is broken
    assert me.key_id

    check = await drive(
        "health Check (python client)",
        lambda: health.Check(health_pb2.HealthCheckRequest()),
        seconds,
        concurrency,
    )
    whoami = await drive(
        "WhoAmI authenticated (python client)",
        lambda: keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=md),
        seconds,
        concurrency,
    )
    await channel.close(None)
    lines += [
        check.line(),
        whoami.line(),
        f"ratio WhoAmI/Check (python client): {whoami.rps / check.rps:.2f}",
    ]
    if whoami.errors or check.errors:
        lines.append("WARNING: errors during the run; the figures are not valid")

    # h2load: Check and WhoAmI take turns, so that the machine's drift falls
    # on both alike; each figure is the median of its turns
    turns = max(1, min(4, int(seconds // 2)))
    turn_s = max(1, int(seconds // turns))  # h2load counts whole seconds
    checks: list[tuple[float, int]] = []
    whos: list[tuple[float, int]] = []
    for _ in range(turns):
        h_check = h2load_checked(
            server,
            "/grpc.health.v1.Health/Check",
            health_pb2.HealthCheckRequest().SerializeToString(),
            {},
            turn_s,
        )
        h_who = h2load_checked(
            server,
            "/memoryd.v1.KeyService/WhoAmI",
            keys_pb2.WhoAmIRequest().SerializeToString(),
            {"x-api-key": server.owner_key},
            turn_s,
        )
        if h_check is None or h_who is None:
            break
        checks.append(h_check)
        whos.append(h_who)
    if checks and whos:
        check_rps = statistics.median(rps for rps, _ in checks)
        who_rps = statistics.median(rps for rps, _ in whos)
        per_turn = ", ".join(f"{w / c:.2f}" for (c, _), (w, _) in zip(checks, whos, strict=True))
        lines += [
            f"{'health Check (h2load, 4 conns x 32 streams)':<44} {check_rps:>9.0f} req/s   "
            f"(median of {turns} turns of {turn_s} s, taking turns with WhoAmI)",
            f"{'WhoAmI authenticated (h2load)':<44} {who_rps:>9.0f} req/s   "
            f"non-OK answers {sum(errors for _, errors in whos)}",
            f"ratio WhoAmI/Check (h2load): {who_rps / check_rps:.2f}   (per turn: {per_turn})",
        ]
    else:
        lines.append(
            "h2load not installed (apt-get install nghttp2-client): wire-level figures skipped"
        )
    return lines


async def redis_check_us(url: str) -> float:
    """Median microseconds of one RedisRateLimiter check (two buckets)."""
    redis = make_redis(url, 0.5)
    limiter = RedisRateLimiter(redis, timeout_s=0.5)
    checks = [
        (api_key_bucket("bench", "k"), Limit(1e9, 1_000_000_000)),
        (project_bucket("bench"), Limit(1e9, 1_000_000_000)),
    ]
    try:
        samples = []
        for _ in range(5000):
            t0 = time.perf_counter()
            await limiter.check(checks, 1)
            samples.append((time.perf_counter() - t0) * 1e6)
    finally:
        await redis.aclose()
    return sorted(samples)[len(samples) // 2]
