"""`WatchService`: WatchMemories, a stream of the changes a caller may see.

Policy is that of every memory read (`MemoryService`): scope memory:read,
the project's end-user rule, the tenant and end users of the key and
`x-end-user-id` (every end user's only with memory:all_end_users, audited).
The log is read confined to that tenant; the filter and the event types
apply here, to the memory each event keeps.

Where a stream starts: after the position of `resume_token`, else at the
first event at or after `start_time`, else at the log's head (only new
changes). It refuses with OUT_OF_RANGE a start before events of its own
environment that were trimmed (the retention), and so ends a stream whose
reader falls that far behind: the client must read the state again and
watch from now. Events removed by trims of other environments never count
against a watcher.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from memoryd.domain.changes import (
    DOCUMENT_EVENTS,
    MEMORY_EVENTS,
    ChangeEvent,
    EventType,
    LogHead,
    WatchLog,
)
from memoryd.domain.errors import OutOfRange
from memoryd.domain.memories import MemoryService, validate_filter
from memoryd.domain.memories.matching import matches
from memoryd.domain.memory import Filter, MemoryRecord
from memoryd.domain.tenancy import Caller, Scope, Tenant
from memoryd.domain.watch.hub import MAX_IDLE_S, Entry, Watcher, WatchHub
from memoryd.domain.watch.tokens import ResumeTokens

# Events read from the log per query.
READ_BATCH = 500
# The events whose memory is gone: a client gets only its id.
GONE = frozenset({EventType.DELETED, EventType.PURGED, EventType.EXPIRED})


@dataclass(frozen=True)
class WatchRequest:
    """Which events, from where (see the module)."""

    filter: Filter = field(default_factory=Filter)
    types: frozenset[EventType] = frozenset()  # empty: every type
    resume_token: str = ""
    start_time: datetime | None = None


@dataclass(frozen=True)
class Delivered:
    """One event for the stream: the memory after the change (None when it
    is gone), and the token that resumes after it."""

    event: ChangeEvent
    memory: MemoryRecord | None
    resume_token: str


class WatchService:
    def __init__(
        self,
        memories: MemoryService,
        log: WatchLog,
        hub: WatchHub,
        retention: timedelta,
        *,
        read_batch: int = READ_BATCH,
        max_idle_s: float = MAX_IDLE_S,
    ) -> None:
        """`retention` is how long the log keeps events (said in errors)."""
        self._memories = memories
        self._log = log
        self._hub = hub
        self._retention = retention
        self._batch = read_batch
        self._idle_s = max_idle_s
        self._tokens: ResumeTokens | None = None

    async def watch(self, caller: Caller, request: WatchRequest) -> AsyncIterator[Delivered]:
        """The caller's events, as they come, until the call ends. Raises
        InvalidArgument (filter, token), OutOfRange (a start, or a reader,
        behind the retention), ResourceExhausted (too many streams on this
        server), Unavailable (the log cannot be read; the server shuts down)."""
        tenant, _ = await self._memories.authorize(caller, Scope.MEMORY_READ)
        if request.types & DOCUMENT_EVENTS:
            caller.principal.require(Scope.KNOWLEDGE_READ)
        validate_filter(request.filter)
        head = await self._log.log_head()
        tokens = self._tokens_of(head.secret)
        after = tokens.read(tenant.key, request.resume_token) if request.resume_token else None
        tenant = await self._memories.reach(caller, tenant, "WatchMemories")
        watcher = self._hub.join(tenant.environment_id, caller.principal.key_id)
        try:
            position = await self._start(tenant, head, after, request.start_time)
            while True:
                watcher.clear()
                if (ended := watcher.end_reason()) is not None:
                    raise ended
                entries, upto = await self._read(watcher, tenant, position)
                for entry in entries:
                    position = entry.seq
                    delivered = self._deliverable(entry, request, tokens, tenant)
                    if delivered is not None:
                        yield delivered
                position = max(position, upto)
                if len(entries) < self._batch:
                    await watcher.wait(self._idle_s)
        finally:
            watcher.leave()

    async def _read(
        self, watcher: Watcher, tenant: Tenant, position: int
    ) -> tuple[list[Entry], int]:
        """The next events `tenant` may see after `position` (at most a
        batch) and the position read up to: from the hub's window when it
        covers `position`, else from the log (OUT_OF_RANGE when events
        after `position` were trimmed)."""
        recent = watcher.recent(tenant, position, self._batch)
        if recent is not None:
            return recent
        events, trimmed = await self._log.read_checked(tenant, position, self._batch)
        if trimmed is not None and trimmed.seq > position:
            raise self._behind()
        return [Entry.of(e) for e in events], position

    def _tokens_of(self, secret: str) -> ResumeTokens:
        """The tokens of the log with `secret`, shared by the streams."""
        if self._tokens is None or self._tokens.secret != secret:
            self._tokens = ResumeTokens(secret)
        return self._tokens

    async def _start(
        self, tenant: Tenant, head: LogHead, after: int | None, start_time: datetime | None
    ) -> int:
        """The position the stream reads after."""
        if after is not None:
            if after > head.seq:
                raise OutOfRange(
                    "the resume_token is ahead of this server's change log (was its database "
                    "restored from a backup?); read the state again (ListMemories or "
                    "ExportMemories), then watch from now",
                    reason="WATCH_POSITION_AHEAD",
                )
            trimmed = await self._log.trimmed(tenant)
            if trimmed is not None and trimmed.seq > after:
                raise self._behind("resume_token")
            return after
        if start_time is None:
            return head.seq
        trimmed = await self._log.trimmed(tenant)
        if trimmed is not None and trimmed.time >= start_time:
            raise self._behind("start_time")
        first = await self._log.first_at(tenant, start_time)
        return head.seq if first is None else first - 1

    def _behind(self, what: str = "") -> OutOfRange:
        hours = self._retention.total_seconds() / 3600
        where = f"the {what} is" if what else "this stream is"
        return OutOfRange(
            f"{where} older than the change log keeps: events are kept for {hours:g} hours "
            "(MEMORYD_CHANGE_RETENTION_HOURS) and some after it were removed; read the state "
            "again (ListMemories or ExportMemories), then watch from now (no resume_token, no "
            "start_time)",
            reason="WATCH_POSITION_EXPIRED",
        )

    @staticmethod
    def _deliverable(
        entry: Entry, request: WatchRequest, tokens: ResumeTokens, tenant: Tenant
    ) -> Delivered | None:
        """The entry for the stream, or None when the request's types or
        filter leave it out."""
        e, record = entry.event, entry.record
        if e.type in DOCUMENT_EVENTS:  # only when named (memory filters do not apply)
            if e.type not in request.types:
                return None
            return Delivered(e, None, tokens.issue(tenant.key, e.seq))
        if e.type not in MEMORY_EVENTS:  # alerts: for webhooks only
            return None
        if request.types and e.type not in request.types:
            return None
        if not request.filter.empty and (record is None or not matches(request.filter, record)):
            return None
        shown = None if e.type in GONE else record
        return Delivered(e, shown, tokens.issue(tenant.key, e.seq))
