"""The audit log: every mutating admin or key call, and every memory delete,
purge, update and import, leaves an event whatever its outcome. Events go to
the control store and, optionally, to an `AuditSink` (a JSON-lines file for a
SIEM: `memoryd.storage.audit_file`). Events
never hold a secret, nor memory content or metadata values.

An event is always the caller's: its actor is the key that called, its
outcome what the call answered (a refusal records its reason in `details`).
What a client chose (a target id, a request id) is recorded escaped and
bounded (`memoryd.domain.text.escaped`): one printable line that cannot pass
for another event or another field."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from memoryd.domain import paging
from memoryd.domain.clock import Clock
from memoryd.domain.control import AuditEvent, AuditQuery, ControlStore, ListPage
from memoryd.domain.errors import DomainError, InvalidArgument, Unavailable
from memoryd.domain.ids import new_audit_id
from memoryd.domain.ports import AuditSink
from memoryd.domain.tenancy import Caller, KeyKind, Principal, Scope
from memoryd.domain.text import escaped

log = logging.getLogger("memoryd.audit")

# Bounds of the client-influenced strings of an event, in characters after
# escaping (within the store's columns).
MAX_TARGET = 128
MAX_ID = 40
MAX_REQUEST_ID = 100
MAX_PEER = 200
MAX_DETAIL = 128
# Events held in memory while the control store is unavailable (memory calls
# go on from cached project settings meanwhile); past it the oldest are dropped.
MAX_BACKLOG = 10_000


@dataclass
class PendingEvent:
    """What an audited action fills in while it runs."""

    target: str = ""
    project_id: str = ""
    environment_id: str = ""
    details: dict[str, str] = field(default_factory=dict)


class Auditor:
    def __init__(self, store: ControlStore, clock: Clock, sink: AuditSink | None = None) -> None:
        self._store = store
        self._clock = clock
        self._sink = sink
        self._backlog: list[AuditEvent] = []
        self._dropped = 0

    @asynccontextmanager
    async def action(
        self,
        caller: Caller,
        action: str,
        *,
        target: str = "",
        project_id: str = "",
        environment_id: str = "",
    ) -> AsyncIterator[PendingEvent]:
        """Records `action` when the block ends: outcome OK, or the error's
        code when it raised a DomainError (or INTERNAL for anything else)."""
        pending = PendingEvent(target, project_id, environment_id)
        outcome = "OK"
        try:
            yield pending
        except DomainError as err:
            outcome = err.code
            pending.details["reason"] = err.reason
            raise
        except BaseException:
            outcome = "INTERNAL"
            raise
        finally:
            await self._write(caller, action, pending, outcome)

    async def record_server_action(
        self,
        org_id: str,
        action: str,
        *,
        target: str = "",
        project_id: str = "",
        environment_id: str = "",
        details: dict[str, str] | None = None,
    ) -> None:
        """Records what the server itself did (no caller: the actor key id
        is empty), e.g. disabling a failing webhook."""
        server = Caller(Principal(key_id="", kind=KeyKind.DATA, org_id=org_id, scopes=frozenset()))
        pending = PendingEvent(target, project_id, environment_id, dict(details or {}))
        await self._write(server, action, pending, "OK")

    async def list(
        self, caller: Caller, query: AuditQuery, page_size: int, page_token: str
    ) -> tuple[ListPage[AuditEvent], str]:
        """Events of the caller's organization, newest first, and the next token."""
        p = caller.admin(Scope.AUDIT_READ)
        if query.start_time and query.end_time and query.start_time >= query.end_time:
            raise InvalidArgument.field("end_time", "must be after start_time")
        query = AuditQuery(
            p.org_id,
            query.project_id,
            query.environment_id,
            query.actor_key_id,
            query.action,
            query.start_time,
            query.end_time,
        )
        size = paging.page_size(page_size)
        fp = paging.fingerprint("audit", vars(query))
        page = await self._store.list_audit(query, size, paging.decode_keyset(page_token, fp))
        return page, paging.encode_keyset(fp, page.next_after)

    async def _write(self, caller: Caller, action: str, p: PendingEvent, outcome: str) -> None:
        event = AuditEvent(
            id=new_audit_id(),
            time=self._clock.now(),
            org_id=caller.principal.org_id,
            actor_key_id=caller.principal.key_id,
            action=action,
            target=escaped(p.target, MAX_TARGET),
            outcome=outcome,
            project_id=escaped(p.project_id, MAX_ID),
            environment_id=escaped(p.environment_id, MAX_ID),
            request_id=escaped(caller.request_id, MAX_REQUEST_ID),
            peer=escaped(caller.peer, MAX_PEER),
            details={k: escaped(v, MAX_DETAIL) for k, v in p.details.items()},
        )
        try:
            await self._store.append_audit(event)
        except Unavailable:
            # the change is made: hold the event and store it when the
            # database answers again (the outage itself is logged once)
            self._hold(event)
        except Exception:  # the change is made: a lost event must not fail the call
            log.exception("could not store audit event %s (%s)", event.id, action)
        else:
            if self._backlog:
                await self._store_backlog()
        if self._sink is not None:
            await self._sink.append(event)

    @property
    def held(self) -> int:
        """Events waiting for the control store to answer again."""
        return len(self._backlog)

    def _hold(self, event: AuditEvent) -> None:
        if not self._backlog:
            log.warning(
                "the control-plane database is unavailable: audit events are held in "
                "memory (at most %d) until it answers again",
                MAX_BACKLOG,
            )
        self._backlog.append(event)
        if len(self._backlog) > MAX_BACKLOG:
            del self._backlog[0]
            if self._dropped == 0:
                log.error("more than %d audit events held: dropping the oldest", MAX_BACKLOG)
            self._dropped += 1

    async def _store_backlog(self) -> None:
        stored = 0
        while self._backlog:
            try:
                await self._store.append_audit(self._backlog[0])
            except Unavailable:
                return  # still down for this write: the next one tries again
            except Exception:
                log.exception("could not store held audit event %s", self._backlog[0].id)
            else:
                stored += 1
            del self._backlog[0]
        log.warning(
            "stored %d audit events held during the database outage (%d dropped)",
            stored,
            self._dropped,
        )
        self._dropped = 0
