"""A memory as the JSON object of its API form: what the change log keeps
of a memory with each event (`memoryd.domain.changes`), and what a webhook
payload or a watcher's event is built from.

The form is the proto3 JSON mapping of `memoryd.v1.Memory` with the
proto's field names (`agent_id`, not `agentId`): timestamps as RFC 3339
strings in UTC, `revision` as a JSON number, every string and list field
present (empty when so), `expire_time` and `invalid_time` absent while the
memory never expires or still holds, `origin` absent when it names
nothing. Neither the vector nor past revisions are kept. The organization
is not part of it (a memory's API form has none): the event's tenant
carries it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from memoryd.domain.memory import MemoryRecord, Origin
from memoryd.domain.tenancy import Tenant

_OPERATIONS = "operations/"


def memory_json(r: MemoryRecord) -> dict[str, Any]:
    """`r` in its API form (see the module)."""
    out: dict[str, Any] = {
        "id": r.id,
        "content": r.content,
        "metadata": dict(r.metadata),
        "agent_id": r.agent_id,
        "thread_id": r.thread_id,
        "source": r.source,
        "tags": list(r.tags),
        "end_user_id": r.tenant.end_user_id,
        "project_id": r.tenant.project_id,
        "environment_id": r.tenant.environment_id,
        "create_time": _time(r.create_time),
        "update_time": _time(r.update_time),
        "revision": r.revision,
        "valid_time": _time(r.valid_time or r.create_time),
        "superseded_by": r.superseded_by,
    }
    if r.expire_time is not None:
        out["expire_time"] = _time(r.expire_time)
    if r.invalid_time is not None:
        out["invalid_time"] = _time(r.invalid_time)
    if r.origin != Origin():
        out["origin"] = _origin_json(r.origin)
    return out


def memory_from_json(d: Mapping[str, Any], tenant: Tenant) -> MemoryRecord:
    """The record of a memory in its API form; `tenant` is its owner (the
    event's tenant: the form has no organization)."""
    created = _parse(d["create_time"])
    return MemoryRecord(
        id=d["id"],
        tenant=tenant,
        content=d.get("content", ""),
        metadata=d.get("metadata") or {},
        agent_id=d.get("agent_id", ""),
        thread_id=d.get("thread_id", ""),
        source=d.get("source", ""),
        tags=tuple(d.get("tags") or ()),
        create_time=created,
        update_time=_parse(d.get("update_time") or d["create_time"]),
        expire_time=_parse(d["expire_time"]) if d.get("expire_time") else None,
        revision=int(d.get("revision", 0)),
        valid_time=_parse(d["valid_time"]) if d.get("valid_time") else created,
        invalid_time=_parse(d["invalid_time"]) if d.get("invalid_time") else None,
        superseded_by=d.get("superseded_by", ""),
        origin=_origin_from_json(d.get("origin") or {}),
    )


def _time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _origin_json(o: Origin) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if o.operation_id:
        out["operation"] = _OPERATIONS + o.operation_id
    if o.message_indexes:
        out["message_indexes"] = list(o.message_indexes)
    for name in ("thread_id", "extractor", "extractor_version"):
        if getattr(o, name):
            out[name] = getattr(o, name)
    if o.prompt_versions:
        out["prompt_versions"] = list(o.prompt_versions)
    if o.writer_key_id:
        out["writer_key_id"] = o.writer_key_id
    return out


def _origin_from_json(d: Mapping[str, Any]) -> Origin:
    return Origin(
        operation_id=str(d.get("operation", "")).removeprefix(_OPERATIONS),
        message_indexes=tuple(int(i) for i in d.get("message_indexes") or ()),
        thread_id=d.get("thread_id", ""),
        extractor=d.get("extractor", ""),
        extractor_version=d.get("extractor_version", ""),
        prompt_versions=tuple(d.get("prompt_versions") or ()),
        writer_key_id=d.get("writer_key_id", ""),
    )
