"""Domain filters (`memoryd.domain.memory.Filter`) as engine filters.

A domain filter can name only the fields in `FILTER_KEYWORD_FIELDS`,
`FILTER_TIME_FIELDS` and `metadata.<key>`, never a tenant field; a field or
a condition that does not fit raises InvalidArgument naming
`filter.<field>`.
"""

from __future__ import annotations

import math
import re

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
    NumberRange,
    TimeRange,
)
from memoryd.storage.vectors.conditions import C, Conditions, F
from memoryd.storage.vectors.layout import METADATA, METADATA_BOOLS, to_micros

# A metadata key segment Qdrant's JSON path accepts unquoted.
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


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
