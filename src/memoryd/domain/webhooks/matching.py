"""Which webhooks an event goes to, and what they are sent.

An event goes to a webhook of its own environment when the webhook reaches
the event's end user (`Webhook.reach`), was created before the event (its
`start_seq`), takes the event's type, and its filter holds for the event's
memory (after the change; for a deletion, its last state). An event that
carries no memory passes every filter. A deletion (DELETED, PURGED,
EXPIRED) is sent with the memory's id only, never its last state.

The filter is the memory filter of ListMemories, evaluated here on the
memory's API form (JSON) as the vector engine evaluates it on a point:
keyword fields equal, `tags` and metadata arrays match any element, numbers
compare as numbers (3 equals 3.0, never `true`), times are half-open ranges.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from memoryd.domain.changes import ChangeEvent, EventType
from memoryd.domain.memory import (
    METADATA_PREFIX,
    Condition,
    Filter,
    Match,
    MatchAny,
    NumberRange,
    TimeRange,
)
from memoryd.domain.webhooks.model import NewDelivery, Webhook

# Fields of a memory's API form a webhook payload never carries: the vector
# is large and says nothing a receiver can use.
_LEFT_OUT = frozenset({"embedding"})
# Events whose memory is gone: sent with its id only.
DELETIONS = frozenset({EventType.DELETED, EventType.PURGED, EventType.EXPIRED})


def matches(flt: Filter, memory: Mapping[str, Any]) -> bool:
    """Whether `flt` holds for `memory` (its API form as JSON)."""
    if not all(_holds(c, memory) for c in flt.must):
        return False
    if flt.should and not any(_holds(c, memory) for c in flt.should):
        return False
    return not any(_holds(c, memory) for c in flt.must_not)


def _holds(cond: Condition, memory: Mapping[str, Any]) -> bool:
    if isinstance(cond, Filter):
        return matches(cond, memory)
    values = list(_values(memory, cond.field))
    if isinstance(cond, Match):
        return any(_equal(v, cond.value) for v in values)
    if isinstance(cond, MatchAny):
        return any(_equal(v, want) for v in values for want in cond.values)
    if isinstance(cond, NumberRange):
        return any(_in_range(v, cond) for v in values)
    return any(_in_time_range(v, cond) for v in values)


def _values(memory: Mapping[str, Any], field: str) -> Iterator[Any]:
    """The values `field` names in `memory`, arrays flattened (a missing
    keyword field is the empty string, as the API shows it)."""
    if field.startswith(METADATA_PREFIX):
        yield from _walk(memory.get("metadata"), field[len(METADATA_PREFIX) :].split("."))
        return
    value = memory.get(field, [] if field == "tags" else "")
    yield from value if isinstance(value, list) else [value]


def _walk(node: Any, path: list[str]) -> Iterator[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, path)
        return
    if not path:
        yield node
        return
    if isinstance(node, dict) and path[0] in node:
        yield from _walk(node[path[0]], path[1:])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _equal(have: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return isinstance(want, bool) and isinstance(have, bool) and have == want
    if isinstance(want, str) or isinstance(have, str):
        return isinstance(want, str) and isinstance(have, str) and have == want
    a, b = _number(have), _number(want)
    return a is not None and b is not None and a == b


def _in_range(have: Any, r: NumberRange) -> bool:
    x = _number(have)
    if x is None:
        return False
    return (
        (r.gt is None or x > r.gt)
        and (r.gte is None or x >= r.gte)
        and (r.lt is None or x < r.lt)
        and (r.lte is None or x <= r.lte)
    )


def _in_time_range(have: Any, r: TimeRange) -> bool:
    if not isinstance(have, str) or not have:
        return False
    try:
        t = datetime.fromisoformat(have)
    except ValueError:
        return False
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t
    return (r.start is None or t >= r.start) and (r.end is None or t < r.end)


def receives(webhook: Webhook, event: ChangeEvent) -> bool:
    """Whether `event` goes to `webhook` (see the module)."""
    if event.seq <= webhook.start_seq:
        return False
    if not webhook.reach.sees(event.tenant.key, event.tenant.end_user_id):
        return False
    if webhook.event_types and event.type not in webhook.event_types:
        return False
    return event.memory is None or matches(webhook.filter, event.memory)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def payload(event: ChangeEvent) -> str:
    """The JSON body sent for `event`: what its environment may read of it,
    the memory after the change (only its id for a deletion) and what
    caused it."""
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
                )
            )
    return out
