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


class ChangeRecorder:
    """Appends the events of a store write to the change log (none: records
    nothing, for a service built without one); `on_append` (the in-process
    wake-up of watchers) sees each appended batch."""

    def __init__(
        self,
        log: ChangeLog | None = None,
        clock: Clock | None = None,
        on_append: Callable[[Sequence[ChangeEvent]], None] | None = None,
    ) -> None:
        self._log = log
        self._clock = clock or SystemClock()
        self._on_append = on_append

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
        try:
            appended = await self._log.append(events)
        except Exception as err:
            log.warning(
                "a change was stored but its %d change event(s) could not be recorded: %s",
                len(events),
                type(err).__name__,
            )
            raise Unavailable(
                "the change was stored but the change log could not record it; "
                "read the memory again before retrying",
                reason="CHANGE_LOG_UNAVAILABLE",
                retry_after=1.0,
            ) from err
        if self._on_append is not None:
            self._on_append(appended)
