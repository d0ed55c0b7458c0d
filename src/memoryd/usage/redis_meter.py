"""The Redis usage meter: counters summed over every replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, date, timedelta
from urllib.parse import quote, unquote

from redis.asyncio import Redis
from redis.exceptions import RedisError

from memoryd.domain.clock import Clock
from memoryd.domain.control import UsageRecord
from memoryd.domain.errors import Unavailable
from memoryd.usage.counters import (
    DEFAULT_RETENTION_DAYS,
    CounterKey,
    add_to,
    check_range,
    increments,
    sort_key,
    to_record,
)

_log = logging.getLogger(__name__)


def _days(start: date, end: date) -> Iterable[date]:
    for offset in range((end - start).days + 1):
        yield start + timedelta(days=offset)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisUsageMeter:
    """Usage counters in Redis, summed over every replica.

    Layout (ids are percent-encoded; the org is the hash tag, so one org's
    keys share a Redis Cluster slot):

    - `<prefix>{<org>}:<YYYY-MM-DD>:<project>:<env>`: a hash of counters
      (`calls`, `m:<method>`, `memories_written`, `bytes_stored`,
      `rate_limited_calls`), expiring `retention_days` after its last write;
    - `<prefix>{<org>}:index`: the set of `<project>:<env>` pairs the org
      ever recorded, so `read` finds every hash without SCAN.

    `record` only adds to in-process counters; a background task (started by
    the first `record`) writes them every `flush_interval_s`, or sooner when
    `flush_threshold` keys are pending, in one MULTI/EXEC. If Redis fails,
    the counts stay pending and are retried (logged once per outage); an
    answer lost after EXEC was sent may then count a batch twice
    (at-least-once). Only beyond `max_pending_keys` are counts dropped, and
    then counted in `dropped_keys` and logged; failed writes are counted in
    `flush_failures` (both exported as `memoryd_usage_*` metrics). `read`
    first writes this replica's pending counts, so other replicas lag by one
    flush interval at most. `close` stops the task and writes what is pending.
    """

    def __init__(
        self,
        redis: Redis,
        clock: Clock,
        *,
        key_prefix: str = "memoryd:usage:",
        flush_interval_s: float = 1.0,
        flush_threshold: int = 1_000,
        max_pending_keys: int = 100_000,
        timeout_s: float = 2.0,
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain a hash tag")
        self._redis = redis
        self._clock = clock
        self._prefix = key_prefix
        self._flush_interval_s = flush_interval_s
        self._flush_threshold = flush_threshold
        self._max_pending_keys = max_pending_keys
        self._timeout_s = timeout_s
        self._retention_days = retention_days
        self._pending: dict[CounterKey, Counter[str]] = {}
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failing = False
        self.flush_failures = 0
        self.dropped_keys = 0
        self._drop_logged = False

    def record(
        self,
        org_id: str,
        project_id: str,
        environment_id: str,
        *,
        method: str | None = None,
        rate_limited: bool = False,
        memories_written: int = 0,
        bytes_stored: int = 0,
    ) -> None:
        delta = increments(method, rate_limited, memories_written, bytes_stored)
        if not delta:
            return
        if self._closed:
            _log.warning("usage recorded after the meter was closed; dropped")
            return
        today = self._clock.now().astimezone(UTC).date()
        key = (org_id, project_id, environment_id, today)
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= self._max_pending_keys:
                self._drop(1)
                return
            pending = self._pending[key] = Counter()
        add_to(pending, delta)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._flush_loop(), name="memoryd-usage-flush"
            )
        if len(self._pending) >= self._flush_threshold:
            self._wake.set()

    @property
    def pending_keys(self) -> int:
        """How many (org, project, env, day) counters wait to be written."""
        return len(self._pending)

    async def flush(self) -> None:
        """Write the pending counts now. Raises `Unavailable` when Redis fails
        (the counts then stay pending)."""
        async with self._flush_lock:
            batch, self._pending = self._pending, {}
            if not batch:
                return
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._write(batch)
            except BaseException as exc:
                # Whatever stopped the write (Redis, a bug, cancellation at
                # shutdown), the counts go back to pending rather than vanish.
                self._restore(batch)
                if not isinstance(exc, RedisError | OSError | TimeoutError):
                    raise
                self.flush_failures += 1
                if not self._failing:
                    self._failing = True
                    _log.warning(
                        "usage counters could not be written to Redis (%s); "
                        "keeping %d pending and retrying",
                        type(exc).__name__,
                        len(self._pending),
                    )
                raise Unavailable(
                    "usage counters are unavailable (Redis did not answer); retry shortly",
                    reason="USAGE_BACKEND_UNAVAILABLE",
                ) from exc
            if self._failing:
                self._failing = False
                self._drop_logged = False
                _log.info("usage counters are written to Redis again")

    async def read(
        self,
        org_id: str,
        project_id: str | None,
        environment_id: str | None,
        start: date,
        end: date,
    ) -> list[UsageRecord]:
        check_range(start, end, self._retention_days)
        await self.flush()
        tag = self._tag(org_id)
        try:
            async with asyncio.timeout(self._timeout_s):
                members = await self._redis.smembers(tag + ":index")
                pairs = sorted(
                    (unquote(p), unquote(e))
                    for p, _, e in (_text(m).partition(":") for m in members)
                )
                wanted = [
                    (project, env, day)
                    for day in _days(start, end)
                    for project, env in pairs
                    if (project_id is None or project == project_id)
                    and (environment_id is None or env == environment_id)
                ]
                pipe = self._redis.pipeline(transaction=False)
                for project, env, day in wanted:
                    pipe.hgetall(self._hash_key(tag, project, env, day))
                hashes: list[dict[bytes, bytes]] = await pipe.execute() if wanted else []
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(
                "usage counters are unavailable (Redis did not answer); retry shortly",
                reason="USAGE_BACKEND_UNAVAILABLE",
            ) from exc
        records = [
            to_record(project, env, day, {_text(k): int(v) for k, v in fields.items()})
            for (project, env, day), fields in zip(wanted, hashes, strict=True)
            if fields
        ]
        return sorted(records, key=sort_key)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending:
            try:
                await self.flush()
            except Unavailable:
                _log.error("usage counters of %d keys were lost at shutdown", len(self._pending))

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            with contextlib.suppress(Unavailable):
                await self.flush()

    async def _write(self, batch: Mapping[CounterKey, Counter[str]]) -> None:
        ttl_s = self._retention_days * 86_400
        pipe = self._redis.pipeline(transaction=True)
        indexes: set[str] = set()
        for (org, project, env, day), fields in batch.items():
            tag = self._tag(org)
            key = self._hash_key(tag, project, env, day)
            for name, count in fields.items():
                if count:
                    pipe.hincrby(key, name, count)
            pipe.expire(key, ttl_s)
            pipe.sadd(tag + ":index", f"{quote(project, safe='')}:{quote(env, safe='')}")
            indexes.add(tag + ":index")
        for index in indexes:
            pipe.expire(index, ttl_s)
        await pipe.execute()

    def _restore(self, batch: Mapping[CounterKey, Counter[str]]) -> None:
        for key, fields in batch.items():
            pending = self._pending.get(key)
            if pending is None:
                if len(self._pending) >= self._max_pending_keys:
                    self._drop(1)
                    continue
                pending = self._pending[key] = Counter()
            pending.update(fields)

    def _drop(self, keys: int) -> None:
        if not self._drop_logged:
            # Once per outage: every drop would flood the log.
            self._drop_logged = True
            _log.error(
                "usage counters dropped: more than %d keys pending while Redis fails",
                self._max_pending_keys,
            )
        self.dropped_keys += keys

    def _tag(self, org_id: str) -> str:
        return f"{self._prefix}{{{quote(org_id, safe='')}}}"

    @staticmethod
    def _hash_key(tag: str, project_id: str, environment_id: str, day: date) -> str:
        return (
            f"{tag}:{day.isoformat()}:{quote(project_id, safe='')}:{quote(environment_id, safe='')}"
        )
