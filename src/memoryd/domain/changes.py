"""Change events: one durable log of every acknowledged change to a memory,
which watchers (`WatchMemories`) read from and webhooks are delivered from.

An event belongs to the tenant of the memory it is about (organization,
project, environment and end user, "" when none) from its first line: every
read for a caller takes the caller's `Tenant` and confines itself to what
that tenant may see (`Tenant.sees`), exactly like a memory read. Only the
webhook dispatcher reads the log across tenants, and it hands each event
only to the webhooks of the event's own environment.

`seq` is the log's position: assigned by the store when the event is
appended, strictly increasing in append order within one store, and the
basis of resume tokens. `memory` is the memory's state after the change
as the JSON object of its API form (`memoryd.domain.memories.snapshot`).
For a deletion (DELETED, PURGED, EXPIRED) it is the memory's last state,
kept in the log so that a watcher's or a webhook's filter still applies to
the event; it is never shown for one: a client gets only `memory_id`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from memoryd.domain.tenancy import Tenant


class EventType(enum.Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    SUPERSEDED = "SUPERSEDED"
    DELETED = "DELETED"
    EXPIRED = "EXPIRED"
    PURGED = "PURGED"
    # alerts (`memoryd.domain.alerts`): about an environment, not a memory
    QUOTA_REACHED = "QUOTA_REACHED"
    RATE_LIMITED = "RATE_LIMITED"
    # knowledge (`memoryd.domain.knowledge`): about a document, not a memory
    DOCUMENT_READY = "DOCUMENT_READY"
    DOCUMENT_FAILED = "DOCUMENT_FAILED"
    DOCUMENT_DELETED = "DOCUMENT_DELETED"


# The alert types: no memory, `details` says what happened; never streamed
# to watchers, sent only to webhooks that name them.
ALERTS = frozenset({EventType.QUOTA_REACHED, EventType.RATE_LIMITED})
# The document events: no memory, `details` says which document (id, name,
# folder, state, chunks); sent only to webhooks that name them.
DOCUMENT_EVENTS = frozenset(
    {EventType.DOCUMENT_READY, EventType.DOCUMENT_FAILED, EventType.DOCUMENT_DELETED}
)
# The memory events: what a watcher, or a webhook naming no types, receives.
MEMORY_EVENTS = frozenset(EventType) - ALERTS - DOCUMENT_EVENTS


@dataclass(frozen=True)
class NewEvent:
    """An event to append: what changed, for whom, and what caused it
    (`operation_id` of a long-running operation, or the `request_id` of
    the call, either may be ""). An alert has no memory (`memory_id` "")
    and says what happened in `details` (JSON values)."""

    type: EventType
    tenant: Tenant
    memory_id: str
    time: datetime
    memory: Mapping[str, Any] | None = None
    operation_id: str = ""
    request_id: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChangeEvent(NewEvent):
    """An event as stored, with its position in the log."""

    seq: int = 0


class ChangeLog(Protocol):
    """The durable change log (in the control store)."""

    async def append(self, events: Sequence[NewEvent]) -> list[ChangeEvent]:
        """Appends `events` in one transaction, in order; answers them with
        their positions."""
        ...

    async def read(self, tenant: Tenant, after: int, limit: int) -> list[ChangeEvent]:
        """Up to `limit` events after position `after` that `tenant` may
        see, oldest first."""
        ...

    async def read_all(self, after: int, limit: int) -> list[ChangeEvent]:
        """Up to `limit` events of every tenant after position `after`,
        oldest first: for the webhook dispatcher only, never a caller."""
        ...

    async def oldest(self) -> int | None:
        """The position of the oldest event kept (None: the log is empty)."""
        ...

    async def last(self) -> int:
        """The position of the newest event (0 when none was ever appended)."""
        ...

    async def trim(self, before: datetime) -> int:
        """Deletes the events older than `before` (retention); answers how many."""
        ...


@dataclass(frozen=True)
class LogHead:
    """The log's head: the last position given (0: none yet), how many
    trims deleted events, and the secret that signs resume tokens (one per
    log: a token of another server's log does not verify)."""

    seq: int
    trims: int
    secret: str


@dataclass(frozen=True)
class Trimmed:
    """The newest position and time among an environment's trimmed events."""

    seq: int
    time: datetime


class WatchLog(ChangeLog, Protocol):
    """What watchers read of the log besides the `ChangeLog` calls."""

    async def log_head(self) -> LogHead: ...

    async def read_checked(
        self, tenant: Tenant, after: int, limit: int
    ) -> tuple[list[ChangeEvent], Trimmed | None]:
        """`read`, then `trimmed` (in that order, in one transaction): a
        watcher's read that also tells whether events it had not read yet
        were trimmed."""
        ...

    async def trimmed(self, tenant: Tenant) -> Trimmed | None:
        """The newest trimmed position and time of `tenant`'s environment
        (None: none of its events was trimmed)."""
        ...

    async def first_at(self, tenant: Tenant, time: datetime) -> int | None:
        """The position of the oldest kept event `tenant` may see whose
        time is at or after `time` (None: none)."""
        ...
