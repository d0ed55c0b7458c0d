"""Dedupe on write: an item asking for it is not stored when a memory of its
tenant (reaching the same end users) that holds now, or an earlier item of
the same write (a batch or an import chunk), is similar enough to it.

Among the items of one write the rule is sequential: an item is a duplicate
of an earlier item that was kept (not itself a duplicate). Comparing each
item with every earlier one in Python was quadratic in pure-Python
arithmetic (~15 s for 1,000 384-d vectors); here the cosine similarities
of a block of items against every earlier item are one matrix product, and
only the cheap "which earlier item was kept" walk is sequential.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np

from memoryd.domain.control import Project
from memoryd.domain.memories.model import NewMemory
from memoryd.domain.memory import CURRENT, Filter, Match, MemoryRecord, VectorStore
from memoryd.domain.tenancy import Tenant

DEFAULT_DEDUPE_THRESHOLD = 0.95

# Rows of the similarity matrix computed at once: bounds the memory to
# BLOCK x n floats (n <= 1,000 for a batch) while keeping one matrix
# product per block.
BLOCK = 256


def first_near_duplicates(
    vectors: Sequence[Sequence[float]],
    thresholds: Sequence[float | None],
    excluded: Sequence[bool],
) -> list[int | None]:
    """For each item i, the index of the earlier kept item it duplicates, or None.

    Contract (the same results as comparing item by item):
    - Item i is checked only when `thresholds[i]` is not None; it is then a
      duplicate of the kept item j < i whose cosine similarity with it is the
      highest and at least `thresholds[i]` (on a tie, the later j).
    - Kept items are those neither excluded (e.g. already a duplicate of a
      stored memory) nor duplicates themselves; items without a threshold are
      kept unless excluded.
    - A zero vector is similar to nothing (cosine 0).
    All vectors must have the same length.
    """
    n = len(vectors)
    out: list[int | None] = [None] * n
    if n == 0 or all(t is None for t in thresholds):
        return out
    matrix = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1)
    norms[norms == 0.0] = 1.0  # a zero row stays zero: cosine 0 with everything
    unit = matrix / norms[:, None]
    kept = np.array([not e for e in excluded], dtype=bool)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        # similarities of this block's items with every item before its end
        scores = unit[start:stop] @ unit[:stop].T
        for i in range(start, stop):
            threshold = thresholds[i]
            if threshold is None or i == 0:
                continue
            row = scores[i - start, :i]
            candidates = np.flatnonzero(kept[:i] & (row >= threshold))
            if candidates.size == 0:
                continue
            best = row[candidates]
            out[i] = int(candidates[np.flatnonzero(best == best.max())[-1]])
            kept[i] = False
    return out


def dedupe_threshold(project: Project, item: NewMemory) -> float:
    """The item's threshold, else the project's, else the server's."""
    return item.dedupe_threshold or project.settings.dedupe_threshold or DEFAULT_DEDUPE_THRESHOLD


async def duplicates(
    store: VectorStore,
    tenant: Tenant,
    project: Project,
    items: Sequence[NewMemory],
    vectors: Sequence[Sequence[float]],
    now: datetime,
) -> list[MemoryRecord | int | None]:
    """For each item asking for dedupe: the stored memory it duplicates, or
    else the index of the earlier kept item of `items` it duplicates; None
    for an item to store."""
    stored = [
        await _stored_duplicate(store, tenant, dedupe_threshold(project, item), vector, now)
        if item.dedupe
        else None
        for item, vector in zip(items, vectors, strict=True)
    ]
    # An earlier item of this same write is not stored yet: compare with those too.
    earlier = first_near_duplicates(
        vectors,
        [
            dedupe_threshold(project, item) if item.dedupe and hit is None else None
            for item, hit in zip(items, stored, strict=True)
        ],
        excluded=[hit is not None for hit in stored],
    )
    return [hit if hit is not None else e for hit, e in zip(stored, earlier, strict=True)]


async def _stored_duplicate(
    store: VectorStore, tenant: Tenant, threshold: float, vector: Sequence[float], now: datetime
) -> MemoryRecord | None:
    # Without an end user, compare only with memories that have none either.
    flt = Filter() if tenant.end_user_id else Filter(must=(Match("end_user_id", ""),))
    # A memory that no longer holds is history: a new item like it is new truth.
    hits = await store.search([tenant], vector, flt, 1, now, min_score=threshold, validity=CURRENT)
    return hits[0].record if hits else None
