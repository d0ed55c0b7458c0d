"""The webhook work of one server process: the fan-out from the change log
and the senders.

Each process runs one `WebhookRunner` with two loops:

- the dispatcher turns change events into deliveries (`Dispatcher.step`, a
  batch at a time, one replica at a time: the cursor row is locked), and
  looks again every `poll_interval_s` once the log is drained;
- the senders claim due deliveries under a lease and make one attempt of
  each (`Courier.attempt`), at most `workers` at once in the process and at
  most `per_webhook` of one webhook and `per_environment` of one
  environment, so that a slow endpoint, or a tenant's many slow endpoints,
  hold a few senders, never all of them. A claim skips webhooks and
  environments at their cap; deliveries claimed beyond their free places
  are given back at once.
  Finished attempts are recorded together (`GroupCommit`): one transaction
  per batch, not per attempt.

A lease is twice the attempt's timeout plus a margin: an attempt always
ends (the timeout covers it whole) before its lease runs out, and a
delivery leased by a process that died is due again once it has.

Nothing here is on the path of a write: a write appends to the change log
and returns; slow endpoints fill their own queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from memoryd.domain.clock import Clock
from memoryd.domain.errors import DomainError
from memoryd.domain.webhooks import Courier, DeliveryClaim, Dispatcher, Outcome, WebhookStore
from memoryd.jobs.runner import default_owner

log = logging.getLogger("memoryd.webhooks")

LEASE_MARGIN_S = 10.0
CLAIM_GAP_S = 0.1


class WebhookRunner:
    def __init__(
        self,
        dispatcher: Dispatcher,
        store: WebhookStore,
        courier: Courier,
        clock: Clock,
        *,
        owner: str = "",
        workers: int = 16,
        per_webhook: int = 4,
        per_environment: int = 8,
        timeout_s: float = 10.0,
        poll_interval_s: float = 1.0,
    ) -> None:
        self._dispatcher = dispatcher
        self._store = store
        self._courier = courier
        self._clock = clock
        self._owner = owner or default_owner()
        self._workers = workers
        self._per_webhook = per_webhook
        self._per_environment = per_environment
        self._lease_s = 2 * timeout_s + LEASE_MARGIN_S
        self._poll_s = poll_interval_s
        self._dispatch_wake = asyncio.Event()
        self._send_wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._by_webhook: Counter[str] = Counter()
        self._by_environment: Counter[str] = Counter()
        self._skipped = False  # the last claim left out webhooks or environments at their cap
        self._slot_freed = False
        self._loops: list[asyncio.Task[None]] = []
        self._records = GroupCommit(courier.record)
        # what this process did (metrics)
        self.counts: Counter[str] = Counter()

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._dispatch_loop(), name="memoryd-webhook-dispatcher"),
            asyncio.create_task(self._send_loop(), name="memoryd-webhook-senders"),
        ]

    def wake(self) -> None:
        """Look at the change log now (something was just written)."""
        self._dispatch_wake.set()

    async def stop(self) -> None:
        """Stops both loops and cancels attempts in flight: their deliveries
        keep their lease until it runs out, then any replica sends them."""
        for t in self._loops:
            t.cancel()
        for t in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        tasks = list(self._running)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self._records.close()

    # --- one step each (tests drive the runner with these) ----------------------------

    async def dispatch_once(self) -> int:
        """Fans out the events the log holds now; answers how many."""
        total = 0
        while True:
            passed = await self._dispatcher.step()
            total += passed
            if passed == 0:
                return total
            self._send_wake.set()

    async def send_once(self) -> int:
        """Claims due deliveries for the free senders and starts them;
        answers how many it started."""
        free = self._workers - len(self._running)
        if free <= 0:
            return 0
        capped = [w for w, n in self._by_webhook.items() if n >= self._per_webhook]
        crowded = [e for e, n in self._by_environment.items() if n >= self._per_environment]
        self._skipped = bool(capped or crowded)
        claims = await self._store.claim_deliveries(
            self._owner, self._clock.now(), self._lease_s, free, capped, crowded
        )
        extra: list[DeliveryClaim] = []
        for claim in claims:
            env = claim.tenant.environment_id
            if (
                self._by_webhook[claim.webhook_id] >= self._per_webhook
                or self._by_environment[env] >= self._per_environment
            ):
                extra.append(claim)
            else:
                self._launch(claim)
        if extra:
            await self._store.release_deliveries(extra)
        return len(claims) - len(extra)

    async def drain(self) -> None:
        """Waits for the attempts in flight (tests)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    # --- the loops ------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            self._dispatch_wake.clear()
            try:
                await self.dispatch_once()
            except DomainError as err:
                log.warning("webhook fan-out paused: %s", err.message)
            except Exception:
                log.exception("webhook fan-out failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dispatch_wake.wait(), self._poll_s)

    async def _send_loop(self) -> None:
        while True:
            self._send_wake.clear()
            self._slot_freed = False
            started = 0
            try:
                started = await self.send_once()
            except DomainError as err:
                log.warning("webhook senders paused: %s", err.message)
            except Exception:
                log.exception("claiming webhook deliveries failed")
            if started and len(self._running) < self._workers:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._send_wake.wait(), self._poll_s)
            if not started and self._skipped and not self._slot_freed:
                # woken by new deliveries while webhooks or environments are
                # at their cap: a claim then reads past their backlog, so
                # at most one such claim per CLAIM_GAP_S (a freed sender
                # claims at once)
                await asyncio.sleep(CLAIM_GAP_S)

    def _launch(self, claim: DeliveryClaim) -> None:
        env = claim.tenant.environment_id
        self._by_webhook[claim.webhook_id] += 1
        self._by_environment[env] += 1
        task = asyncio.create_task(self._send(claim), name=f"memoryd-webhook-{claim.delivery_id}")
        self._running.add(task)

        def done(_: asyncio.Task[None]) -> None:
            self._running.discard(task)
            self._by_webhook[claim.webhook_id] -= 1
            if self._by_webhook[claim.webhook_id] <= 0:
                del self._by_webhook[claim.webhook_id]
            self._by_environment[env] -= 1
            if self._by_environment[env] <= 0:
                del self._by_environment[env]
            self._slot_freed = True
            self._send_wake.set()  # a sender is free

        task.add_done_callback(done)

    async def _send(self, claim: DeliveryClaim) -> None:
        """One attempt, then its record (with the others that finished
        meanwhile); the sender's place is held until it is recorded."""
        try:
            outcome = await self._courier.attempt(claim)
            self.counts["attempts"] += 1
            self.counts["succeeded" if outcome.attempt.succeeded else "attempts_failed"] += 1
            await self._records.add(outcome)
        except DomainError as err:
            # the attempt was made; its lease runs out and it is sent again
            log.warning("webhook delivery %s: could not record: %s", claim.delivery_id, err.message)
        except Exception:
            log.exception("webhook delivery %s failed", claim.delivery_id)


class GroupCommit:
    """Records finished attempts in batches: while one batch is written,
    the attempts that finish queue for the next (one transaction each
    instead of one per attempt). `add` returns once its outcome is written,
    or raises what the write raised."""

    def __init__(
        self, write: Callable[[Sequence[Outcome]], Awaitable[None]], max_batch: int = 500
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._queue: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, outcome: Outcome) -> None:
        done = asyncio.get_running_loop().create_future()
        self._queue.append((outcome, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="memoryd-webhook-records")
        await done

    async def close(self) -> None:
        """Stops writing (what is not written keeps its lease until it runs out)."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer

    async def _drain(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            try:
                await self._write([o for o, _ in batch])
            except Exception as err:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(err)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
