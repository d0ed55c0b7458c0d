"""How a search ranks in the engine: the keyword vectors of memories and
queries, and the query plan that both adapters translate into their
engine's query (prefetches, fusion, formula, MMR).

Keywords are BM25: each memory point carries a sparse vector `KEYWORDS`
of its content's term frequencies (tokenized, lower-cased, English stop
words dropped and stemmed, by the Qdrant engine's own BM25 embedder, so a
point is the same whichever engine stores it); the engine applies the
inverse document frequency at query time (the sparse vector's IDF
modifier) over a corpus the query names: here always the tenants of the
call, so one tenant's text never changes another's ranking.

A plan is a small tree, built here from a `Ranking`:

    Nearest   the nearest points to the query vector (cosine), optionally
              at least `threshold` similar, among all or a pool of stages
    Keyword   the points best matching the query's words (BM25)
    Fuse      its legs fused: reciprocal rank fusion (weighted) or DBSF
    Decay     its inner plan's scores times 0.5^(|valid_time - now| / half-life)
    Diverse   maximal marginal relevance over its inner plan's candidates

Every node has a `limit` (how many candidates it hands on). The adapters
give every node the call's filter, so each stage sees only the call's
tenants.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from memoryd.domain.memory import Ranking, SearchMode
from memoryd.storage.vectors.layout import VALID_TIME, to_micros

F = TypeVar("F")

# The sparse vector of a point's keywords.
KEYWORDS = "bm25"
# BM25's expected document length, in tokens: memories are a sentence or
# two (the engine's default, 256, suits documents; too large a value makes
# every short text look alike in length).
BM25_AVG_LEN = 20.0

Fusion = Literal["rrf", "dbsf", "sum"]


@dataclass(frozen=True)
class Tuning:
    """How searches combine their parts (settings): the fusion of HYBRID
    (`rrf` with its `rrf_k` and the weights of the semantic and keyword
    legs, or `dbsf`) and how many candidates each stage hands on (at least
    the call's limit)."""

    fusion: Fusion = "rrf"
    rrf_k: int = 60
    semantic_weight: float = 1.0
    keyword_weight: float = 1.0
    candidates: int = 100
    # "sum": semantic_weight * cosine + keyword_weight * bm25 / (bm25 + saturation)
    saturation: float = 2.0


@dataclass(frozen=True)
class Sparse:
    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class Nearest:
    """By cosine similarity: all points, or (with a `pool`) the points its
    stages found, each with its own similarity."""

    vector: tuple[float, ...]
    limit: int
    threshold: float | None = None
    pool: tuple[Plan[Any], ...] = ()


@dataclass(frozen=True)
class Keyword(Generic[F]):
    words: Sparse
    limit: int
    corpus: F  # the points whose statistics (IDF) count


@dataclass(frozen=True)
class Fuse:
    legs: tuple[Plan[Any], ...]
    limit: int
    fusion: Fusion
    rrf_k: int
    weights: tuple[float, ...]
    saturation: float = 2.0


@dataclass(frozen=True)
class Decay:
    inner: Plan[Any]
    limit: int
    now_us: int
    half_life_us: float
    field: str = VALID_TIME


@dataclass(frozen=True)
class Diverse:
    inner: Plan[Any]
    limit: int
    vector: tuple[float, ...]
    diversity: float
    candidates: int


Plan = Nearest | Keyword[F] | Fuse | Decay | Diverse


@functools.cache
def _bm25() -> Any:
    import qdrant_edge as qe  # the engine's embedder, also for the server adapter

    return qe.Bm25(qe.Bm25Config(avg_len=BM25_AVG_LEN))


def document_keywords(text: str) -> Sparse | None:
    """The keyword vector of a memory's content (None: no word counts)."""
    v = _bm25().embed_document(text)
    return Sparse(tuple(v.indices), tuple(v.values)) if v.indices else None


def query_keywords(text: str) -> Sparse | None:
    """The keyword vector of a query (None: no word counts, e.g. only stop words)."""
    v = _bm25().embed_query(text)
    return Sparse(tuple(v.indices), tuple(v.values)) if v.indices else None


def plan(
    ranking: Ranking,
    vector: list[float] | None,
    limit: int,
    min_score: float | None,
    corpus: F,
    now: datetime,
    tuning: Tuning,
) -> Plan[F] | None:
    """The plan of a search for `limit` results; None when it can find
    nothing (a keyword search whose query has no words that count)."""
    candidates = max(tuning.candidates, limit)
    staged = ranking.recency_half_life is not None or ranking.diversity > 0
    first = candidates if staged else limit
    base: Plan[F]
    if ranking.mode is SearchMode.SEMANTIC:
        base = Nearest(_vector(vector), first, min_score)
    else:
        words = query_keywords(ranking.text)
        if ranking.mode is SearchMode.KEYWORD:
            if words is None:
                return None
            base = Keyword(words, first, corpus)
        elif words is None:
            # no word of the query counts: HYBRID is its semantic leg
            base = Nearest(_vector(vector), first, min_score)
        else:
            keyword_leg: Keyword[F] = Keyword(words, candidates, corpus)
            dense = Nearest(_vector(vector), candidates, min_score)
            if tuning.fusion == "sum":
                # every keyword candidate needs its own similarity in the sum,
                # also one beyond the semantic leg's candidates
                dense = Nearest(dense.vector, 2 * candidates, min_score, (dense, keyword_leg))
            legs: tuple[Plan[F], ...] = (dense, keyword_leg)
            base = Fuse(
                legs,
                first,
                tuning.fusion,
                tuning.rrf_k,
                (tuning.semantic_weight, tuning.keyword_weight),
                tuning.saturation,
            )
    if ranking.recency_half_life is not None:
        half_life_us = ranking.recency_half_life.total_seconds() * 1e6
        base = Decay(base, candidates, to_micros(now), half_life_us)
    if ranking.diversity > 0:
        base = Diverse(base, limit, _vector(vector), ranking.diversity, candidates)
    # the outermost stage hands on the call's limit
    return replace(base, limit=limit)


def _vector(vector: list[float] | None) -> tuple[float, ...]:
    if vector is None:
        raise ValueError("this ranking needs the query vector")
    return tuple(vector)
