"""Keyset paging over (time, id) for the control plane's List calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa


def keyset(
    q: sa.Select[Any],
    time_col: sa.ColumnElement[Any],
    id_col: sa.ColumnElement[Any],
    after: tuple[str, str] | None,
    limit: int,
    *,
    descending: bool,
) -> sa.Select[Any]:
    """`q` ordered by (time, id), strictly after the keyset position `after`,
    one row beyond `limit` so that `next_after` can tell whether more follow."""
    if after is not None:
        t = datetime.fromisoformat(after[0])
        if descending:
            q = q.where(sa.or_(time_col < t, sa.and_(time_col == t, id_col < after[1])))
        else:
            q = q.where(sa.or_(time_col > t, sa.and_(time_col == t, id_col > after[1])))
    order = (time_col.desc(), id_col.desc()) if descending else (time_col, id_col)
    return q.order_by(*order).limit(limit + 1)


def next_after(
    items: Sequence[Any], limit: int, fetched: int, key: Callable[[Any], tuple[datetime, str]]
) -> tuple[str, str] | None:
    """The keyset position of the last of `items` when `keyset` fetched more
    rows than `limit` (a next page exists), else None."""
    if fetched <= limit or not items:
        return None
    t, ident = key(items[-1])
    return (t.isoformat(), ident)
