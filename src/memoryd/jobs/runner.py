"""The job runner: runs stored operations in this server process.

Each process runs one `JobRunner`. It claims operations from the control
store (`OperationStore.claim`) under a lease, runs each with the handler of
its kind, extends the lease while the handler works (a crashed replica's
job is taken over once its lease runs out), and writes the end only while it
still holds the lease. Several replicas on one PostgreSQL database share
the queue; the claim's `FOR UPDATE SKIP LOCKED` keeps them apart.

Fairness: at most `per_project` operations of one project run at once in a
process (the claim skips projects at their cap), so one tenant's flood of
operations cannot hold every worker while another tenant waits.

Failures: a handler that raises `Unavailable` (the model or a store did not
answer) gives the job back with a backoff, up to `max_attempts` attempts;
any other `DomainError` fails the operation with its code, reason and
message; an unexpected exception fails it as INTERNAL (logged with the
traceback, the client sees no internals).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from memoryd.domain.clock import Clock
from memoryd.domain.errors import DomainError, Unavailable
from memoryd.domain.operations import (
    Claim,
    JobHandler,
    JobOutcome,
    Operation,
    OperationStore,
    OpError,
    OpState,
)

log = logging.getLogger("memoryd.jobs")

# Backoff of a job given back after Unavailable: 2, 4, 8, ... seconds, at most this.
MAX_BACKOFF_S = 300.0


@dataclass
class JobContext:
    """What a handler gets (`JobControl`): the claim, and a way to checkpoint."""

    claim: Claim
    _runner: JobRunner
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def operation(self) -> Operation:
        return self.claim.operation

    async def checkpoint(self, info: Mapping[str, Any], result: str) -> None:
        """Saves progress (a re-run after a crash starts from it). Raises
        `LeaseLost` when another worker took the job over."""
        if not await self._runner.store.save_progress(self.claim, info, result):
            raise LeaseLost(self.claim.operation.id)


class LeaseLost(Exception):
    """This worker no longer holds the job: stop without writing."""


def error_of(err: DomainError) -> OpError:
    """The stored form of a domain error."""
    return OpError(code=err.code, reason=err.reason, message=err.message)


def default_owner() -> str:
    """This process's name as a lease owner: host and pid."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}"


class JobRunner:
    def __init__(
        self,
        store: OperationStore,
        handlers: Mapping[str, JobHandler],
        clock: Clock,
        *,
        owner: str = "",
        workers: int = 4,
        per_project: int = 2,
        lease_s: float = 30.0,
        max_attempts: int = 5,
        poll_interval_s: float = 1.0,
        on_done: Callable[[str], None] = lambda op_id: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`on_done(op_id)` runs when this process ends an operation (local
        waiters wake at once; other replicas' waiters poll)."""
        self.store = store
        self._handlers = dict(handlers)
        self._clock = clock
        self._owner = owner or default_owner()
        self._workers = workers
        self._per_project = per_project
        self._lease_s = lease_s
        self._max_attempts = max_attempts
        self._poll_s = poll_interval_s
        self._on_done = on_done
        self._sleep = sleep
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._by_project: Counter[str] = Counter()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        # what this process did (metrics; see `counts`)
        self.counts: Counter[str] = Counter()

    @property
    def owner(self) -> str:
        return self._owner

    def wake(self) -> None:
        """Look for work now (an operation was just stored here)."""
        self._wake.set()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="memoryd-job-runner")

    async def stop(self) -> None:
        """Stops claiming and cancels running jobs: they keep their lease
        until it runs out, then any replica (or this one restarted) takes
        them over and runs them again from their last checkpoint."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def run_once(self) -> int:
        """Claims as many jobs as there are free workers; answers how many
        it started (tests drive the runner with this)."""
        started = 0
        while len(self._running) < self._workers:
            capped = [p for p, n in self._by_project.items() if n >= self._per_project]
            try:
                claim = await self.store.claim(
                    self._owner, self._clock.now(), self._lease_s, capped, list(self._handlers)
                )
            except Unavailable as err:
                log.warning("job queue unavailable: %s", err.message)
                return started
            if claim is None:
                return started
            self._launch(claim)
            started += 1
        return started

    async def drain(self) -> None:
        """Waits for the jobs running now (tests)."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)

    def _launch(self, claim: Claim) -> None:
        op = claim.operation
        self.counts["started"] += 1
        self._by_project[op.tenant.project_id] += 1
        task = asyncio.create_task(self._run(claim), name=f"memoryd-job-{op.id}")
        self._running[op.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._running.pop(op.id, None)
            self._by_project[op.tenant.project_id] -= 1
            if self._by_project[op.tenant.project_id] <= 0:
                del self._by_project[op.tenant.project_id]
            self._wake.set()  # a worker is free

        task.add_done_callback(done)

    async def _run(self, claim: Claim) -> None:
        op = claim.operation
        handler = self._handlers[op.kind]
        ctx = JobContext(claim, self)
        work = asyncio.create_task(handler.run(ctx))
        beat = asyncio.create_task(self._heartbeat(ctx, work))
        try:
            outcome = await work
        except asyncio.CancelledError:
            if ctx.cancelled.is_set() and not self._stopping:
                await self._end(ctx.claim, JobOutcome(OpState.CANCELLED, op.info))
            else:
                raise
        except LeaseLost:
            self.counts["leases_lost"] += 1
            log.info("operation %s was taken over by another worker", op.id)
        except Unavailable as err:
            await self._retry(ctx.claim, err)
        except DomainError as err:
            await self._end(ctx.claim, JobOutcome(OpState.FAILED, op.info, error=error_of(err)))
        except Exception:
            log.exception("operation %s failed with an internal error", op.id)
            error = OpError("INTERNAL", "INTERNAL", "the operation failed with an internal error")
            await self._end(ctx.claim, JobOutcome(OpState.FAILED, op.info, error=error))
        else:
            await self._end(ctx.claim, outcome)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _heartbeat(self, ctx: JobContext, work: asyncio.Task[JobOutcome]) -> None:
        """Extends the lease every third of it; cancels the work when the
        lease is lost or the operation's cancel was asked for."""
        while True:
            await self._sleep(self._lease_s / 3)
            try:
                claim = await self.store.heartbeat(ctx.claim, self._clock.now(), self._lease_s)
            except Unavailable:
                continue  # the lease may still hold; try again
            if claim is None:
                work.cancel()
                return
            ctx.claim = claim
            if claim.operation.cancel_requested:
                ctx.cancelled.set()
                work.cancel()
                return

    async def _retry(self, claim: Claim, err: Unavailable) -> None:
        op = claim.operation
        if op.attempts >= self._max_attempts:
            error = OpError(
                "UNAVAILABLE",
                err.reason,
                f"{err.message} (gave up after {op.attempts} attempts)",
            )
            await self._end(claim, JobOutcome(OpState.FAILED, op.info, error=error))
            return
        delay = min(MAX_BACKOFF_S, 2.0**op.attempts)
        if err.retry_after:
            delay = max(delay, err.retry_after)
        now = self._clock.now()
        log.info("operation %s: %s; trying again in %.0f s", op.id, err.message, delay)
        with contextlib.suppress(Unavailable):
            await self.store.retry_later(claim, now + timedelta(seconds=delay), now, error_of(err))
            self.counts["retried"] += 1

    async def _end(self, claim: Claim, outcome: JobOutcome) -> None:
        try:
            done = await self.store.finish(
                claim,
                outcome.state,
                self._clock.now(),
                outcome.info,
                outcome.result,
                outcome.error,
            )
        except Unavailable as err:
            # the lease runs out and the job runs again from its checkpoint
            log.warning("operation %s: could not record its end: %s", claim.operation.id, err)
            return
        if done:
            self.counts[outcome.state.value.lower()] += 1
            self._on_done(claim.operation.id)
