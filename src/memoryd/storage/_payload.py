"""Memory points as both Qdrant adapters store them, and the translation of a
tenant and a domain `Filter` into Qdrant conditions.

One payload layout serves Qdrant Edge and a Qdrant server alike (an Edge
shard and a server shard share their data format), so a point reads and
filters the same wherever it lives:

    org_id, project_id, environment_id   the tenant's parts (keywords)
    tenant                               `Tenant.key` ("org/project/env"), keyword, is_tenant
    end_user_id                          the end user, "" when none
    content, agent_id, thread_id, source strings
    tags                                 a list of strings
    metadata                             the memory's metadata, exactly as given
    metadata_bools                       the boolean leaves of `metadata` as 1/0, at the
                                         same paths (absent when there are none)
    create_time, update_time             integer microseconds since the Unix epoch (UTC)
    expire_time                          the same, or NO_EXPIRY when the memory never expires
    revision, revisions                  the revision number; past states, oldest first
    layout                               LAYOUT, the version of this layout

Times are integers so that ranges and ordering are exact in every engine (a
datetime index would round differently in each), and "no expiry" is a real
number so that "not expired" is one range condition on an indexed field.

The tenant conditions are built here from a `Tenant` and nothing else; a
domain filter can name only the fields in `FILTER_KEYWORD_FIELDS`,
`FILTER_TIME_FIELDS` and `metadata.<key>`, never a tenant field.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from memoryd.domain.errors import InvalidArgument
from memoryd.domain.memory import (
    FILTER_KEYWORD_FIELDS,
    FILTER_TIME_FIELDS,
    METADATA_KEY_FORBIDDEN,
    METADATA_PREFIX,
    Condition,
    Filter,
    Match,
    MatchAny,
    MemoryRecord,
    NumberRange,
    Revision,
    TimeRange,
)
from memoryd.domain.tenancy import EndUsers, Tenant

LAYOUT = 1

ORG_ID = "org_id"
PROJECT_ID = "project_id"
ENVIRONMENT_ID = "environment_id"
TENANT = "tenant"
END_USER_ID = "end_user_id"
CONTENT = "content"
METADATA = "metadata"
METADATA_BOOLS = "metadata_bools"
AGENT_ID = "agent_id"
THREAD_ID = "thread_id"
SOURCE = "source"
TAGS = "tags"
CREATE_TIME = "create_time"
UPDATE_TIME = "update_time"
EXPIRE_TIME = "expire_time"
REVISION = "revision"
REVISIONS = "revisions"
LAYOUT_FIELD = "layout"

# Keyword payload indexes: the tenant (is_tenant) and the filterable strings.
KEYWORD_INDEXES = (END_USER_ID, AGENT_ID, THREAD_ID, SOURCE, TAGS, ORG_ID, PROJECT_ID)
# Integer range indexes: ordering (create_time), expiry, time filters.
TIME_INDEXES = (CREATE_TIME, UPDATE_TIME, EXPIRE_TIME)

# 2**53 - 1 µs is in the year 2255: far enough to mean "never", and still
# exact as a float, which is how range bounds travel in both engines.
NO_EXPIRY = 2**53 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# A metadata key segment Qdrant's JSON path accepts unquoted.
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


# --- values -----------------------------------------------------------------


def to_micros(t: datetime) -> int:
    """Microseconds since the Unix epoch. A naive datetime is taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // _MICROSECOND


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def point_id(value: object) -> str | None:
    """The canonical (lower-case, hyphenated) UUID string, or None when
    `value` is not a UUID: such an id names no point."""
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def can_see(viewer: Tenant, owner_key: str, owner_end_user: str) -> bool:
    """Whether `viewer` may see a point of tenant `owner_key` and end user
    `owner_end_user`: same tenant, and the end user `viewer` reaches (its
    own; none when it names none; any when it reaches all end users)."""
    return viewer.sees(owner_key, owner_end_user)


# --- payload ----------------------------------------------------------------


def to_payload(record: MemoryRecord) -> dict[str, Any]:
    """The payload of a record's point (its vector travels separately)."""
    t = record.tenant
    expire = NO_EXPIRY if record.expire_time is None else to_micros(record.expire_time)
    payload: dict[str, Any] = {
        ORG_ID: t.org_id,
        PROJECT_ID: t.project_id,
        ENVIRONMENT_ID: t.environment_id,
        TENANT: t.key,
        END_USER_ID: t.end_user_id,
        CONTENT: record.content,
        METADATA: dict(record.metadata),
        AGENT_ID: record.agent_id,
        THREAD_ID: record.thread_id,
        SOURCE: record.source,
        TAGS: list(record.tags),
        CREATE_TIME: to_micros(record.create_time),
        UPDATE_TIME: to_micros(record.update_time),
        EXPIRE_TIME: min(expire, NO_EXPIRY),
        REVISION: record.revision,
        REVISIONS: [_revision_to_payload(r) for r in record.revisions],
        LAYOUT_FIELD: LAYOUT,
    }
    bools = _bool_leaves(record.metadata)
    if bools:
        payload[METADATA_BOOLS] = bools
    return payload


def from_payload(
    pid: str, payload: Mapping[str, Any], vector: Sequence[float] | None = None
) -> MemoryRecord:
    """The record of a point read back."""
    expire = int(payload[EXPIRE_TIME])
    return MemoryRecord(
        id=pid,
        tenant=Tenant(
            org_id=payload[ORG_ID],
            project_id=payload[PROJECT_ID],
            environment_id=payload[ENVIRONMENT_ID],
            end_user_id=payload.get(END_USER_ID, ""),
        ),
        content=payload[CONTENT],
        metadata=payload.get(METADATA) or {},
        agent_id=payload.get(AGENT_ID, ""),
        thread_id=payload.get(THREAD_ID, ""),
        source=payload.get(SOURCE, ""),
        tags=tuple(payload.get(TAGS) or ()),
        create_time=from_micros(payload[CREATE_TIME]),
        update_time=from_micros(payload[UPDATE_TIME]),
        expire_time=None if expire >= NO_EXPIRY else from_micros(expire),
        revision=int(payload.get(REVISION, 0)),
        vector=None if vector is None else tuple(float(x) for x in vector),
        revisions=tuple(_revision_from_payload(r) for r in payload.get(REVISIONS) or ()),
    )


def _revision_to_payload(r: Revision) -> dict[str, Any]:
    return {
        "revision": r.revision,
        "content": r.content,
        "metadata": dict(r.metadata),
        "tags": list(r.tags),
        "agent_id": r.agent_id,
        "thread_id": r.thread_id,
        "source": r.source,
        "update_time": to_micros(r.update_time),
        "replace_time": to_micros(r.replace_time),
    }


def _revision_from_payload(p: Mapping[str, Any]) -> Revision:
    return Revision(
        revision=int(p["revision"]),
        content=p["content"],
        metadata=p.get("metadata") or {},
        tags=tuple(p.get("tags") or ()),
        agent_id=p.get("agent_id", ""),
        thread_id=p.get("thread_id", ""),
        source=p.get("source", ""),
        update_time=from_micros(p["update_time"]),
        replace_time=from_micros(p["replace_time"]),
    )


_NO_BOOLS = object()


def _bool_leaves(value: Any) -> Any:
    """`value` pruned to its boolean leaves, each as 1 or 0; falsy when none.

    Why: Qdrant Edge 0.9.0 never matches `MatchValue(True/False)`, so a filter
    on a boolean metadata value matches its integer twin here instead. Keeping
    the twin apart from `metadata` means a string "true" or a number 1 in the
    metadata can never be taken for a boolean.
    """
    pruned = _prune(value)
    return None if pruned is _NO_BOOLS else pruned


def _prune(value: Any) -> Any:
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, Mapping):
        out = {k: p for k, v in value.items() if (p := _prune(v)) is not _NO_BOOLS}
        return out or _NO_BOOLS
    if isinstance(value, list | tuple):
        items = [p for v in value if (p := _prune(v)) is not _NO_BOOLS]
        return items or _NO_BOOLS
    return _NO_BOOLS


# --- conditions ---------------------------------------------------------------

C = TypeVar("C")  # an engine's condition type
F = TypeVar("F")  # an engine's filter type


class Conditions(Protocol[C, F]):
    """Builds one engine's condition objects. Each adapter supplies one; the
    meaning of every condition is decided in this module."""

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

    def one(t: Tenant) -> list[C]:
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

    if len(unique) == 1:
        return one(unique[0])
    return [b.nest(b.filter(should=[b.nest(b.filter(must=one(t))) for t in unique]))]


def alive(b: Conditions[C, F], now: datetime) -> C:
    """Not expired at `now` (expire_time > now)."""
    return b.range(EXPIRE_TIME, gt=float(to_micros(now)))


def expired(b: Conditions[C, F], now: datetime) -> C:
    return b.range(EXPIRE_TIME, lte=float(to_micros(now)))


def created_at(b: Conditions[C, F], us: int) -> C:
    return b.range(CREATE_TIME, gte=float(us), lte=float(us))


def created_before(b: Conditions[C, F], us: int) -> C:
    return b.range(CREATE_TIME, lt=float(us))


def read_filter(
    b: Conditions[C, F],
    tenants: Sequence[Tenant],
    now: datetime,
    flt: Filter | None = None,
    extra: Sequence[C] = (),
) -> F:
    """The filter of a read: the tenants, not expired, the user's filter, `extra`."""
    must = [*tenant_conditions(b, tenants), alive(b, now), *extra]
    if flt is not None and not flt.empty:
        must.append(b.nest(translate(b, flt)))
    return b.filter(must=must)


def translate(b: Conditions[C, F], flt: Filter) -> F:
    """A domain filter as an engine filter. Raises InvalidArgument for a field
    that may not be filtered on, or a condition that does not fit its field."""
    return b.filter(
        must=[_condition(b, c) for c in flt.must],
        should=[_condition(b, c) for c in flt.should],
        must_not=[_condition(b, c) for c in flt.must_not],
    )


def _condition(b: Conditions[C, F], c: Condition) -> C:
    if isinstance(c, Filter):
        return b.nest(translate(b, c))
    kind, key = _field(c.field)
    if isinstance(c, Match):
        return _match(b, c.field, kind, key, c.value)
    if isinstance(c, MatchAny):
        return _match_any(b, c.field, kind, key, c.values)
    if isinstance(c, NumberRange):
        if kind != "metadata":
            raise _bad(c.field, "a number range applies to metadata values only")
        bounds = (c.gt, c.gte, c.lt, c.lte)
        if any(v is not None and not math.isfinite(v) for v in bounds):
            raise _bad(c.field, "range bounds must be finite numbers")
        return b.range(key, gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte)
    if isinstance(c, TimeRange):
        if kind != "time":
            raise _bad(c.field, "a time range applies to create_time and update_time only")
        return b.range(
            key,
            gte=None if c.start is None else float(to_micros(c.start)),
            lt=None if c.end is None else float(to_micros(c.end)),
        )
    raise TypeError(f"not a filter condition: {c!r}")


def _match(
    b: Conditions[C, F], name: str, kind: str, key: str, value: str | int | float | bool
) -> C:
    if kind == "time":
        raise _bad(name, "times are matched with a time range")
    if kind == "keyword":
        if not isinstance(value, str):
            raise _bad(name, "this field holds strings")
        return b.match(key, value)
    # metadata
    if isinstance(value, bool):
        return b.match(METADATA_BOOLS + key[len(METADATA) :], 1 if value else 0)
    if isinstance(value, str):
        return b.match(key, value)
    if not math.isfinite(value):
        raise _bad(name, "numbers must be finite")
    # A range, not MatchValue: metadata numbers arrive as doubles from a
    # protobuf Struct, and 3 must match a stored 3.0 as well as a stored 3.
    return b.range(key, gte=float(value), lte=float(value))


def _match_any(
    b: Conditions[C, F], name: str, kind: str, key: str, values: tuple[str | int, ...]
) -> C:
    if kind == "time":
        raise _bad(name, "times are matched with a time range")
    strings = [v for v in values if isinstance(v, str)]
    if kind == "keyword":
        if len(strings) != len(values):
            raise _bad(name, "this field holds strings")
        return b.match_any(key, strings)
    others = [v for v in values if not isinstance(v, str)]
    if not others:
        return b.match_any(key, strings)
    alternatives = [_match(b, name, kind, key, v) for v in others]
    if strings:
        alternatives.append(b.match_any(key, strings))
    return b.nest(b.filter(should=alternatives))


def _field(name: str) -> tuple[str, str]:
    """(kind, payload path) of a filterable field."""
    if name in FILTER_KEYWORD_FIELDS:
        return "keyword", name
    if name in FILTER_TIME_FIELDS:
        return "time", name
    if name.startswith(METADATA_PREFIX):
        parts = name[len(METADATA_PREFIX) :].split(".")
        if all(parts) and not any(c in p for p in parts for c in METADATA_KEY_FORBIDDEN):
            # Dots nest; other characters are quoted so that a key like
            # "a b" or "x[0]" is one literal key, not path syntax.
            return "metadata", ".".join(
                [METADATA, *(p if _PLAIN_KEY.match(p) else f'"{p}"' for p in parts)]
            )
        raise _bad(name, "a metadata key is non-empty dot-separated names without '\"' or '\\'")
    allowed = ", ".join(sorted(FILTER_KEYWORD_FIELDS | FILTER_TIME_FIELDS))
    raise _bad(name, f"cannot filter on this field; use one of {allowed} or metadata.<key>")


def _bad(name: str, description: str) -> InvalidArgument:
    return InvalidArgument.field(f"filter.{name}", description)


@dataclass(frozen=True)
class Point:
    """A point to write: canonical UUID id, vector, payload."""

    id: str
    vector: list[float]
    payload: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    """A point read back. `score` is 0.0 outside a search."""

    id: str
    payload: Mapping[str, Any]
    vector: list[float] | None = None
    score: float = 0.0


def owners(found: Iterable[Any]) -> dict[str, tuple[str, str]]:
    """Point id → (tenant key, end user id), from engine records with payloads."""
    return {
        str(r.id): ((r.payload or {}).get(TENANT, ""), (r.payload or {}).get(END_USER_ID, ""))
        for r in found
    }
