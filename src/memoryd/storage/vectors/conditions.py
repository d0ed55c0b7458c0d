"""The conditions that confine a vector store call to its tenants, to
memories that have not expired and to those its `Validity` admits, built
for either engine.

Each adapter supplies a `Conditions` (how its engine spells a condition);
what every condition means is decided here and in
`memoryd.storage.vectors.filters`. The tenant conditions are built from a
`Tenant` and nothing else: a domain filter can never name a tenant field.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from memoryd.domain.errors import InvalidArgument
from memoryd.domain.memory import Validity
from memoryd.domain.tenancy import EndUsers, Tenant
from memoryd.storage.vectors.layout import (
    CREATE_TIME,
    END_USER_ID,
    EXPIRE_TIME,
    INVALID_TIME,
    TENANT,
    VALID_TIME,
    to_micros,
)

C = TypeVar("C")  # an engine's condition type
F = TypeVar("F")  # an engine's filter type


class Conditions(Protocol[C, F]):
    """Builds one engine's condition objects. Each adapter supplies one; the
    meaning of every condition is decided in this package."""

    def match(self, key: str, value: str | int) -> C: ...

    def match_any(self, key: str, values: list[str]) -> C: ...

    def range(
        self,
        key: str,
        *,
        gt: float | None = None,
        gte: float | None = None,
        lt: float | None = None,
        lte: float | None = None,
    ) -> C: ...

    def has_id(self, ids: Sequence[str]) -> C: ...

    def filter(
        self, must: Sequence[C] = (), should: Sequence[C] = (), must_not: Sequence[C] = ()
    ) -> F: ...

    def nest(self, flt: F) -> C:
        """A filter used as a condition of another filter."""
        ...


def can_see(viewer: Tenant, owner_key: str, owner_end_user: str) -> bool:
    """Whether `viewer` may see a point of tenant `owner_key` and end user
    `owner_end_user`: the in-process twin of `tenant_conditions` (same
    tenant, and the end user `viewer` reaches: its own; none when it names
    none; any when it reaches all end users)."""
    return viewer.sees(owner_key, owner_end_user)


def tenant_conditions(b: Conditions[C, F], tenants: Sequence[Tenant]) -> list[C]:
    """The conditions confining a call to `tenants` (all must hold).

    One tenant: its keyword, and which end users it reaches: its end user's
    points, or only points without an end user, or (`all_end_users`, said
    explicitly) any. Several (a cross-project search): at least one of
    those. Never empty: with no tenant the caller must not query at all.
    """
    unique = list(dict.fromkeys(tenants))
    if not unique:
        raise ValueError("a vector store call needs at least one tenant")
    for t in unique:
        # The composite key must name one tenant only: no part may be empty
        # or contain its separator.
        if not all(part and "/" not in part for part in (t.org_id, t.project_id, t.environment_id)):
            raise InvalidArgument.field(
                "tenant", "organization, project and environment ids are non-empty and have no '/'"
            )
    if len(unique) == 1:
        return _one_tenant(b, unique[0])
    return [b.nest(b.filter(should=[b.nest(b.filter(must=_one_tenant(b, t))) for t in unique]))]


def _one_tenant(b: Conditions[C, F], t: Tenant) -> list[C]:
    conds = [b.match(TENANT, t.key)]
    match t.end_users:
        case EndUsers.ONE:
            conds.append(b.match(END_USER_ID, t.end_user_id))
        case EndUsers.NONE:
            # Every point carries END_USER_ID, "" when it has no end user.
            conds.append(b.match(END_USER_ID, ""))
        case EndUsers.ALL:
            pass
    return conds


def alive(b: Conditions[C, F], now: datetime) -> C:
    """Not expired at `now` (expire_time > now)."""
    return b.range(EXPIRE_TIME, gt=float(to_micros(now)))


def expired(b: Conditions[C, F], now: datetime) -> C:
    """Expired at `now` (expire_time <= now)."""
    return b.range(EXPIRE_TIME, lte=float(to_micros(now)))


def admitted(b: Conditions[C, F], validity: Validity, now: datetime) -> list[C]:
    """What `validity` requires of a memory (all must hold): that it holds at
    `now` (valid_time <= now < invalid_time), or at `as_of`; nothing when it
    includes the invalidated."""
    if validity.as_of is not None:
        at = validity.as_of
    elif validity.include_invalidated:
        return []
    else:
        at = now
    us = float(to_micros(at))
    return [b.range(VALID_TIME, lte=us), b.range(INVALID_TIME, gt=us)]


def has_validity(b: Conditions[C, F]) -> C:
    """The point has a valid_time (any integer is >= -2**63): every point of
    this layout does, one of layout 1 does not."""
    return b.range(VALID_TIME, gte=-(2.0**63))


def created_at(b: Conditions[C, F], us: int) -> C:
    """Created at exactly `us` microseconds since the epoch."""
    return b.range(CREATE_TIME, gte=float(us), lte=float(us))


def created_before(b: Conditions[C, F], us: int) -> C:
    """Created strictly before `us` microseconds since the epoch."""
    return b.range(CREATE_TIME, lt=float(us))
