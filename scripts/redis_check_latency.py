#!/usr/bin/env python3
"""Measure the latency of one Redis rate-limit check while the machine is busy.

Usage: redis_check_latency.py [REDIS_URL] [--clients N] [--checks N] [--burners N]

Runs `--clients` concurrent asyncio clients, each doing real
`RedisRateLimiter.check` calls (the GCRA script, two buckets, as a data key's
call does) until `--checks` have completed, while `--burners` other processes
spin the CPU. It prints the latency percentiles of one check as the server's
event loop sees them (send → reply handled), which is what
MEMORYD_REDIS_TIMEOUT_MS must cover: event-loop delay on a busy machine
counts, not only Redis' own time. A phase without burners runs first, for
comparison. Keys live under a unique prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
import uuid

from memoryd.ratelimit import Limit, RedisRateLimiter, api_key_bucket, project_bucket
from memoryd.storage.redis import make_redis


def _burn(stop_at: float) -> None:
    x = 0
    while time.monotonic() < stop_at:
        x = (x * 31 + 7) % 1_000_003


async def _measure(url: str, clients: int, checks: int) -> list[float]:
    redis = make_redis(url, 5.0)
    prefix = f"memoryd-latency:{uuid.uuid4().hex}:"
    limiter = RedisRateLimiter(redis, timeout_s=5.0, key_prefix=prefix)
    latencies: list[float] = []
    try:
        remaining = checks

        async def client(i: int) -> None:
            nonlocal remaining
            check = [
                (api_key_bucket(f"p{i % 8}", f"k{i}"), Limit(1e5, 10**5)),
                (project_bucket(f"p{i % 8}"), Limit(1e5, 10**5)),
            ]
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                await limiter.check(check)
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(client(i) for i in range(clients)))
    finally:
        keys = [key async for key in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    return latencies


def _report(label: str, latencies: list[float], wall_s: float) -> None:
    ms = sorted(x * 1000 for x in latencies)
    q = statistics.quantiles(ms, n=1000)
    print(
        f"{label}: {len(ms)} checks in {wall_s:.1f} s ({len(ms) / wall_s:.0f}/s); "
        f"p50 {q[499]:.2f} ms, p90 {q[899]:.2f} ms, p99 {q[989]:.2f} ms, "
        f"p99.9 {q[998]:.2f} ms, max {ms[-1]:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--burners", type=int, default=multiprocessing.cpu_count())
    args = parser.parse_args()

    started = time.perf_counter()
    idle = asyncio.run(_measure(args.url, args.clients, args.checks))
    _report("without burners", idle, time.perf_counter() - started)

    stop_at = time.monotonic() + 600
    burners = [
        multiprocessing.Process(target=_burn, args=(stop_at,), daemon=True)
        for _ in range(args.burners)
    ]
    for p in burners:
        p.start()
    try:
        time.sleep(0.5)  # let the burners take the cores
        started = time.perf_counter()
        busy = asyncio.run(_measure(args.url, args.clients, args.checks))
        _report(f"with {args.burners} CPU burners", busy, time.perf_counter() - started)
    finally:
        for p in burners:
            p.terminate()
            p.join()


if __name__ == "__main__":
    main()
