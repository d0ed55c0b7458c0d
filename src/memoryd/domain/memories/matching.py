"""The structured filter evaluated in process, on one memory: for what is
not in the vector store (a change event's memory, which may be deleted).

It means what the vector store makes of the same filter
(`memoryd.storage.vectors.filters` over Qdrant's payload conditions), and
`tests/integration/test_filter_matching.py` holds the two to it on a real
engine:

- `agent_id`, `thread_id`, `source`, `end_user_id`: the string equals;
  `tags`: the memory has the tag. `any_of`: any of the values.
- `metadata.<a.b>`: the value at that path of nested objects (a list on
  the way names nothing); a list at the end matches when any of its items
  does. A string matches strings only, a number numbers only (3 matches
  3.0), a bool bools only; a `range` applies to numbers.
- `create_time`, `update_time`: `start_time <= t < end_time`.
- A filter: every `must`, at least one `should` (when there are any), no
  `must_not`.

Call `validate_filter` first: a condition that does not fit its field
matches nothing here (the API refuses it before).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from memoryd.domain.memory import (
    METADATA_PREFIX,
    Condition,
    Filter,
    Match,
    MatchAny,
    MemoryRecord,
    NumberRange,
    TimeRange,
)

_MISSING = object()


def matches(flt: Filter, record: MemoryRecord) -> bool:
    """Whether `record` meets `flt` (an empty filter: always)."""
    return (
        all(_meets(c, record) for c in flt.must)
        and (not flt.should or any(_meets(c, record) for c in flt.should))
        and not any(_meets(c, record) for c in flt.must_not)
    )


def _meets(c: Condition, record: MemoryRecord) -> bool:
    if isinstance(c, Filter):
        return matches(c, record)
    if isinstance(c, TimeRange):
        return _in_time_range(c, record)
    values = _values(record, c.field)
    if isinstance(c, Match):
        return any(_same(v, c.value) for v in values)
    if isinstance(c, MatchAny):
        return any(_same(v, want) for v in values for want in c.values)
    return any(_in_range(v, c) for v in values)


def _values(record: MemoryRecord, name: str) -> list[Any]:
    """The values a condition on field `name` tests (several for a list)."""
    if name == "tags":
        return list(record.tags)
    if name in ("agent_id", "thread_id", "source"):
        return [getattr(record, name)]
    if name == "end_user_id":
        return [record.tenant.end_user_id]
    if not name.startswith(METADATA_PREFIX):
        return []
    value: Any = record.metadata
    for key in name[len(METADATA_PREFIX) :].split("."):
        value = value.get(key, _MISSING) if isinstance(value, Mapping) else _MISSING
        if value is _MISSING:
            return []
    return list(value) if isinstance(value, list) else [value]


def _same(value: Any, want: str | int | float | bool) -> bool:
    """`value` equals `want`, kind for kind (a bool is not a number here)."""
    if isinstance(want, bool) or isinstance(value, bool):
        return isinstance(want, bool) and isinstance(value, bool) and value == want
    if isinstance(want, str) or isinstance(value, str):
        return isinstance(want, str) and isinstance(value, str) and value == want
    return _number(value) and float(value) == float(want)


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _in_range(value: Any, r: NumberRange) -> bool:
    if not _number(value):
        return False
    v = float(value)
    return (
        (r.gt is None or v > r.gt)
        and (r.gte is None or v >= r.gte)
        and (r.lt is None or v < r.lt)
        and (r.lte is None or v <= r.lte)
    )


def _in_time_range(r: TimeRange, record: MemoryRecord) -> bool:
    t: datetime | None
    if r.field == "create_time":
        t = record.create_time
    elif r.field == "update_time":
        t = record.update_time
    else:
        return False
    return (r.start is None or t >= r.start) and (r.end is None or t < r.end)
