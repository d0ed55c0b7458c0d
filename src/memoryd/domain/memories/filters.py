"""The filter rule of every method that takes one (list, search, purge,
export), and the one nesting limit of a filter for the API and the domain."""

from __future__ import annotations

import math

from memoryd.domain.errors import FieldViolation, InvalidArgument, Violations
from memoryd.domain.memories.validation import KEY_HELP
from memoryd.domain.memory import (
    FILTER_KEYWORD_FIELDS,
    FILTER_TIME_FIELDS,
    METADATA_KEY_FORBIDDEN,
    METADATA_PREFIX,
    Filter,
    Match,
    MatchAny,
    NumberRange,
    TimeRange,
)

MAX_FILTER_CONDITIONS = 64
# The one nesting limit of a filter (the top level is 1), for the API and the
# domain alike; it was already the effective limit before the API deferred to it.
MAX_FILTER_DEPTH = 4
FILTER_INVALID = "FILTER_INVALID"


def validate_filter(flt: Filter, name: str = "filter") -> None:
    """The filter rule of every method that takes one (list, search, purge,
    export): known fields only (never a tenant field), a condition that fits
    its field, metadata keys a filter path can name, at most
    MAX_FILTER_DEPTH levels and MAX_FILTER_CONDITIONS conditions. Raises
    InvalidArgument with a violation per bad part. The storage adapters
    refuse tenant fields again, as a second line."""
    v = Violations()
    count = _walk(flt, name, 1, v)
    if count > MAX_FILTER_CONDITIONS:
        v.items.insert(
            0, FieldViolation(name, f"has {count} conditions; at most {MAX_FILTER_CONDITIONS}")
        )
    raise_filter_violations(v)


def raise_filter_violations(v: Violations) -> None:
    """Raises InvalidArgument (reason FILTER_INVALID) when `v` holds any."""
    if v.items:
        items = v.items
        detail = "; ".join(f"{x.field}: {x.description}" for x in items)
        raise InvalidArgument(f"the filter is invalid: {detail}", items, reason=FILTER_INVALID)


def _walk(flt: Filter, name: str, depth: int, v: Violations) -> int:
    if depth > MAX_FILTER_DEPTH:
        v.add(name, f"nests deeper than {MAX_FILTER_DEPTH} levels")
        return 0
    count = 0
    for group in ("must", "should", "must_not"):
        for i, cond in enumerate(getattr(flt, group)):
            here = f"{name}.{group}[{i}]"
            count += 1
            if isinstance(cond, Filter):
                count += _walk(cond, f"{here}.filter", depth + 1, v)
                continue
            _check_condition(cond, here, v)
    return count


_FIELD_HELP = (
    "must be agent_id, thread_id, source, tags, end_user_id, create_time, update_time "
    "or metadata.<key>"
)


def _check_condition(
    cond: Match | MatchAny | NumberRange | TimeRange, name: str, v: Violations
) -> None:
    f = cond.field
    is_meta = f.startswith(METADATA_PREFIX) and len(f) > len(METADATA_PREFIX)
    if f not in FILTER_KEYWORD_FIELDS and f not in FILTER_TIME_FIELDS and not is_meta:
        v.add(f"{name}.field", f"{f!r} cannot be filtered on; {_FIELD_HELP}")
        return
    if is_meta:
        parts = f[len(METADATA_PREFIX) :].split(".")
        if not all(parts) or any(c in p for p in parts for c in METADATA_KEY_FORBIDDEN):
            v.add(
                f"{name}.field",
                f"{f!r}: metadata.<key> names dot-separated keys, none empty; " + KEY_HELP,
            )
            return
    if isinstance(cond, TimeRange):
        if f not in FILTER_TIME_FIELDS:
            v.add(f"{name}.time_range", "applies to create_time or update_time only")
        elif cond.start and cond.end and cond.start >= cond.end:
            v.add(f"{name}.time_range", "start_time must be before end_time")
        return
    if f in FILTER_TIME_FIELDS:
        v.add(f"{name}.field", f"{f} takes a time_range condition")
        return
    if isinstance(cond, NumberRange):
        if not is_meta:
            v.add(f"{name}.range", "applies to metadata.<key> numbers only")
        bounds = [b for b in (cond.gt, cond.gte, cond.lt, cond.lte) if b is not None]
        if not bounds:
            v.add(f"{name}.range", "needs at least one bound")
        elif not all(math.isfinite(b) for b in bounds):
            v.add(f"{name}.range", "bounds must be finite numbers")
        return
    if isinstance(cond, Match):
        if not is_meta and not isinstance(cond.value, str):
            v.add(f"{name}.equals", f"{f} is a string field")
        elif isinstance(cond.value, float) and not math.isfinite(cond.value):
            v.add(f"{name}.equals", "must be a finite number")
        return
    if not cond.values:
        v.add(f"{name}.any_of", "needs at least one value")
    elif not is_meta and not all(isinstance(x, str) for x in cond.values):
        v.add(f"{name}.any_of", f"{f} is a string field")
