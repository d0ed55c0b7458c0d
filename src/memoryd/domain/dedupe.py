"""Near-duplicates among the items of one write (a batch or an import chunk).

The rule is sequential: an item is a duplicate of an earlier item that was
kept (not itself a duplicate). Comparing each item with every earlier one in
Python was quadratic in pure-Python arithmetic (~15 s for 1,000 384-d
vectors); here the cosine similarities of a block of items against every
earlier item are one matrix product, and only the cheap "which earlier item
was kept" walk is sequential.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
