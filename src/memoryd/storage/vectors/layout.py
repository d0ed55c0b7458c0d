"""Memory points as both Qdrant adapters store them: the payload layout, the
payload indexes, and the conversions between a `MemoryRecord` and a point.

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
    valid_time                           the same: since when the memory holds
    invalid_time                         the same, or NO_EXPIRY while it still holds
    superseded_by                        the id of the memory that replaced it (absent: none)
    origin                               its provenance, the non-empty fields of `Origin`
                                         (absent when all are empty)
    revision, revisions                  the revision number; past states, newest first
    layout                               LAYOUT, the version of this layout

Times are integers so that ranges and ordering are exact in every engine (a
datetime index would round differently in each), and "no expiry" (or "never
invalid") is a real number so that "not expired" (or "still holds") is one
range condition on an indexed field.

Layout 1 had no valid_time, invalid_time, superseded_by nor origin; such a
point reads as holding since its creation, and `upgrade` gives the fields a
point of it lacks (a range condition on a missing field matches nothing, so
until then reads by validity would not see it).

`INDEXES` is the one plan of the payload indexes; each adapter only says
how its engine spells each `IndexKind`.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from memoryd.domain.memory import MemoryRecord, Origin, Revision
from memoryd.domain.tenancy import Tenant

LAYOUT = 3

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
VALID_TIME = "valid_time"
INVALID_TIME = "invalid_time"
SUPERSEDED_BY = "superseded_by"
ORIGIN = "origin"
REVISION = "revision"
REVISIONS = "revisions"
LAYOUT_FIELD = "layout"


class IndexKind(enum.Enum):
    """How a payload field is indexed."""

    TENANT = "tenant"  # keyword, is_tenant: the engine keeps each tenant's points together
    KEYWORD = "keyword"  # exact match, no HNSW links of its own
    INTEGER = "integer"  # ranges only (no exact lookups), no HNSW links of its own


INDEXES: Mapping[str, IndexKind] = {
    TENANT: IndexKind.TENANT,
    # the filterable strings, and the organization and project (deleting a
    # project's points)
    **dict.fromkeys(
        (END_USER_ID, AGENT_ID, THREAD_ID, SOURCE, TAGS, ORG_ID, PROJECT_ID), IndexKind.KEYWORD
    ),
    # ordering (create_time), expiry, time filters, time of truth
    **dict.fromkeys(
        (CREATE_TIME, UPDATE_TIME, EXPIRE_TIME, VALID_TIME, INVALID_TIME), IndexKind.INTEGER
    ),
}

# 2**53 - 1 µs is in the year 2255: far enough to mean "never", and still
# exact as a float, which is how range bounds travel in both engines.
NO_EXPIRY = 2**53 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


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


# --- payload ----------------------------------------------------------------


def to_payload(record: MemoryRecord) -> dict[str, Any]:
    """The payload of a record's point (its vector travels separately)."""
    t = record.tenant
    expire = NO_EXPIRY if record.expire_time is None else to_micros(record.expire_time)
    invalid = NO_EXPIRY if record.invalid_time is None else to_micros(record.invalid_time)
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
        VALID_TIME: to_micros(record.valid_time or record.create_time),
        INVALID_TIME: min(invalid, NO_EXPIRY),
        REVISION: record.revision,
        REVISIONS: [_revision_to_payload(r) for r in record.revisions],
        LAYOUT_FIELD: LAYOUT,
    }
    bools = _bool_leaves(record.metadata)
    if bools:
        payload[METADATA_BOOLS] = bools
    if record.superseded_by:
        payload[SUPERSEDED_BY] = record.superseded_by
    origin = _origin_to_payload(record.origin)
    if origin:
        payload[ORIGIN] = origin
    return payload


def environment_of(payload: Mapping[str, Any]) -> tuple[str, str, str]:
    """(org, project, environment) of a point's payload."""
    return (payload[ORG_ID], payload[PROJECT_ID], payload[ENVIRONMENT_ID])


def upgrade(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The fields to set on a point of layout 1 to bring it to this layout:
    it holds since its creation, and still does."""
    return {VALID_TIME: payload[CREATE_TIME], INVALID_TIME: NO_EXPIRY, LAYOUT_FIELD: LAYOUT}


def from_payload(
    pid: str,
    payload: Mapping[str, Any],
    vector: Sequence[float] | None = None,
    *,
    with_revisions: bool,
) -> MemoryRecord:
    """The record of a point read back; its `revisions` stay empty unless
    `with_revisions` (decoding a whole history is wasted on a search or a
    list, which never show it)."""
    revisions = payload.get(REVISIONS) if with_revisions else None
    expire = int(payload[EXPIRE_TIME])
    # A point of layout 1 holds since its creation, and still does.
    invalid = int(payload.get(INVALID_TIME, NO_EXPIRY))
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
        revisions=tuple(_revision_from_payload(r) for r in revisions or ()),
        valid_time=from_micros(payload.get(VALID_TIME, payload[CREATE_TIME])),
        invalid_time=None if invalid >= NO_EXPIRY else from_micros(invalid),
        superseded_by=payload.get(SUPERSEDED_BY, ""),
        origin=_origin_from_payload(payload.get(ORIGIN) or {}),
    )


def _revision_to_payload(r: Revision) -> dict[str, Any]:
    out = {
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
    if r.valid_time is not None:
        out["valid_time"] = to_micros(r.valid_time)
    if r.invalid_time is not None:
        out["invalid_time"] = to_micros(r.invalid_time)
    return out


def _revision_from_payload(p: Mapping[str, Any]) -> Revision:
    valid, invalid = p.get("valid_time"), p.get("invalid_time")
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
        valid_time=None if valid is None else from_micros(valid),
        invalid_time=None if invalid is None else from_micros(invalid),
    )


def _origin_to_payload(o: Origin) -> dict[str, Any]:
    """The non-empty fields of `o` (sequences as lists)."""
    out: dict[str, Any] = {}
    for f in fields(o):
        value = getattr(o, f.name)
        if value:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _origin_from_payload(p: Mapping[str, Any]) -> Origin:
    return Origin(
        operation_id=p.get("operation_id", ""),
        message_indexes=tuple(int(i) for i in p.get("message_indexes") or ()),
        thread_id=p.get("thread_id", ""),
        extractor=p.get("extractor", ""),
        extractor_version=p.get("extractor_version", ""),
        prompt_versions=tuple(p.get("prompt_versions") or ()),
        writer_key_id=p.get("writer_key_id", ""),
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


@dataclass(frozen=True)
class Point:
    """A point to write: canonical UUID id, vector, payload, and the
    keyword vector of its content (`ranking.KEYWORDS`; None: no word of
    it counts) as (indices, values)."""

    id: str
    vector: list[float]
    payload: dict[str, Any]
    keywords: tuple[tuple[int, ...], tuple[float, ...]] | None = None


@dataclass(frozen=True)
class Hit:
    """A point read back. `score` is 0.0 outside a search."""

    id: str
    payload: Mapping[str, Any]
    vector: list[float] | None = None
    score: float = 0.0


def dense_vector(v: Any) -> list[float] | None:
    """The default (unnamed) dense vector of a point read back (either
    engine's form: a list of floats, or named vectors with "" the default)."""
    if v is None:
        return None
    if isinstance(v, dict):
        v = v.get("")
        if v is None:
            return None
    return [float(x) for x in v]


def owners(found: Iterable[Any]) -> dict[str, tuple[str, str]]:
    """Point id → (tenant key, end user id), from engine records with payloads."""
    return {
        str(r.id): ((r.payload or {}).get(TENANT, ""), (r.payload or {}).get(END_USER_ID, ""))
        for r in found
    }
