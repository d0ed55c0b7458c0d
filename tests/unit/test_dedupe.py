"""Near-duplicates inside one write: the matrix version gives the results of
the item-by-item rule it replaced (kept here as the reference)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from memoryd.domain.memories.dedupe import BLOCK, first_near_duplicates


def reference(
    vectors: Sequence[Sequence[float]],
    thresholds: Sequence[float | None],
    excluded: Sequence[bool],
) -> list[int | None]:
    """The former rule, item by item: compare with every earlier kept item
    (cosine), keep the best at or above the threshold, the later on a tie."""
    kept: list[int] = []
    out: list[int | None] = []
    for i, vector in enumerate(vectors):
        best: int | None = None
        threshold = thresholds[i]
        if threshold is not None:
            best_score = threshold
            norm = math.sqrt(sum(x * x for x in vector))
            for j in kept:
                other = vectors[j]
                scale = norm * math.sqrt(sum(x * x for x in other))
                score = sum(a * b for a, b in zip(vector, other, strict=True)) / scale
                if score >= best_score:
                    best, best_score = j, score
        out.append(best)
        if best is None and not excluded[i]:
            kept.append(i)
    return out


def clustered(
    rng: random.Random, n: int, dim: int, centres: int, noise: float
) -> list[list[float]]:
    """`n` vectors around a few centres: many near duplicates at any threshold."""
    bases = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(centres)]
    return [[x + rng.gauss(0, noise) for x in rng.choice(bases)] for _ in range(n)]


def test_crafted_cases_match_the_item_by_item_rule() -> None:
    a, b = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    tilted = [1.0, 0.3, 0.0]  # cosine ~0.958 with a
    vectors = [
        a,  # 0 kept
        [2.0, 0.0, 0.0],  # 1 same direction as 0: duplicate of 0
        b,  # 2 no threshold: kept although nothing is checked
        [0.0, 3.0, 0.0],  # 3 duplicate of 2 (an item without dedupe is still a target)
        tilted,  # 4 duplicate of 0 at 0.95, not at 0.99
        tilted,  # 5 threshold 0.99: kept
        [1.0, 0.3, 0.0],  # 6 equals 5 (cosine 1) and is close to 0: the best, 5
        [0.0, 0.0, 1.0],  # 7 excluded (e.g. a duplicate of a stored memory): never a target
        [0.0, 0.0, 1.0],  # 8 so this one is kept
        a,  # 9 ties 0 and ... only 0 is kept in this direction
    ]
    thresholds: list[float | None] = [0.95, 0.95, None, 0.95, 0.95, 0.99, 0.9, None, 0.95, 0.95]
    excluded = [False] * len(vectors)
    excluded[7] = True
    got = first_near_duplicates(vectors, thresholds, excluded)
    assert got == reference(vectors, thresholds, excluded)
    assert got == [None, 0, None, 2, 0, None, 5, None, None, 0]


def test_a_tie_goes_to_the_later_kept_item() -> None:
    vectors = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # the last is equally close to both
    thresholds: list[float | None] = [None, None, 0.5]
    got = first_near_duplicates(vectors, thresholds, [False] * 3)
    assert got == reference(vectors, thresholds, [False] * 3) == [None, None, 1]


def test_random_clustered_sets_across_blocks_match_the_item_by_item_rule() -> None:
    rng = random.Random(8)
    for n, threshold in ((40, 0.9), (BLOCK + 150, 0.95), (BLOCK * 2 + 7, 0.8)):
        vectors = clustered(rng, n, 16, centres=n // 5, noise=0.2)
        thresholds = [None if rng.random() < 0.1 else threshold for _ in range(n)]
        excluded = [rng.random() < 0.05 for _ in range(n)]
        got = first_near_duplicates(vectors, thresholds, excluded)
        assert got == reference(vectors, thresholds, excluded)
        assert any(g is not None for g in got) and any(g is None for g in got)


def test_nothing_to_check_finds_nothing() -> None:
    assert first_near_duplicates([], [], []) == []
    assert first_near_duplicates([[1.0], [1.0]], [None, None], [False, False]) == [None, None]
