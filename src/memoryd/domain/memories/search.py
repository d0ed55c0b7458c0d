"""Similarity search: its arguments, the query embedded (bounded in length),
and cross-project search over the environments of the caller's kind in
every project of its organization."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from memoryd.domain.clock import Clock
from memoryd.domain.errors import FieldViolation, InvalidArgument, PermissionDenied, Violations
from memoryd.domain.memories.model import ProjectSource
from memoryd.domain.memories.validation import check_vector
from memoryd.domain.memory import (
    Embedder,
    Filter,
    Ranking,
    ScoredRecord,
    SearchMode,
    Validity,
    VectorStore,
)
from memoryd.domain.tenancy import Principal, Scope, Tenant

MAX_TOP_K = 100
DEFAULT_TOP_K = 10
DEFAULT_MAX_QUERY_CHARS = 4096
# A half-life beyond this is no decay worth computing (and keeps the
# engine's arithmetic on microseconds exact).
MAX_HALF_LIFE = timedelta(days=365 * 100)


class Searcher:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        projects: ProjectSource,
        clock: Clock,
        max_query_chars: int,
        default_mode: SearchMode = SearchMode.SEMANTIC,
    ) -> None:
        """`max_query_chars` bounds a query text (it is embedded);
        `default_mode` ranks a search with a query text that names no mode."""
        self._store = store
        self._embedder = embedder
        self._projects = projects
        self._clock = clock
        self._max_query_chars = max_query_chars
        self._default_mode = default_mode

    def ranking(
        self,
        query: str,
        vector: Sequence[float],
        top_k: int,
        min_score: float,
        mode: SearchMode | None = None,
        recency_half_life: timedelta | None = None,
        diversity: float = 0.0,
    ) -> Ranking:
        """The ranking of a search, or InvalidArgument for bad search
        arguments: a query text too long (QUERY_TOO_LONG, before it can
        reach the model), neither query nor vector, a bad vector, top_k,
        min_score, half-life or diversity, a KEYWORD or HYBRID search
        without words, a KEYWORD search with min_score.

        With no `mode`, a search with a query text ranks by the default
        mode and one with a vector alone by meaning."""
        self._check_query(query)
        has_text = bool(query.strip())
        if mode is None:
            mode = self._default_mode if has_text else SearchMode.SEMANTIC
        v = Violations()
        if not has_text and not vector:
            v.add("query", "query or query_embedding is required")
        elif not has_text and mode is not SearchMode.SEMANTIC:
            v.add("query", f"a {mode.name} search needs the query text")
        if vector:
            check_vector(v, "query_embedding", vector, self._embedder.dimension)
        if top_k < 0 or top_k > MAX_TOP_K:
            v.add("top_k", f"must be between 1 and {MAX_TOP_K} (0: {DEFAULT_TOP_K})")
        if not math.isfinite(min_score) or not -1.0 <= min_score <= 1.0:
            v.add("min_score", "must be between -1 and 1")
        elif min_score and mode is SearchMode.KEYWORD:
            v.add(
                "min_score",
                "bounds the cosine similarity, which a KEYWORD search does not compute "
                "(use HYBRID, or leave it unset)",
            )
        if recency_half_life is not None and not (
            timedelta(0) < recency_half_life <= MAX_HALF_LIFE
        ):
            v.add("recency_half_life", "must be positive and at most 100 years")
        if not math.isfinite(diversity) or not 0.0 <= diversity <= 1.0:
            v.add("diversity", "must be between 0 and 1")
        v.raise_if_any()
        return Ranking(mode, query, recency_half_life, diversity)

    async def query_vector(
        self, query: str, vector: Sequence[float] | None, org_id: str
    ) -> Sequence[float]:
        """The vector of a query for a search of another store (knowledge):
        the client's, checked, or the query text embedded (bounded)."""
        self._check_query(query)
        if vector:
            v = Violations()
            check_vector(v, "query_embedding", vector, self._embedder.dimension)
            v.raise_if_any()
            return vector
        return (await self._embedder.embed([query], fairness_key=org_id))[0]

    def _check_query(self, query: str) -> None:
        """Refuses a query text longer than `max_query_chars` before it
        reaches the model (which reads only its first few hundred word
        pieces anyway), so no search can hold the model for long."""
        if len(query) > self._max_query_chars:
            description = (
                f"is {len(query)} characters; at most {self._max_query_chars} "
                "(the model reads only the start of a longer text)"
            )
            raise InvalidArgument(
                f"query: {description}",
                [FieldViolation("query", description)],
                reason="QUERY_TOO_LONG",
            )

    async def search(
        self,
        tenants: list[Tenant],
        *,
        ranking: Ranking,
        vector: Sequence[float],
        flt: Filter,
        top_k: int,
        min_score: float,
        validity: Validity,
    ) -> list[ScoredRecord]:
        """The best matches in `tenants` for `ranking` (checked arguments, a
        validated filter), among the memories `validity` admits; the query
        text is embedded when the ranking needs a vector and none is given."""
        if not vector and ranking.needs_vector:
            vector = (await self._embedder.embed([ranking.text], fairness_key=tenants[0].org_id))[0]
        return await self._store.search(
            tenants,
            vector or None,
            flt,
            top_k or DEFAULT_TOP_K,
            self._clock.now(),
            min_score=min_score if min_score else None,
            validity=validity,
            ranking=ranking,
        )

    async def cross_project_tenants(self, p: Principal, tenant: Tenant) -> list[Tenant]:
        """The environments of the caller's kind in every project of its
        organization, each reaching the same end users as `tenant`.

        A project that requires x-end-user-id is left out of a search
        without the header (its policy: no call reaches its memories without
        naming an end user). The caller's own project is never left out: if
        it requires the header, the call was refused before.
        """
        envs = await self._projects.list_environments_of_kind(p.org_id, p.environment_kind)
        tenants: list[Tenant] = []
        for e in envs:
            if not tenant.end_user_id and e.project_id != tenant.project_id:
                project = await self._projects.get_project(p.org_id, e.project_id)
                if project is None or project.settings.require_end_user_id:
                    continue
            tenants.append(replace(tenant, project_id=e.project_id, environment_id=e.id))
        return tenants or [tenant]


def require_cross_project(p: Principal) -> None:
    """Raises PermissionDenied (SCOPE_MISSING) unless `p` may search across
    its organization's projects."""
    if not (Scope.ORG_CROSS_PROJECT_READ in p.scopes or Scope.ALL in p.scopes):
        raise PermissionDenied(
            f"x-allow-cross-project needs the scope '{Scope.ORG_CROSS_PROJECT_READ}'",
            reason="SCOPE_MISSING",
        )
