"""Reading and managing operations (google.longrunning.Operations), for the
tenant of the caller's key.

A data key sees its environment's operations: with `x-end-user-id` only
that end user's, without it only those made without an end user, unless
the key holds memory:all_end_users. Another tenant's operation is NOT_FOUND,
the same as a missing one. Each kind of operation has the scope that reads
it (add_messages: memory:read) and the one that cancels or deletes it
(add_messages: memory:add, the scope that made it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from memoryd.domain import paging
from memoryd.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from memoryd.domain.operations import (
    OPERATION_NAME_PREFIX,
    Operation,
    OperationQuery,
    OperationStore,
)
from memoryd.domain.tenancy import Caller, Scope, Tenant, scope_grants

# The longest WaitOperation waits, whatever the client asks.
MAX_WAIT_S = 60.0


@dataclass(frozen=True)
class KindScopes:
    read: str
    manage: str


class Waiters:
    """Wakes WaitOperation calls in this process when an operation ends
    here (those waiting for another replica's operation poll)."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, op_id: str) -> None:
        for event in self._events.pop(op_id, set()):
            event.set()

    async def wait(self, op_id: str, timeout_s: float) -> None:
        event = asyncio.Event()
        self._events[op_id].add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        finally:
            waiting = self._events.get(op_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[op_id]


@dataclass(frozen=True)
class OperationPage:
    operations: list[Operation]
    next_page_token: str


class OperationService:
    def __init__(
        self,
        store: OperationStore,
        kinds: Mapping[str, KindScopes],
        waiters: Waiters,
        *,
        poll_interval_s: float = 0.5,
    ) -> None:
        self._store = store
        self._kinds = dict(kinds)
        self._waiters = waiters
        self._poll_s = poll_interval_s

    def _tenant(self, caller: Caller) -> Tenant:
        p = caller.principal
        tenant = p.tenant()  # a data key (PermissionDenied for an org key)
        if not tenant.end_user_id and scope_grants(p.scopes, Scope.MEMORY_ALL_END_USERS):
            return tenant.across_end_users()
        return tenant

    async def get(self, caller: Caller, name: str) -> Operation:
        tenant = self._tenant(caller)
        op = await self._read(tenant, name)
        caller.principal.require(self._kinds[op.kind].read)
        return op

    async def list(
        self, caller: Caller, filter_text: str, page_size: int, page_token: str
    ) -> OperationPage:
        tenant = self._tenant(caller)
        query = parse_filter(filter_text)
        scopes = caller.principal.scopes
        if query.kind:
            if query.kind not in self._kinds:
                raise _bad_filter(f'kind = "{query.kind}"')
            caller.principal.require(self._kinds[query.kind].read)
        # the kinds the key may not read are left out
        kinds = (
            [query.kind]
            if query.kind
            else [k for k, s in self._kinds.items() if scope_grants(scopes, s.read)]
        )
        if not kinds:
            caller.principal.require(Scope.MEMORY_READ)
        size = paging.page_size(page_size)
        fp = paging.fingerprint("operations", tenant.end_user_id, filter_text)
        raw = paging.decode_keyset(page_token, fp)
        before = (datetime.fromisoformat(raw[0]), raw[1]) if raw else None
        ops: list[Operation] = []
        for kind in kinds:
            ops += await self._store.list_operations(
                tenant, OperationQuery(done=query.done, kind=kind), size + 1, before
            )
        ops.sort(key=lambda o: (o.create_time, o.id), reverse=True)
        page, more = ops[:size], len(ops) > size
        token = ""
        if more:
            last = page[-1]
            token = paging.encode_keyset(fp, (last.create_time.isoformat(), last.id))
        return OperationPage(page, token)

    async def wait(self, caller: Caller, name: str, timeout_s: float) -> Operation:
        """The operation once done, or as it is after `timeout_s` (at most
        MAX_WAIT_S)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout_s, 0.0), MAX_WAIT_S)
        while True:
            op = await self.get(caller, name)
            remaining = deadline - loop.time()
            if op.done or remaining <= 0:
                return op
            await self._waiters.wait(op.id, min(remaining, self._poll_s))

    async def cancel(self, caller: Caller, name: str, now: datetime) -> Operation:
        tenant = self._tenant(caller)
        op = await self._read(tenant, name)
        caller.principal.require(self._kinds[op.kind].manage)
        cancelled = await self._store.request_cancel(tenant, op.id, now)
        if cancelled is None:
            raise _not_found(name)
        return cancelled

    async def delete(self, caller: Caller, name: str) -> None:
        tenant = self._tenant(caller)
        op = await self._read(tenant, name)
        caller.principal.require(self._kinds[op.kind].manage)
        if not op.done:
            raise FailedPrecondition(
                f"operation {name!r} is still running; cancel it first (CancelOperation)",
                reason="OPERATION_RUNNING",
            )
        if not await self._store.delete_operation(tenant, op.id):
            raise _not_found(name)

    async def _read(self, tenant: Tenant, name: str) -> Operation:
        op_id = operation_id(name)
        op = await self._store.get_operation(tenant, op_id) if op_id else None
        if op is None or op.kind not in self._kinds:
            raise _not_found(name)
        return op


def operation_id(name: str) -> str:
    """The id in an operation name (`operations/<id>`), or "" when `name`
    is not one; InvalidArgument when empty."""
    if not name:
        raise InvalidArgument.field("name", "is required: operations/<id>")
    if not name.startswith(OPERATION_NAME_PREFIX):
        return ""
    op_id = name[len(OPERATION_NAME_PREFIX) :]
    return op_id if op_id.isalnum() and len(op_id) <= 40 else ""


def parse_filter(text: str) -> OperationQuery:
    """The filter of ListOperations: "" or terms joined by AND, each
    `done = true|false` or `kind = "add_messages"`."""
    done: bool | None = None
    kind = ""
    terms = (
        [t.strip() for t in text.replace(" and ", " AND ").split(" AND ")] if text.strip() else []
    )
    for term in terms:
        field, sep, value = term.partition("=")
        field, value = field.strip(), value.strip().strip('"')
        if not sep:
            raise _bad_filter(term)
        if field == "done" and value in ("true", "false"):
            done = value == "true"
        elif field == "kind" and value:
            kind = value
        else:
            raise _bad_filter(term)
    return OperationQuery(done=done, kind=kind)


def _bad_filter(term: str) -> InvalidArgument:
    return InvalidArgument.field(
        "filter",
        f"cannot read {term!r}; use terms joined by AND: done = true|false, "
        'kind = "add_messages" | "ingest_document" | "export" | "erase_end_user"',
    )


def _not_found(name: str) -> NotFound:
    return NotFound(f"operation {name!r} not found")
