"""The Redis rate-limiter backend: GCRA in one Lua script, shared by replicas.

A check reads every one of its buckets, decides, and writes all of them or
none, inside a script (Redis runs a script atomically). Concurrent checks
share round trips: a check made while another round trip is in flight
waits for it to end, then goes out with every other check that arrived
meanwhile, in arrival order. The checks of one round trip whose buckets
live in one Redis Cluster slot (one project's) go as one EVALSHA that runs
them one after the other, so the decisions are exactly those of separate
calls; checks of other slots go as EVALSHAs of their own in the same
pipeline. When checks come more often than one per `coalesce_s` (1 ms, a
moving average), that batch waits `coalesce_s` more for the ones that
follow; a lone check, with nothing in flight, goes out at once, and a
caller's next check never waits for its previous round trip. redis-py's
own per-command work is most of a check's CPU (~130 µs alone, ~25-40 µs
in a pipeline of 8 to 64, 22-31 µs in one EVALSHA of 8 to 32), so under
load this lifted authenticated calls with the Redis limiter from 1,910 to
2,600 req/s (docs/performance.md).

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
from memoryd.ratelimit.gcra import Decision, Limit, hash_tag, validate_checks

# Every check of one round trip that lives in one Redis Cluster slot goes
# to Redis as one EVALSHA of this script, which runs them in order.
# ARGV[1]: how many checks; then for each check: its number of buckets n,
# its cost, and the emission interval (s) and burst of each of its n
# buckets. KEYS: every check's buckets, in the same order. Returns one reply
# per check: {allowed 0|1, index of the deciding bucket, remaining,
# reset_after_s, retry_after_s}; the two durations are strings because Redis
# truncates Lua numbers to integers in replies. The checks share one TIME
# and each sees the buckets as the checks before it left them, as separate
# calls made at that instant would.
# Mirrors memoryd.ratelimit.gcra.gcra and most_restrictive exactly.
GCRA_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local eps = 1e-9
local replies = {}
local k, a = 0, 2
for c = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  local cost = tonumber(ARGV[a + 1])
  local new_tats = {}
  local all_allowed = true
  local pick, pick_allowed, pick_remaining, pick_reset, pick_retry
  for i = 1, n do
    local t = tonumber(ARGV[a + 2 * i])
    local burst = tonumber(ARGV[a + 2 * i + 1])
    local tau = burst * t
    local base = now
    local tat = tonumber(redis.call('GET', KEYS[k + i]))
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
      pick, pick_allowed, pick_remaining = i, allowed, remaining
      pick_reset, pick_retry = reset, retry
    end
  end
  if all_allowed then
    for i = 1, n do
      local ttl_ms = math.ceil((new_tats[i] - now) * 1000) + 1
      redis.call('SET', KEYS[k + i], string.format('%.17g', new_tats[i]), 'PX', ttl_ms)
    end
  end
  replies[c] = {pick_allowed and 1 or 0, pick, pick_remaining,
                string.format('%.17g', pick_reset), string.format('%.17g', pick_retry)}
  k = k + n
  a = a + 2 + 2 * n
end
return replies
"""

GCRA_SHA = hashlib.sha1(GCRA_LUA.encode()).hexdigest()

# weight of the latest gap between two checks in their moving average
_GAP_WEIGHT = 0.1

# the script's reply to one check
_Reply = list[bytes | int]
# one check waiting for its round trip: its keys, its arguments, its reply
_Pending = tuple[list[str], list[str | int], "asyncio.Future[_Reply]"]


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
        coalesce_s: float = 0.001,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain a hash tag: bucket names carry it")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._redis = redis
        self._timeout_s = timeout_s
        self._prefix = key_prefix
        self._coalesce_s = coalesce_s
        # moving average of the time between checks (seconds)
        self._gap = 1.0
        self._last_check = 0.0
        self._pending: list[_Pending] = []
        self._sending = False  # a round trip is scheduled or in flight
        self._in_flight: set[asyncio.Task[None]] = set()  # kept until done
        self.round_trips = 0
        """How many round trips the checks took (fewer than checks under load)."""
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
        args: list[str | int] = [len(checks), cost]
        for _, limit in checks:
            args.append(repr(limit.emission_interval_s))
            args.append(limit.burst)
        loop = asyncio.get_running_loop()
        now = loop.time()
        # (a gap counts as 1 s at most: after an idle spell, or at the first
        # check, the average comes back down within tens of checks)
        self._gap += (min(now - self._last_check, 1.0) - self._gap) * _GAP_WEIGHT
        self._last_check = now
        reply = loop.create_future()
        self._pending.append((keys, args, reply))
        if not self._sending:
            self._sending = True
            loop.call_soon(self._send_pending)
        try:
            async with asyncio.timeout(self._timeout_s):
                allowed, index, remaining, reset_after, retry_after = await reply
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(
                f"the rate-limit backend (Redis) did not answer: {type(exc).__name__}; "
                "retry shortly",
                reason="RATE_LIMITER_UNAVAILABLE",
            ) from exc
        return Decision(
            allowed=bool(int(allowed)),
            limit=checks[int(index) - 1][1].burst,
            remaining=int(remaining),
            reset_after_s=max(0.0, float(reset_after)),
            retry_after_s=max(0.0, float(retry_after)),
        )

    def _send_pending(self) -> None:
        """Sends every pending check in one round trip, in a task; when its
        answers are in, the checks that arrived meanwhile go out the same way."""
        # checks whose callers gave up waiting (timed out) are not sent
        batch = [p for p in self._pending if not p[2].done()]
        self._pending = []
        if not batch:
            self._sending = False
            return
        self.round_trips += 1
        task = asyncio.get_running_loop().create_task(self._round_trip(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _send_next(self) -> None:
        """After a round trip's answers came in (before its callers resume,
        so a caller's next check starts a round trip of its own at once):
        the checks that arrived during it go out now, or, when checks come
        more often than one per `coalesce_s`, that much later, with the
        ones that come meanwhile."""
        if not self._pending:
            self._sending = False
        elif self._gap < self._coalesce_s:
            asyncio.get_running_loop().call_later(self._coalesce_s, self._send_pending)
        else:
            asyncio.get_running_loop().call_soon(self._send_pending)

    async def _round_trip(self, batch: list[_Pending]) -> None:
        """Runs `batch` (bounded by the timeout as a whole, a NOSCRIPT reload
        included) and settles each check's future with its reply or error."""
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = await self._run(batch)
        except (RedisError, OSError, TimeoutError) as exc:
            replies = [exc] * len(batch)
        except BaseException as exc:  # cancelled (the server stopping): no check hangs
            self._send_next()
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(RedisError(f"the round trip ended: {exc!r}"))
            raise
        self._send_next()
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _run(self, batch: list[_Pending]) -> list[_Reply | BaseException]:
        """One reply (or error) per check of `batch`, in order: one EVALSHA
        per Redis Cluster slot, all of them in one round trip."""
        groups = _slot_groups(batch)
        calls = [_script_call(batch, group) for group in groups]
        answers = await self._send(calls)
        missing = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
        if missing:
            # Redis lost its script cache: load it and send exactly those
            # calls once more (the others ran and must not be charged twice).
            await self._redis.script_load(GCRA_LUA)
            self.script_loads += 1
            again = await self._send([calls[i] for i in missing])
            for i, answer in zip(missing, again, strict=True):
                answers[i] = answer
        replies: list[_Reply | BaseException] = [RedisError("no reply")] * len(batch)
        for group, answer in zip(groups, answers, strict=True):
            if isinstance(answer, BaseException):
                for index in group:
                    replies[index] = answer
            else:
                for index, reply in zip(group, answer, strict=True):
                    replies[index] = reply
        return replies

    async def _send(
        self, calls: list[tuple[list[str], list[str | int]]]
    ) -> list[list[_Reply] | BaseException]:
        """The script's answer (or error) to each call, in one round trip."""
        if len(calls) == 1:  # one slot: no pipeline to build
            keys, args = calls[0]
            try:
                answer: list[_Reply] = await self._redis.evalsha(GCRA_SHA, len(keys), *keys, *args)
            except NoScriptError as exc:
                return [exc]
            return [answer]
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(GCRA_SHA, len(keys), *keys, *args)
        answers: list[list[_Reply] | BaseException] = await pipe.execute(raise_on_error=False)
        return answers


def _slot_groups(batch: list[_Pending]) -> list[list[int]]:
    """The positions of `batch`'s checks, grouped by the Redis Cluster slot
    of their buckets (every bucket of one check shares its hash tag), each
    group in arrival order."""
    groups: dict[str, list[int]] = {}
    for i, (keys, _, _) in enumerate(batch):
        groups.setdefault(_slot_key(keys[0]), []).append(i)
    return list(groups.values())


def _slot_key(key: str) -> str:
    """What Redis Cluster hashes `key` by: its hash tag (`gcra.hash_tag`,
    Redis's own rule), else the whole key."""
    return hash_tag(key) or key


def _script_call(batch: list[_Pending], group: list[int]) -> tuple[list[str], list[str | int]]:
    """The keys and arguments of one EVALSHA that runs `group`'s checks."""
    keys: list[str] = []
    args: list[str | int] = [len(group)]
    for i in group:
        keys += batch[i][0]
        args += batch[i][1]
    return keys, args
