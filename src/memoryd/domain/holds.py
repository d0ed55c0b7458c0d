"""Legal holds: data that must not be deleted while a matter is open.

A hold covers one environment, or one end user of an environment. While it
exists, DeleteMemory and PurgeMemories of the held data, EraseEndUser of a
held end user, DeleteEnvironment of an environment with any hold and
DeleteProject of a project with any hold refuse with FAILED_PRECONDITION
(reason LEGAL_HOLD, the message naming the hold), and the TTL sweep skips
held memories (and counts them). Setting and releasing a hold is audited.

No cache: each guarded delete asks the control store with one indexed
query (`first_hold`), so a hold set through any replica blocks deletes on
every replica from the moment SetLegalHold answers.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from memoryd.domain import paging
from memoryd.domain.audit import Auditor
from memoryd.domain.clock import Clock
from memoryd.domain.control import ControlStore
from memoryd.domain.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from memoryd.domain.keys import shown
from memoryd.domain.tenancy import Caller, EndUsers, Scope, Tenant

MAX_REASON_CHARS = 1000
MAX_END_USER_CHARS = 128  # as the x-end-user-id header allows


@dataclass(frozen=True)
class LegalHold:
    """A hold on an environment (`end_user_id` "") or on one of its end users."""

    id: str
    org_id: str
    project_id: str
    environment_id: str
    end_user_id: str
    reason: str
    created_by: str  # the key id that set it
    create_time: datetime


class HoldStore(Protocol):
    """Legal holds in the control store, confined to an organization."""

    async def create_hold(self, hold: LegalHold) -> None: ...

    async def delete_hold(self, org_id: str, hold_id: str) -> LegalHold | None:
        """Deletes the organization's hold; answers it (None: it has none such)."""
        ...

    async def list_holds(
        self, org_id: str, project_id: str, environment_id: str, limit: int, after: str | None
    ) -> list[LegalHold]:
        """The organization's holds (of a project or environment when given),
        by id, after `after`."""
        ...

    async def first_hold(
        self, org_id: str, project_id: str, environment_id: str | None, end_user_id: str | None
    ) -> LegalHold | None:
        """A hold covering the scope: of the project (`environment_id` None),
        the environment (`end_user_id` None: any hold in it), or one end user
        (a hold on the environment or on that end user)."""
        ...

    async def all_holds(self) -> list[LegalHold]:
        """Every hold of every organization (the TTL sweep's exclusions)."""
        ...


def blocked(hold: LegalHold, what: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{what} is refused: legal hold {hold.id} covers this data; "
        "release it first (AdminService.ReleaseLegalHold)",
        reason="LEGAL_HOLD",
    )


class HoldGuard:
    """The checks of the guarded deletes (`HoldCheck` for erasure)."""

    def __init__(self, store: HoldStore) -> None:
        self._store = store

    async def check(self, tenant: Tenant, what: str = "the erasure") -> None:
        """Refuses when a hold covers the tenant's data: its end user's (a
        hold on it or its environment), or with every end user (any hold in
        the environment). Memories without an end user are covered by an
        environment hold only."""
        end_user: str | None
        match tenant.end_users:
            case EndUsers.ONE:
                end_user = tenant.end_user_id
            case EndUsers.NONE:
                end_user = ""
            case EndUsers.ALL:
                end_user = None
        hold = await self._store.first_hold(
            tenant.org_id, tenant.project_id, tenant.environment_id, end_user
        )
        if hold is not None:
            raise blocked(hold, what)

    async def check_scope(self, org_id: str, project_id: str, environment_id: str | None) -> None:
        """Refuses deleting a project or environment in which any hold exists."""
        hold = await self._store.first_hold(org_id, project_id, environment_id, None)
        if hold is not None:
            raise blocked(
                hold, "deleting the environment" if environment_id else "deleting the project"
            )

    async def held(self) -> list[Tenant]:
        """What the TTL sweep keeps: each hold as a tenant (every end user
        of an environment for an environment hold)."""
        return held_tenants(await self._store.all_holds())


@dataclass(frozen=True)
class HoldPage:
    holds: list[LegalHold]
    next_page_token: str


class LegalHolds:
    """SetLegalHold, ReleaseLegalHold, ListLegalHolds (org keys)."""

    def __init__(
        self, store: HoldStore, control: ControlStore, auditor: Auditor, clock: Clock
    ) -> None:
        self._store = store
        self._control = control
        self._audit = auditor
        self._clock = clock

    async def set(
        self,
        caller: Caller,
        project_id: str,
        environment_id: str,
        end_user_id: str,
        reason: str,
    ) -> LegalHold:
        async with self._audit.action(
            caller, "legal_hold.set", project_id=project_id, environment_id=environment_id
        ) as ev:
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            v = Violations()
            if not project_id:
                v.add("project_id", "is required")
            if not environment_id:
                v.add("environment_id", "is required")
            if len(end_user_id) > MAX_END_USER_CHARS or not end_user_id.isprintable():
                v.add("end_user_id", f"is at most {MAX_END_USER_CHARS} printable characters")
            if not reason.strip() or len(reason) > MAX_REASON_CHARS:
                v.add("reason", f"is required: 1 to {MAX_REASON_CHARS} characters")
            v.raise_if_any()
            # A deleted environment (still restorable) may be held: the hold
            # then keeps its purge waiting until released.
            env = await self._control.get_environment(p.org_id, environment_id, show_deleted=True)
            if env is None or env.project_id != project_id:
                raise NotFound(
                    f"environment {shown(environment_id)} of project {shown(project_id)} not found"
                )
            hold = LegalHold(
                id="hold_" + secrets.token_hex(10),
                org_id=p.org_id,
                project_id=project_id,
                environment_id=environment_id,
                end_user_id=end_user_id,
                reason=reason,
                created_by=p.key_id,
                create_time=self._clock.now(),
            )
            await self._store.create_hold(hold)
            ev.target = hold.id
            ev.details["scope"] = "end_user" if end_user_id else "environment"
            return hold

    async def release(self, caller: Caller, hold_id: str) -> LegalHold:
        async with self._audit.action(caller, "legal_hold.release", target=hold_id) as ev:
            p = caller.admin(Scope.ADMIN_WRITE)
            if not hold_id:
                raise InvalidArgument.field("id", "is required")
            hold = await self._store.delete_hold(p.org_id, hold_id)
            if hold is None:
                raise NotFound(f"legal hold {shown(hold_id)} not found")
            ev.project_id, ev.environment_id = hold.project_id, hold.environment_id
            return hold

    async def list(
        self,
        caller: Caller,
        project_id: str,
        environment_id: str,
        page_size: int,
        page_token: str,
    ) -> HoldPage:
        p = caller.admin(Scope.ADMIN_READ)
        size = paging.page_size(page_size)
        fp = paging.fingerprint("legal_holds", project_id, environment_id)
        after = paging.decode_token(page_token, fp)
        if after is not None and not isinstance(after, str):
            raise InvalidArgument.field("page_token", "is not a token of this listing")
        holds = await self._store.list_holds(p.org_id, project_id, environment_id, size + 1, after)
        page, more = holds[:size], len(holds) > size
        token = paging.encode_token(fp, page[-1].id) if more else ""
        return HoldPage(page, token)


def held_tenants(holds: Sequence[LegalHold]) -> list[Tenant]:
    return [
        Tenant(h.org_id, h.project_id, h.environment_id, h.end_user_id)
        if h.end_user_id
        else Tenant(h.org_id, h.project_id, h.environment_id, all_end_users=True)
        for h in holds
    ]
