"""Recording changes to memories in the change log (`memoryd.domain.changes`).

Every path that changes a memory (create, update, delete, purge, the TTL
sweep; the AddMessages job writes through create and update) records its
events here right after the vector store write and before the call
answers, in one append (one SQL transaction) per store write, not per
memory. So an acknowledged change is in the log, also after a crash.

If the append fails, the call fails (UNAVAILABLE, reason
CHANGE_LOG_UNAVAILABLE) although the change itself is stored: such a
change may exist without its event. The guarantee is for acknowledged
changes (at least once); a client that retries the call makes a new event.

Which event: a new memory is CREATED; an update that ends the memory's
truth (gives it an invalid_time it did not have: UpdateMemory setting
invalid_time, or a job superseding or deleting it) is SUPERSEDED, any
other update UPDATED; a deleted memory DELETED, a purged one PURGED, one
the TTL sweep removed EXPIRED. Each event keeps the memory's state after
the change (its last state for a deletion).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from memoryd.domain.changes import ChangeEvent, ChangeLog, EventType, NewEvent
from memoryd.domain.clock import Clock, SystemClock
from memoryd.domain.errors import Unavailable
from memoryd.domain.memories.snapshot import memory_json
from memoryd.domain.memory import MemoryRecord

log = logging.getLogger("memoryd.changes")


@dataclass(frozen=True)
class Cause:
    """What caused a change: the long-running operation (its id without
    "operations/") or the call (its request id); either may be ""."""

    operation_id: str = ""
    request_id: str = ""


NO_CAUSE = Cause()


def update_event(before: MemoryRecord, after: MemoryRecord) -> EventType:
    """SUPERSEDED when the update ends the memory's truth, else UPDATED."""
    if before.invalid_time is None and after.invalid_time is not None:
        return EventType.SUPERSEDED
    return EventType.UPDATED


# Events of writes acknowledged while the control store is down, held in
# memory until it answers again, at most this many.
MAX_HELD_EVENTS = 100_000


class ChangeRecorder:
    """Appends the events of a store write to the change log (none: records
    nothing, for a service built without one); `on_append` (the in-process
    wake-up of watchers) sees each appended batch.

    During a control-store outage (the log raises Unavailable) memory writes
    go on, as they do with stale project settings: their events are held in
    memory, in order, and appended before the next ones once the log
    answers. A process killed during the outage loses the events it held
    (like the audit events it holds); more than MAX_HELD_EVENTS fail the
    call UNAVAILABLE as before."""

    def __init__(
        self,
        log: ChangeLog | None = None,
        clock: Clock | None = None,
        on_append: Callable[[Sequence[ChangeEvent]], None] | None = None,
    ) -> None:
        self._log = log
        self._clock = clock or SystemClock()
        self._on_append = on_append
        self._held: list[NewEvent] = []
        self._lock = asyncio.Lock()

    async def record(
        self, changes: Sequence[tuple[EventType, MemoryRecord]], cause: Cause = NO_CAUSE
    ) -> None:
        """Appends one event per (type, memory) in order, in one transaction.
        Raises Unavailable when the log cannot take them."""
        if not changes or self._log is None:
            return
        now = self._clock.now()
        events = [
            NewEvent(
                type=kind,
                tenant=record.tenant,
                memory_id=record.id,
                time=now,
                memory=memory_json(record),
                operation_id=cause.operation_id,
                request_id=cause.request_id,
            )
            for kind, record in changes
        ]
        async with self._lock:  # held events go first, once
            await self._append(events)

    async def record_events(self, events: Sequence[NewEvent]) -> None:
        """Appends events made elsewhere (documents), in order, like `record`."""
        if not events or self._log is None:
            return
        async with self._lock:
            await self._append(list(events))

    async def _append(self, events: list[NewEvent]) -> None:
        assert self._log is not None
        pending = [*self._held, *events]
        try:
            appended = await self._log.append(pending)
        except Unavailable as err:
            if len(pending) > MAX_HELD_EVENTS:
                raise self._lost(len(events), err) from err
            if not self._held:
                log.warning(
                    "the change log is unavailable: holding change events in memory until it "
                    "answers again (%s)",
                    err.reason,
                )
            self._held = pending
            return
        except Exception as err:
            raise self._lost(len(events), err) from err
        if self._held:
            log.warning("the change log answers again: %d held events appended", len(self._held))
            self._held = []
        if self._on_append is not None:
            self._on_append(appended)

    @staticmethod
    def _lost(count: int, err: Exception) -> Unavailable:
        log.warning(
            "a change was stored but its %d change event(s) could not be recorded: %s",
            count,
            type(err).__name__,
        )
        return Unavailable(
            "the change was stored but the change log could not record it; "
            "read the memory again before retrying",
            reason="CHANGE_LOG_UNAVAILABLE",
            retry_after=1.0,
        )
