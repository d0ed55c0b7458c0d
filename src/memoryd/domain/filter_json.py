"""A structured `Filter` as JSON and back, for what keeps a filter to apply
later: a webhook's filter (in the control store), an export job's (in its
operation's payload)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from memoryd.domain.memory import Condition, Filter, Match, MatchAny, NumberRange, TimeRange


def filter_to_json(flt: Filter) -> dict[str, Any]:
    """`flt` as a JSON object (`filter_from_json` reads it back)."""
    return {
        g: [_condition_json(c) for c in getattr(flt, g)] for g in ("must", "should", "must_not")
    }


def _condition_json(c: Condition) -> dict[str, Any]:
    if isinstance(c, Filter):
        return {"filter": filter_to_json(c)}
    if isinstance(c, Match):
        return {"field": c.field, "equals": c.value}
    if isinstance(c, MatchAny):
        return {"field": c.field, "any_of": list(c.values)}
    if isinstance(c, NumberRange):
        bounds = {"gt": c.gt, "gte": c.gte, "lt": c.lt, "lte": c.lte}
        return {"field": c.field, "range": {k: v for k, v in bounds.items() if v is not None}}
    times = {"start": c.start, "end": c.end}
    return {
        "field": c.field,
        "time_range": {k: v.isoformat() for k, v in times.items() if v is not None},
    }


def filter_from_json(data: dict[str, Any]) -> Filter:
    return Filter(
        **{
            g: tuple(_condition_from(c) for c in data.get(g, ()))
            for g in ("must", "should", "must_not")
        }
    )


def _condition_from(d: dict[str, Any]) -> Condition:
    if "filter" in d:
        return filter_from_json(d["filter"])
    if "equals" in d:
        return Match(d["field"], d["equals"])
    if "any_of" in d:
        return MatchAny(d["field"], tuple(d["any_of"]))
    if "range" in d:
        return NumberRange(d["field"], **d["range"])
    t = d["time_range"]
    return TimeRange(
        d["field"],
        start=datetime.fromisoformat(t["start"]) if "start" in t else None,
        end=datetime.fromisoformat(t["end"]) if "end" in t else None,
    )
