"""Similarity search: its arguments, the query embedded (bounded in length),
and cross-project search over the environments of the caller's kind in
every project of its organization."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from memoryd.domain.clock import Clock
from memoryd.domain.errors import FieldViolation, InvalidArgument, PermissionDenied, Violations
from memoryd.domain.memories.model import ProjectSource
from memoryd.domain.memories.validation import check_vector
from memoryd.domain.memory import Embedder, Filter, ScoredRecord, Validity, VectorStore
from memoryd.domain.tenancy import Principal, Scope, Tenant

MAX_TOP_K = 100
DEFAULT_TOP_K = 10
DEFAULT_MAX_QUERY_CHARS = 4096


class Searcher:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        projects: ProjectSource,
        clock: Clock,
        max_query_chars: int,
    ) -> None:
        """`max_query_chars` bounds a query text (it is embedded)."""
        self._store = store
        self._embedder = embedder
        self._projects = projects
        self._clock = clock
        self._max_query_chars = max_query_chars

    def check(self, query: str, vector: Sequence[float], top_k: int, min_score: float) -> None:
        """Raises InvalidArgument for bad search arguments: a query text
        too long (QUERY_TOO_LONG, before it can reach the model), neither
        or both of query and vector, a bad vector, top_k or min_score."""
        self._check_query(query)
        v = Violations()
        if query and vector:
            v.add("query_embedding", "give query or query_embedding, not both")
        elif not query.strip() and not vector:
            v.add("query", "query or query_embedding is required")
        if vector:
            check_vector(v, "query_embedding", vector, self._embedder.dimension)
        if top_k < 0 or top_k > MAX_TOP_K:
            v.add("top_k", f"must be between 1 and {MAX_TOP_K} (0: {DEFAULT_TOP_K})")
        if not math.isfinite(min_score) or not -1.0 <= min_score <= 1.0:
            v.add("min_score", "must be between -1 and 1")
        v.raise_if_any()

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
        query: str,
        vector: Sequence[float],
        flt: Filter,
        top_k: int,
        min_score: float,
        validity: Validity,
    ) -> list[ScoredRecord]:
        """The best matches in `tenants` of `vector`, or of `query` embedded
        (checked arguments, a validated filter), among the memories
        `validity` admits."""
        if not vector:
            vector = (await self._embedder.embed([query], fairness_key=tenants[0].org_id))[0]
        return await self._store.search(
            tenants,
            vector,
            flt,
            top_k or DEFAULT_TOP_K,
            self._clock.now(),
            min_score=min_score if min_score else None,
            validity=validity,
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
