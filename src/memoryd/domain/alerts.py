"""Alerts: a quota threshold crossed, or sustained rate limiting, as an
event of its own in the change log of the environment where it happened,
so that webhooks naming its type receive it (signed and retried like any
delivery). WatchMemories never streams them: a watcher asks for memory
events.

Quota thresholds: 80% and 100% of an environment's memory quota
(`max_memories_per_environment`), checked against the count the quota
check itself keeps (no extra query); and of a project's daily model
tokens (`llm_tokens_per_day`), checked by the AddMessages job after each
model call, raised in the environment of the operation that made the call
(each environment whose operations go on past the threshold hears it
once). An alert is raised once per crossing: a threshold raised stays
raised until the usage falls below it by `rearm_percent` points of the
limit (hysteresis: a count that wobbles around 80% alerts once), then it
is armed again (the day's tokens start again from 0, so the first model
call of a new day re-arms the token alerts).

Sustained rate limiting: an environment's calls refused by the rate
limiter (its key's or its project's bucket) for `rate_limited_s` seconds,
with no gap of `quiet_s` or more between two refusals, is one alert; the
next is possible after a quiet spell of `quiet_s` without refusals.
Episodes are followed per process, on the injected clock.

Whether an alert is raised is kept in the control store (`AlertStore`),
per (project, environment, resource, threshold), and raising it appends
its event in the same transaction: replicas and restarts never repeat
one, and a crash never loses one that was marked. None of this is on the
path of the call that crossed the threshold: the monitor decides in
memory and hands the store work to one background task; a failure is
logged and never reaches the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from memoryd.domain.changes import ChangeEvent, EventType, NewEvent
from memoryd.domain.clock import Clock
from memoryd.domain.tenancy import Tenant

log = logging.getLogger("memoryd.alerts")

# Percentages of a quota that raise an alert.
THRESHOLDS = (80, 100)
# Store work waiting for the background task, at most this much (more is
# dropped with a warning: alerts never hold memory without bound).
MAX_PENDING = 10_000


class Resource(enum.Enum):
    MEMORIES = "memories"  # memories of an environment, against max_memories_per_environment
    LLM_TOKENS = "llm_tokens"  # a project's model tokens today (UTC), against llm_tokens_per_day
    RATE_LIMIT = "rate_limit"  # calls refused by the rate limiter


@dataclass(frozen=True)
class AlertKey:
    """What is raised once: a resource's threshold (percent; 0 for rate
    limiting) in one environment (the tenant names no end user)."""

    tenant: Tenant
    resource: Resource
    threshold: int


class AlertStore(Protocol):
    """Whether each alert is raised (the control store). Raises
    `Unavailable` when the database cannot be reached."""

    async def raise_alert(self, key: AlertKey, event: NewEvent) -> ChangeEvent | None:
        """In one transaction: marks `key` raised unless it is, and then
        appends `event` to the change log; None (nothing appended) when it
        was raised already, by this process or another."""
        ...

    async def rearm_alert(self, key: AlertKey, now: datetime) -> None:
        """Marks `key` armed: the next crossing raises it again."""
        ...


@dataclass
class _Episode:
    """One environment's run of refused calls (monotonic seconds)."""

    first: float
    last: float
    alerted: bool = False


class AlertMonitor:
    """Turns what the quota check and the rate limiter see into alerts (see
    the module). `quota` and `rate_limited` are cheap, synchronous and never
    raise; `on_append` (the wake-up of watchers and webhook senders) sees
    each alert appended."""

    def __init__(
        self,
        store: AlertStore,
        clock: Clock,
        *,
        rearm_percent: float = 5.0,
        rate_limited_s: float = 60.0,
        quiet_s: float = 120.0,
        on_append: Callable[[Sequence[ChangeEvent]], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._rearm = rearm_percent
        self._rate_limited_s = rate_limited_s
        self._quiet_s = quiet_s
        self._on_append = on_append
        # what this process last decided per key: True raised, False armed
        self._raised: dict[AlertKey, bool] = {}
        self._episodes: dict[str, _Episode] = {}
        self._pending: list[tuple[AlertKey, NewEvent | None]] = []
        self._worker: asyncio.Task[None] | None = None

    # --- what the calls report --------------------------------------------------------

    def quota(
        self, tenant: Tenant, resource: Resource, used: int, limit: int, *, exact: bool = True
    ) -> None:
        """`tenant`'s environment uses `used` of `limit` units of `resource`;
        not `exact`: `used` may miss other replicas' use (it may raise an
        alert, never re-arm one)."""
        if limit <= 0:
            return
        env = _environment(tenant)
        for threshold in THRESHOLDS:
            key = AlertKey(env, resource, threshold)
            percent = 100.0 * used / limit
            if percent >= threshold:
                if self._raised.get(key) is not True:
                    self._raised[key] = True
                    details = {
                        "resource": resource.value,
                        "threshold_percent": threshold,
                        "used": used,
                        "limit": limit,
                    }
                    self._submit(key, self._event(EventType.QUOTA_REACHED, env, details))
            elif exact and percent < threshold - self._rearm and self._raised.get(key) is not False:
                self._raised[key] = False
                self._submit(key, None)

    def rate_limited(self, tenant: Tenant) -> None:
        """A call of `tenant`'s environment was refused by the rate limiter."""
        env = _environment(tenant)
        now = self._clock.monotonic()
        episode = self._episodes.get(env.key)
        key = AlertKey(env, Resource.RATE_LIMIT, 0)
        if episode is None or now - episode.last >= self._quiet_s:
            # a quiet spell ended the last episode: armed again. The first
            # episode this process sees does not re-arm: another replica
            # may have alerted it already
            if episode is not None:
                self._submit(key, None)
            episode = self._episodes[env.key] = _Episode(now, now)
        episode.last = now
        if not episode.alerted and now - episode.first >= self._rate_limited_s:
            episode.alerted = True
            details = {
                "resource": Resource.RATE_LIMIT.value,
                "refused_for_seconds": round(now - episode.first, 3),
            }
            self._submit(key, self._event(EventType.RATE_LIMITED, env, details))
        if len(self._episodes) > MAX_PENDING:  # forget the quiet ones
            for k in [k for k, e in self._episodes.items() if now - e.last >= self._quiet_s]:
                del self._episodes[k]

    # --- the background task ----------------------------------------------------------

    async def drain(self) -> None:
        """Waits until the store work handed over so far is done (tests)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.wait({self._worker})

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def _event(self, kind: EventType, env: Tenant, details: dict[str, Any]) -> NewEvent:
        return NewEvent(
            type=kind,
            tenant=env,
            memory_id="",
            time=self._clock.now(),
            details={**details, "environment_id": env.environment_id},
        )

    def _submit(self, key: AlertKey, event: NewEvent | None) -> None:
        if len(self._pending) >= MAX_PENDING:
            log.warning("alerts: too much pending work; an alert change was dropped")
            self._raised.pop(key, None)
            return
        self._pending.append((key, event))
        try:
            if self._worker is None or self._worker.done():
                self._worker = asyncio.get_running_loop().create_task(
                    self._work(), name="memoryd-alerts"
                )
        except RuntimeError:  # no event loop: nothing can be stored
            self._pending.clear()

    async def _work(self) -> None:
        while self._pending:
            key, event = self._pending.pop(0)
            await self._apply(key, event)

    async def _apply(self, key: AlertKey, event: NewEvent | None) -> None:
        try:
            if event is None:
                await self._store.rearm_alert(key, self._clock.now())
                return
            appended = await self._store.raise_alert(key, event)
        except Exception as err:  # an alert never fails anything; the next crossing tries again
            log.warning(
                "alerts: could not record %s %s of environment %s: %s",
                key.resource.value,
                key.threshold,
                key.tenant.environment_id,
                type(err).__name__,
            )
            self._raised.pop(key, None)
            return
        if appended is not None:
            log.info(
                "alert %s: %s of environment %s",
                appended.type.value,
                key.resource.value,
                key.tenant.environment_id,
            )
            if self._on_append is not None:
                self._on_append([appended])


def _environment(tenant: Tenant) -> Tenant:
    return Tenant(tenant.org_id, tenant.project_id, tenant.environment_id)
