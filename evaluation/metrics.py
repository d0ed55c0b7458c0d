"""Scores of rankings against the golden answers (binary relevance) and the
table they are printed as.

A ranking is the gids of the search results, best first. For a question with
relevant gids R: recall@k = |R ∩ top k| / |R|; the reciprocal rank is 1 /
the rank of the first relevant gid (0 when none is found); nDCG@10 = DCG /
ideal DCG with gain 1 at rank i discounted by log2(i + 1). A gid counts once
however often it appears.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass


def recall_at(ranking: Sequence[str], relevant: Collection[str], k: int) -> float:
    """The share of `relevant` found in the first `k` of `ranking`."""
    if not relevant:
        raise ValueError("a question needs at least one relevant gid")
    return len(set(ranking[:k]) & set(relevant)) / len(set(relevant))


def reciprocal_rank(ranking: Sequence[str], relevant: Collection[str]) -> float:
    """1 / the rank of the first relevant gid in `ranking`; 0 when none is."""
    for rank, gid in enumerate(ranking, start=1):
        if gid in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at(ranking: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Normalized discounted cumulative gain of the first `k` of `ranking`."""
    if not relevant:
        raise ValueError("a question needs at least one relevant gid")
    seen: set[str] = set()
    dcg = 0.0
    for rank, gid in enumerate(ranking[:k], start=1):
        if gid in relevant and gid not in seen:
            seen.add(gid)
            dcg += 1.0 / math.log2(rank + 1)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(set(relevant)), k) + 1))
    return dcg / ideal


@dataclass(frozen=True)
class Answer:
    """What the search answered to one question, and how long it took."""

    ranking: tuple[str, ...]
    expected: tuple[str, ...]
    superseded: tuple[str, ...]
    latency_ms: float


@dataclass(frozen=True)
class Scores:
    """Means over the questions of a family and mode. `superseded_at_1`: the
    share whose top result no longer holds (None when no question has a
    superseded answer)."""

    questions: int
    recall_at_1: float
    recall_at_5: float
    mrr: float
    ndcg_at_10: float
    superseded_at_1: float | None
    p50_ms: float


def score(answers: Sequence[Answer]) -> Scores:
    """The mean scores of `answers` and the median latency."""
    if not answers:
        raise ValueError("no answers to score")
    n = len(answers)
    with_superseded = [a for a in answers if a.superseded]
    stale = (
        sum(bool(a.ranking) and a.ranking[0] in a.superseded for a in with_superseded)
        / len(with_superseded)
        if with_superseded
        else None
    )
    return Scores(
        questions=n,
        recall_at_1=sum(recall_at(a.ranking, a.expected, 1) for a in answers) / n,
        recall_at_5=sum(recall_at(a.ranking, a.expected, 5) for a in answers) / n,
        mrr=sum(reciprocal_rank(a.ranking, a.expected) for a in answers) / n,
        ndcg_at_10=sum(ndcg_at(a.ranking, a.expected, 10) for a in answers) / n,
        superseded_at_1=stale,
        p50_ms=statistics.median(a.latency_ms for a in answers),
    )


@dataclass(frozen=True)
class Row:
    """One line of the table: the scores of a family in a mode, or why there
    are none yet (`pending`)."""

    family: str
    mode: str
    scores: Scores | None = None
    pending: str = ""


_HEADER = (
    "family",
    "mode",
    "questions",
    "recall@1",
    "recall@5",
    "MRR",
    "nDCG@10",
    "superseded@1",
    "p50 ms",
)


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table (as pasted into docs/quality.md)."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    for row in rows:
        s = row.scores
        if s is None:
            cells = [row.family, row.mode, row.pending] + [""] * (len(_HEADER) - 3)
        else:
            stale = "-" if s.superseded_at_1 is None else f"{s.superseded_at_1:.3f}"
            cells = [
                row.family,
                row.mode,
                str(s.questions),
                f"{s.recall_at_1:.3f}",
                f"{s.recall_at_5:.3f}",
                f"{s.mrr:.3f}",
                f"{s.ndcg_at_10:.3f}",
                stale,
                f"{s.p50_ms:.1f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
