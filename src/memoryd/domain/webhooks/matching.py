"""Which webhooks an event goes to, and what they are sent.

An event goes to a webhook of its own environment when the webhook reaches
the event's end user (`Webhook.reach`), was created before the event (its
`start_seq`), takes the event's type, and its filter holds for the event's
memory (after the change; for a deletion, its last state). An event that
carries no memory passes every filter. A deletion (DELETED, PURGED,
EXPIRED) is sent with the memory's id only, never its last state.

Alerts (`memoryd.domain.alerts`: QUOTA_REACHED, RATE_LIMITED) go only to
webhooks that name their type (a webhook naming no types receives every
memory event, not alerts: a receiver that syncs memories is not sent
events it does not know) and that reach every end user of the
environment (an alert is about the environment); filters, which are about
memories, do not apply to them.

Document events (DOCUMENT_READY, DOCUMENT_FAILED, DOCUMENT_DELETED) go,
like alerts, only to webhooks that name their type, and like memory
events only to webhooks that reach the document's end user; memory
filters do not apply to them.

The filter is the memory filter of ListMemories, meaning what it means to
the vector store (`memoryd.domain.memories.matching`, held to the engine).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from memoryd.domain.changes import ALERTS, DOCUMENT_EVENTS, ChangeEvent, EventType
from memoryd.domain.memories.matching import matches
from memoryd.domain.memories.snapshot import memory_from_json
from memoryd.domain.memory import Filter
from memoryd.domain.webhooks.model import NewDelivery, Webhook

# Fields of a memory's API form a webhook payload never carries: the vector
# is large and says nothing a receiver can use.
_LEFT_OUT = frozenset({"embedding"})
# Events whose memory is gone: sent with its id only.
DELETIONS = frozenset({EventType.DELETED, EventType.PURGED, EventType.EXPIRED})


def _holds(flt: Filter, event: ChangeEvent) -> bool:
    """Whether `flt` holds for the event's memory (none: it holds), as the
    vector store would decide it (`memoryd.domain.memories.matching`)."""
    if flt.empty or event.memory is None:
        return True
    try:
        record = memory_from_json(event.memory, event.tenant)
    except (KeyError, TypeError, ValueError):  # not a memory's API form
        return False
    return matches(flt, record)


def receives(webhook: Webhook, event: ChangeEvent) -> bool:
    """Whether `event` goes to `webhook` (see the module)."""
    if event.seq <= webhook.start_seq:
        return False
    if not webhook.reach.sees(event.tenant.key, event.tenant.end_user_id):
        return False
    if event.type in ALERTS or event.type in DOCUMENT_EVENTS:
        return event.type in webhook.event_types
    if webhook.event_types and event.type not in webhook.event_types:
        return False
    return _holds(webhook.filter, event)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def payload(event: ChangeEvent) -> str:
    """The JSON body sent for `event`: what its environment may read of it,
    the memory after the change (only its id for a deletion) and what
    caused it; for an alert, its details (resource, threshold_percent, used,
    limit, environment_id; or, for rate limiting, refused_for_seconds)."""
    if event.type in ALERTS:
        return _dumps(
            {
                "type": f"alert.{event.type.value.lower()}",
                "timestamp": rfc3339(event.time),
                "data": {
                    **event.details,
                    "project_id": event.tenant.project_id,
                    "environment_id": event.tenant.environment_id,
                    "time": rfc3339(event.time),
                },
            }
        )
    if event.type in DOCUMENT_EVENTS:
        kind = event.type.value.removeprefix("DOCUMENT_").lower()
        return _dumps(
            {
                "type": f"document.{kind}",
                "timestamp": rfc3339(event.time),
                "data": {
                    **event.details,
                    "end_user_id": event.tenant.end_user_id,
                    "operation_id": event.operation_id,
                    "request_id": event.request_id,
                    "time": rfc3339(event.time),
                },
            }
        )
    data: dict[str, Any] = {
        "type": event.type.value,
        "memory_id": event.memory_id,
        "end_user_id": event.tenant.end_user_id,
        "operation_id": event.operation_id,
        "request_id": event.request_id,
        "time": rfc3339(event.time),
    }
    if event.memory is not None and event.type not in DELETIONS:
        data["memory"] = {k: v for k, v in event.memory.items() if k not in _LEFT_OUT}
    body = {
        "type": f"memory.{event.type.value.lower()}",
        "timestamp": rfc3339(event.time),
        "data": data,
    }
    return _dumps(body)


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def plan(
    events: Sequence[ChangeEvent],
    webhooks: Sequence[Webhook],
    now: datetime,
    max_age: timedelta,
    new_id: Any,
) -> list[NewDelivery]:
    """A delivery for each (event, webhook) where the event goes to the
    webhook, in event order; `new_id()` names each."""
    by_environment: dict[str, list[Webhook]] = {}
    for w in webhooks:
        by_environment.setdefault(w.tenant.key, []).append(w)
    out: list[NewDelivery] = []
    for event in events:
        body: str | None = None
        for w in by_environment.get(event.tenant.key, ()):
            if not receives(w, event):
                continue
            body = body if body is not None else payload(event)
            out.append(
                NewDelivery(
                    id=new_id(),
                    webhook_id=w.id,
                    tenant=w.tenant,
                    event_seq=event.seq,
                    event_type=event.type,
                    memory_id=event.memory_id,
                    event_time=event.time,
                    payload=body,
                    create_time=now,
                    expire_time=now + max_age,
                    subject_end_user_id=event.tenant.end_user_id,
                )
            )
    return out
