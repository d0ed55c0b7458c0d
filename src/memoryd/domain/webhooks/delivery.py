"""Delivering events to webhooks: the fan-out from the change log
(`Dispatcher`), one attempt of one delivery (`Courier`), and the retry
policy between attempts (`RetryPolicy`).

The loops that drive them, with their concurrency bounds, are
`memoryd.jobs.webhooks`; everything here is one step, so that tests drive
it with an injected clock.

Retries: a delivery that is not answered 2xx is tried again after an
exponential backoff with full jitter (a random delay between 0 and
`base_s * 2**(attempt-1)`, at most `max_s`), until its `expire_time` (the
policy's `max_age` after it was queued or redelivered): then it FAILED. A
webhook whose deliveries FAILED `disable_after` times in a row is disabled
by the server, with an audit event `webhook.disabled`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from memoryd.domain.audit import Auditor
from memoryd.domain.changes import ChangeLog
from memoryd.domain.clock import Clock
from memoryd.domain.ids import new_delivery_id
from memoryd.domain.webhooks.matching import plan
from memoryd.domain.webhooks.model import (
    Attempt,
    DeliveryClaim,
    DeliveryState,
    Disabled,
    Outcome,
    Sender,
    WebhookStore,
)
from memoryd.domain.webhooks.signing import delivery_headers

log = logging.getLogger("memoryd.webhooks")

AUDIT_DISABLED = "webhook.disabled"


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 5.0
    max_s: float = 3600.0
    max_age: timedelta = timedelta(hours=24)
    disable_after: int = 20

    def next_attempt(
        self,
        attempts: int,
        now: datetime,
        expire_time: datetime,
        uniform: Callable[[float, float], float],
    ) -> datetime | None:
        """When to try again after `attempts` failed attempts, or None to
        give up (the retry would come after `expire_time`)."""
        ceiling = min(self.max_s, self.base_s * 2.0 ** min(attempts - 1, 60))
        due = now + timedelta(seconds=uniform(0.0, ceiling))
        return due if due <= expire_time else None


class Dispatcher:
    """Turns change events into deliveries, a batch per `step`."""

    def __init__(
        self,
        store: WebhookStore,
        changes: ChangeLog,
        clock: Clock,
        policy: RetryPolicy,
        *,
        batch: int = 500,
    ) -> None:
        self._store = store
        self._changes = changes
        self._clock = clock
        self._policy = policy
        self._batch = batch

    async def step(self) -> int:
        """Fans out the next batch of events; answers how many it passed
        (0: the log has no more)."""
        now = self._clock.now()
        return await self._store.dispatch(
            lambda after: self._changes.read_all(after, self._batch),
            self._changes.last,
            lambda events, hooks: plan(events, hooks, now, self._policy.max_age, new_delivery_id),
        )


class Courier:
    """Makes attempts of claimed deliveries (`attempt`) and records them
    (`record`, many at a time: the senders of a process share one
    transaction per batch of finished attempts)."""

    def __init__(
        self,
        store: WebhookStore,
        sender: Sender,
        clock: Clock,
        policy: RetryPolicy,
        auditor: Auditor | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._clock = clock
        self._policy = policy
        self._auditor = auditor
        self._rng = rng or random.Random()

    async def attempt(self, claim: DeliveryClaim) -> Outcome:
        """POSTs the delivery, signed now, and says what follows: done, a
        retry, or given up. Records nothing (see `record`)."""
        started = self._clock.now()
        body = claim.payload.encode()
        headers = delivery_headers(claim.keys, claim.delivery_id, int(started.timestamp()), body)
        response = await self._sender.post(claim.url, body, headers)
        attempt = Attempt(started, response.status, response.latency_ms, response.error)
        if attempt.succeeded:
            return Outcome(claim, attempt, DeliveryState.SUCCEEDED)
        due = self._policy.next_attempt(
            claim.attempt, self._clock.now(), claim.expire_time, self._rng.uniform
        )
        state = DeliveryState.PENDING if due is not None else DeliveryState.FAILED
        return Outcome(claim, attempt, state, due)

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Records attempts (one transaction for all of them), and audits
        the webhooks their failures disabled."""
        for disabled in await self._store.record_attempts(outcomes, self._policy.disable_after):
            await self._disabled(disabled)

    async def deliver(self, claim: DeliveryClaim) -> Attempt:
        """One attempt, recorded on its own."""
        outcome = await self.attempt(claim)
        await self.record([outcome])
        return outcome.attempt

    async def _disabled(self, d: Disabled) -> None:
        log.warning(
            "webhook %s of environment %s disabled: %s",
            d.webhook_id,
            d.tenant.environment_id,
            d.reason,
        )
        if self._auditor is None:
            return
        details = {"consecutive_failures": str(d.failures)}
        if d.tenant.end_user_id:
            details["end_user_id"] = d.tenant.end_user_id
        await self._auditor.record_server_action(
            d.tenant.org_id,
            AUDIT_DISABLED,
            target=d.webhook_id,
            project_id=d.tenant.project_id,
            environment_id=d.tenant.environment_id,
            details=details,
        )
