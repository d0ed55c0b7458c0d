"""Usage metering: what GetUsage reports (the domain's `UsageSource` port).

`LocalUsageMeter(clock)` (embedded mode: one replica, lost on restart) or
`RedisUsageMeter(redis, clock)` (summed over every replica); both implement
`UsageMeter`: `meter.record(org, project, env, method=...,
rate_limited=..., memories_written=..., bytes_stored=...)` and `await
meter.read(org, project|None, env|None, start, end)`; `close()` at shutdown.
`record` is on the hot path and never does I/O itself: the Redis meter adds
to in-process counters that a background task writes in one MULTI/EXEC per
`flush_interval_s`; the local meter just keeps them. `UsageRecorder` counts
each authenticated call for the call pipeline, `WriteRecorder` the memories
written for the memory service.

The Redis meter lives here, not in `memoryd.storage`: its key layout and
write batching are this subsystem's logic, as the GCRA script is the rate
limiter's (`memoryd.ratelimit.redis_limiter`).
"""

from __future__ import annotations

from memoryd.usage.counters import UsageMeter
from memoryd.usage.local import LocalUsageMeter
from memoryd.usage.recorder import UsageRecorder, WriteRecorder
from memoryd.usage.redis_meter import RedisUsageMeter

__all__ = ["LocalUsageMeter", "RedisUsageMeter", "UsageMeter", "UsageRecorder", "WriteRecorder"]
