"""The Redis rate-limiter backend: GCRA in one Lua script, shared by replicas.

One check is one round trip: EVALSHA of a script that reads every bucket,
decides, and writes all of them or none (Redis runs a script atomically).
The script is loaded lazily: its SHA1 is computed here, so the first call is
already an EVALSHA, and a NOSCRIPT reply (Redis restarted, SCRIPT FLUSH,
failover to a replica that never saw it) loads it again and retries once.

Time comes from Redis (`TIME` inside the script), so replicas whose clocks
disagree still share one timeline. A bucket's key holds its TAT (seconds,
printed with 17 significant digits so it round-trips exactly) and expires
when the bucket is full again, so idle buckets cost Redis nothing.

Keys are `<prefix><bucket name>`, e.g. `memoryd:rl:{p:proj_1}key:k_1`. The
hash tag comes from the bucket name (see `gcra.project_bucket` and friends),
never from the prefix, so every bucket of one check lives in one Redis
Cluster slot and the multi-key script runs unchanged there.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from memoryd.domain.errors import Unavailable
from memoryd.ratelimit.gcra import Decision, Limit, validate_checks

# KEYS: the buckets. ARGV[1]: cost; ARGV[2i], ARGV[2i+1]: emission interval (s)
# and burst of KEYS[i]. Returns {allowed 0|1, index of the deciding bucket,
# remaining, reset_after_s, retry_after_s}; the two durations are strings
# because Redis truncates Lua numbers to integers in replies.
# Mirrors memoryd.ratelimit.gcra.gcra and most_restrictive exactly.
GCRA_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local cost = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local eps = 1e-9
local new_tats = {}
local all_allowed = true
local pick, pick_allowed, pick_remaining, pick_reset, pick_retry
for i = 1, #KEYS do
  local t = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tau = burst * t
  local base = now
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat and tat > now then base = tat end
  local allow_at = base + math.min(cost, burst) * t - tau
  local allowed, remaining, reset, retry
  if allow_at <= now + eps then
    local new_tat = base + cost * t
    new_tats[i] = new_tat
    allowed, reset, retry = true, new_tat - now, 0
    remaining = math.floor((tau - (new_tat - now)) / t + 1e-6)
  else
    all_allowed = false
    allowed, reset, retry = false, base - now, allow_at - now
    remaining = math.floor((tau - (base - now)) / t + 1e-6)
  end
  if remaining < 0 then remaining = 0 end
  local better
  if pick == nil then
    better = true
  elseif allowed ~= pick_allowed then
    better = not allowed
  elseif not allowed then
    better = retry > pick_retry
  else
    better = remaining < pick_remaining or (remaining == pick_remaining and reset > pick_reset)
  end
  if better then
    pick, pick_allowed, pick_remaining, pick_reset, pick_retry = i, allowed, remaining, reset, retry
  end
end
if all_allowed then
  for i = 1, #KEYS do
    local ttl_ms = math.ceil((new_tats[i] - now) * 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.17g', new_tats[i]), 'PX', ttl_ms)
  end
end
return {pick_allowed and 1 or 0, pick, pick_remaining,
        string.format('%.17g', pick_reset), string.format('%.17g', pick_retry)}
"""

GCRA_SHA = hashlib.sha1(GCRA_LUA.encode()).hexdigest()


class RedisRateLimiter:
    """GCRA buckets in Redis, shared by every replica that uses the same Redis.

    `redis` should come from `memoryd.storage.redis.make_redis` (no retries,
    socket timeouts). Each `check` is bounded by `timeout_s` as a whole,
    including a NOSCRIPT reload; on timeout or any Redis error it raises
    `Unavailable` (wrap this limiter in `FailoverRateLimiter` to fail open).
    `key_prefix` namespaces the keys (tests use a unique one) and must not
    contain a hash tag.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        timeout_s: float = 0.05,
        key_prefix: str = "memoryd:rl:",
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain a hash tag: bucket names carry it")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._redis = redis
        self._timeout_s = timeout_s
        self._prefix = key_prefix
        self.script_loads = 0
        """How many times the script was (re)loaded after NOSCRIPT (exported as
        `memoryd_rate_limit_script_loads`)."""

    @property
    def backend_name(self) -> str:
        return "redis"

    @property
    def key_prefix(self) -> str:
        return self._prefix

    async def check(self, checks: Sequence[tuple[str, Limit]], cost: int = 1) -> Decision:
        validate_checks(checks, cost)
        keys = [self._prefix + name for name, _ in checks]
        args: list[str | int] = [cost]
        for _, limit in checks:
            args.append(repr(limit.emission_interval_s))
            args.append(limit.burst)
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await self._run(keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(
                f"the rate-limit backend (Redis) did not answer: {type(exc).__name__}; "
                "retry shortly",
                reason="RATE_LIMITER_UNAVAILABLE",
            ) from exc
        allowed, index, remaining, reset_after, retry_after = reply
        return Decision(
            allowed=bool(int(allowed)),
            limit=checks[int(index) - 1][1].burst,
            remaining=int(remaining),
            reset_after_s=max(0.0, float(reset_after)),
            retry_after_s=max(0.0, float(retry_after)),
        )

    async def _run(self, keys: list[str], args: list[str | int]) -> list[bytes | int]:
        try:
            reply: list[bytes | int] = await self._redis.evalsha(GCRA_SHA, len(keys), *keys, *args)
        except NoScriptError:
            # Redis lost its script cache; load it and try exactly once more.
            await self._redis.script_load(GCRA_LUA)
            self.script_loads += 1
            reply = await self._redis.evalsha(GCRA_SHA, len(keys), *keys, *args)
        return reply
