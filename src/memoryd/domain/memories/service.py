"""MemoryService: the memory operations a caller may call. Each one applies
the call's policy (the key's scope, the project's end-user rule, which end
users the call reaches, the audit record) and hands the work to the part
that owns it: create, update, reads, search, export_import, quota.

Storage is the `VectorStore` port, text → vector the `Embedder` port; the
tenant always comes from the caller's key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta

from memoryd.domain import paging
from memoryd.domain.audit import Auditor, PendingEvent
from memoryd.domain.changes import EventType
from memoryd.domain.clock import Clock
from memoryd.domain.control import Project
from memoryd.domain.errors import DomainError, InvalidArgument, NotFound
from memoryd.domain.holds import HoldGuard
from memoryd.domain.memories.create import Writer
from memoryd.domain.memories.export_import import Exporter, import_items
from memoryd.domain.memories.filters import validate_filter
from memoryd.domain.memories.model import (
    UPDATABLE_FIELDS,
    Created,
    Defaults,
    ImportSummary,
    MemoryPage,
    MemoryUpdate,
    NewMemory,
    NoMeter,
    ProjectSource,
    WriteMeter,
)
from memoryd.domain.memories.quota import EnvironmentCounts, size_limits
from memoryd.domain.memories.reads import Reader, keyset_after
from memoryd.domain.memories.recording import NO_CAUSE, Cause, ChangeRecorder
from memoryd.domain.memories.search import (
    DEFAULT_MAX_QUERY_CHARS,
    Searcher,
    require_cross_project,
)
from memoryd.domain.memories.update import Updater
from memoryd.domain.memories.validation import SizeLimits, validate_update
from memoryd.domain.memory import (
    CURRENT,
    Embedder,
    Filter,
    MemoryRecord,
    Revision,
    ScoredRecord,
    SearchMode,
    Validity,
    VectorStore,
)
from memoryd.domain.tenancy import Caller, Principal, Scope, Tenant, scope_grants

MAX_BATCH = 1000

log = logging.getLogger("memoryd.memories")

# The audit action of a call that reaches every end user's memories (a key
# holding memory:all_end_users, without x-end-user-id); its target is the
# method's name.
AUDIT_ALL_END_USERS = "memory.all_end_users"


class MemoryService:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        projects: ProjectSource,
        clock: Clock,
        defaults: Defaults | None = None,
        meter: WriteMeter | None = None,
        on_environment_count: Callable[[int], None] | None = None,
        max_query_chars: int = DEFAULT_MAX_QUERY_CHARS,
        auditor: Auditor | None = None,
        default_search_mode: SearchMode = SearchMode.SEMANTIC,
        changes: ChangeRecorder | None = None,
        on_memory_level: Callable[[Tenant, int, int, bool], None] | None = None,
        holds: HoldGuard | None = None,
    ) -> None:
        """`defaults` are the server's quota defaults (`Defaults()` when None);
        `on_environment_count` sees each exact count of an environment's
        memories as the quota check refreshes it (for a metric);
        `max_query_chars` bounds a search's query text (it is embedded);
        `default_search_mode` ranks a search with a text that names no mode.
        `auditor` records deletes, purges, updates and imports (creates are not
        audited: they are the bulk of traffic, and usage metering counts them),
        and the calls that reach every end user's memories. `changes`
        records every change in the change log (see `recording`; None:
        none is recorded). `on_memory_level` sees an environment's memory
        count against its quota at every write, and whether it is exact
        (quota alerts, see `quota.EnvironmentCounts`). `holds` refuses
        deletes of held data and keeps it from the TTL sweep (None: no legal
        holds)."""
        self._store = store
        self._holds = holds
        # expired memories the last sweep kept under a legal hold
        self.sweep_held = 0
        self._auditor = auditor
        self._embedder = embedder
        self._projects = projects
        self._clock = clock
        meter = meter or NoMeter()
        defaults = defaults or Defaults()
        self._defaults = defaults
        self._counts = EnvironmentCounts(
            store, clock, on_environment_count or (lambda n: None), on_level=on_memory_level
        )
        self._changes = changes or ChangeRecorder()
        self._writer = Writer(store, embedder, clock, self._counts, meter, defaults, self._changes)
        self._updater = Updater(store, embedder, meter, defaults, self._changes)
        self._reader = Reader(store, clock)
        self._searcher = Searcher(
            store, embedder, projects, clock, max_query_chars, default_search_mode
        )
        self._exporter = Exporter(store, clock)

    @property
    def dimension(self) -> int:
        return self._embedder.dimension

    # --- policy -------------------------------------------------------------------

    async def _tenant(self, caller: Caller, scope: str) -> tuple[Tenant, Project]:
        p = caller.principal
        tenant = p.tenant()
        p.require(scope)
        project = await self._project(p)
        if project.settings.require_end_user_id and not tenant.end_user_id:
            raise InvalidArgument.field(
                "x-end-user-id", "this project requires the x-end-user-id header on memory calls"
            )
        return tenant, project

    async def _project(self, p: Principal) -> Project:
        # `projects` is a short-lived cache (ProjectCache): no second one here
        project = await self._projects.get_project(p.org_id, p.project_id)
        if project is None:
            raise NotFound("the project of this API key no longer exists")
        return project

    def _audited(
        self, caller: Caller, action: str, target: str = ""
    ) -> AbstractAsyncContextManager[PendingEvent]:
        """Records `action` by `caller` in its environment when the block ends
        (see `Auditor.action`); never content or metadata values."""
        if self._auditor is None:
            return _unaudited()
        p = caller.principal
        cm = self._auditor.action(
            caller, action, target=target, project_id=p.project_id, environment_id=p.environment_id
        )
        return _with_end_user(cm, p.end_user_id)

    async def _reach(self, caller: Caller, tenant: Tenant, method: str) -> Tenant:
        """The memories a call on existing memories reaches: with
        x-end-user-id, that end user's; without it, only those without an
        end user, or every end user's when the key holds
        memory:all_end_users. Such a call is audited (one event, target the
        method's name, when access is granted: just before the store is read).
        """
        if tenant.end_user_id or not scope_grants(
            caller.principal.scopes, Scope.MEMORY_ALL_END_USERS
        ):
            return tenant
        if self._auditor is not None:
            async with self._auditor.action(
                caller,
                AUDIT_ALL_END_USERS,
                target=method,
                project_id=tenant.project_id,
                environment_id=tenant.environment_id,
            ):
                pass
        return tenant.across_end_users()

    # --- create -------------------------------------------------------------------

    async def create(self, caller: Caller, item: NewMemory) -> Created:
        tenant, project = await self._tenant(caller, Scope.MEMORY_ADD)
        result = (
            await self._writer.create_many(
                tenant,
                project,
                [item],
                "",
                writer_key_id=caller.principal.key_id,
                cause=_cause(caller),
            )
        )[0]
        if isinstance(result, DomainError):
            raise result
        return result

    async def batch_create(
        self, caller: Caller, items: Sequence[NewMemory]
    ) -> list[Created | DomainError]:
        tenant, project = await self._tenant(caller, Scope.MEMORY_ADD)
        if not items:
            raise InvalidArgument.field("requests", "must hold 1 to 1000 items")
        if len(items) > MAX_BATCH:
            raise InvalidArgument.field(
                "requests", f"holds {len(items)} items; at most {MAX_BATCH} per call"
            )
        return await self._writer.create_many(
            tenant,
            project,
            items,
            "requests[{i}].",
            writer_key_id=caller.principal.key_id,
            cause=_cause(caller),
        )

    async def import_stream(
        self, caller: Caller, items: AsyncIterator[NewMemory | DomainError]
    ) -> ImportSummary:
        """Creates the stream's memories (see `import_items`). Each keeps the
        valid_time and invalid_time it was exported with; not what it was
        superseded by (an id of the exporting tenant) nor its origin (its
        writer is the importing key)."""
        async with self._audited(caller, "memory.import") as ev:
            tenant, project = await self._tenant(caller, Scope.MEMORY_ADD)

            async def create(chunk: Sequence[NewMemory]) -> list[Created | DomainError]:
                return await self._writer.create_many(
                    tenant,
                    project,
                    chunk,
                    "",
                    writer_key_id=caller.principal.key_id,
                    cause=_cause(caller),
                )

            summary = await import_items(items, create)
            ev.details.update(imported=str(summary.imported), failed=str(summary.failed))
            return summary

    # --- read ---------------------------------------------------------------------

    async def get(self, caller: Caller, memory_id: str, with_vector: bool = False) -> MemoryRecord:
        tenant, _ = await self._tenant(caller, Scope.MEMORY_READ)
        tenant = await self._reach(caller, tenant, "GetMemory")
        return await self._reader.one(tenant, memory_id, with_vector)

    async def list_memories(
        self,
        caller: Caller,
        flt: Filter,
        page_size: int,
        page_token: str,
        *,
        validity: Validity = CURRENT,
    ) -> MemoryPage:
        """A page of the memories matching `flt` that `validity` admits (by
        default those that hold now), newest first. A page token carries on
        the same filter and validity only."""
        tenant, _ = await self._tenant(caller, Scope.MEMORY_READ)
        validate_filter(flt)
        size = paging.page_size(page_size)
        fp = paging.fingerprint("memories", tenant.end_user_id, repr(flt), repr(validity))
        after = keyset_after(page_token, fp)
        tenant = await self._reach(caller, tenant, "ListMemories")
        return await self._reader.page(tenant, flt, size, after, fp, validity)

    async def search(
        self,
        caller: Caller,
        *,
        query: str,
        vector: Sequence[float],
        flt: Filter,
        top_k: int,
        min_score: float,
        cross_project: bool,
        validity: Validity = CURRENT,
        mode: SearchMode | None = None,
        recency_half_life: timedelta | None = None,
        diversity: float = 0.0,
    ) -> list[ScoredRecord]:
        """The best matches among the memories `validity` admits (by default
        those that hold now), ranked by `mode` (None: the default for the
        arguments given; see `Searcher.ranking`)."""
        tenant, _ = await self._tenant(caller, Scope.MEMORY_READ)
        ranking = self._searcher.ranking(
            query, vector, top_k, min_score, mode, recency_half_life, diversity
        )
        validate_filter(flt)
        if cross_project:
            require_cross_project(caller.principal)
        tenant = await self._reach(caller, tenant, "SearchMemories")
        tenants = [tenant]
        if cross_project:
            tenants = await self._searcher.cross_project_tenants(caller.principal, tenant)
        return await self._searcher.search(
            tenants,
            ranking=ranking,
            vector=vector,
            flt=flt,
            top_k=top_k,
            min_score=min_score,
            validity=validity,
        )

    async def revisions(
        self, caller: Caller, memory_id: str, page_size: int, page_token: str
    ) -> tuple[list[Revision], str]:
        tenant, _ = await self._tenant(caller, Scope.MEMORY_READ)
        tenant = await self._reach(caller, tenant, "ListMemoryRevisions")
        return await self._reader.revisions(tenant, memory_id, page_size, page_token)

    async def export(
        self, caller: Caller, flt: Filter, with_vectors: bool
    ) -> AsyncIterator[MemoryRecord]:
        """Every memory of the tenant matching `flt`, oldest first, whether
        it still holds or not: an export is complete (see `Exporter.export`)."""
        tenant, _ = await self._tenant(caller, Scope.MEMORY_READ)
        validate_filter(flt)
        tenant = await self._reach(caller, tenant, "ExportMemories")
        async for record in self._exporter.export(tenant, flt, with_vectors):
            yield record

    async def query_vector(
        self, caller: Caller, query: str, vector: Sequence[float] | None
    ) -> Sequence[float]:
        """A search's query vector for another store (knowledge)."""
        return await self._searcher.query_vector(query, vector, caller.principal.org_id)

    async def export_tenant(self, caller: Caller, scope: str) -> Tenant:
        """The memories an export job of `caller` reaches (`scope` and
        memory:read held; the end-user rules of `export`), for a job that
        runs later with this tenant."""
        tenant, _ = await self._tenant(caller, scope)
        caller.principal.require(Scope.MEMORY_READ)
        return await self._reach(caller, tenant, "CreateExport")

    def export_records(
        self, tenant: Tenant, flt: Filter, with_vectors: bool
    ) -> AsyncIterator[MemoryRecord]:
        """What `export` streams, for a job acting for `tenant` (authorized
        when its operation was accepted, see `export_tenant`)."""
        validate_filter(flt)
        return self._exporter.export(tenant, flt, with_vectors)

    # --- change ---------------------------------------------------------------------

    async def update(self, caller: Caller, memory_id: str, update: MemoryUpdate) -> MemoryRecord:
        async with self._audited(caller, "memory.update", memory_id) as ev:
            # which fields, never their values (nor paths the client made up)
            ev.details["fields"] = ",".join(sorted(UPDATABLE_FIELDS.intersection(update.paths)))
            tenant, project = await self._tenant(caller, Scope.MEMORY_UPDATE)
            now = self._clock.now()
            validate_update(update, now, self._embedder.dimension)
            tenant = await self._reach(caller, tenant, "UpdateMemory")
            current = await self._reader.one(tenant, memory_id, with_vector=True)
            return await self._updater.apply(project, current, update, now, _cause(caller))

    async def delete(self, caller: Caller, memory_id: str) -> None:
        async with self._audited(caller, "memory.delete", memory_id):
            tenant, _ = await self._tenant(caller, Scope.MEMORY_DELETE)
            tenant = await self._reach(caller, tenant, "DeleteMemory")
            record = await self._reader.one(tenant, memory_id)
            if self._holds is not None:
                await self._holds.check(tenant, "DeleteMemory")
            await self._store.delete(tenant, [record.id])
            self._counts.forget(tenant)
            await self._changes.record([(EventType.DELETED, record)], _cause(caller))

    async def purge(self, caller: Caller, flt: Filter, *, dry_run: bool, everything: bool) -> int:
        """Deletes (or with `dry_run` counts) the tenant's memories matching
        `flt`, or all of them. Audited with the count, never the filter (it
        may hold metadata values)."""
        async with self._audited(caller, "memory.purge") as ev:
            ev.details.update(dry_run=str(dry_run).lower(), all=str(everything).lower())
            count = await self._purge(caller, flt, dry_run=dry_run, everything=everything)
            ev.details["count"] = str(count)
            return count

    async def _purge(self, caller: Caller, flt: Filter, *, dry_run: bool, everything: bool) -> int:
        tenant, _ = await self._tenant(caller, Scope.MEMORY_DELETE)
        if flt.empty and not everything:
            raise InvalidArgument.field(
                "filter", "is required; to delete every memory of the tenant set all=true"
            )
        if not flt.empty and everything:
            raise InvalidArgument.field("all", "give a filter or all=true, not both")
        validate_filter(flt)
        tenant = await self._reach(caller, tenant, "PurgeMemories")
        now = self._clock.now()
        if dry_run:
            return await self._store.count(tenant, flt, now)
        if self._holds is not None:
            await self._holds.check(tenant, "PurgeMemories")
        cause = _cause(caller)

        async def purged(records: Sequence[MemoryRecord]) -> None:
            await self._changes.record([(EventType.PURGED, r) for r in records], cause)

        try:
            return await self._store.delete_matching(tenant, flt, now, on_deleted=purged)
        finally:
            self._counts.forget(tenant)

    async def reach(self, caller: Caller, tenant: Tenant, method: str) -> Tenant:
        """The memories a read by `caller` reaches (see `_reach`), for
        services that read memories' changes (WatchMemories)."""
        return await self._reach(caller, tenant, method)

    async def authorize(self, caller: Caller, scope: str) -> tuple[Tenant, Project]:
        """The tenant and project of a memory call by `caller` needing
        `scope` (the project's end-user rule applies), for services that
        write memories through this one."""
        return await self._tenant(caller, scope)

    def limits(self, project: Project) -> SizeLimits:
        """The byte limits of one memory of `project`."""
        return size_limits(self._defaults, project)

    # --- for the server's own jobs (AddMessages) ------------------------------------------
    # These act for a tenant whose operation was authorized when it was
    # accepted; the tenant names one end user or none, never all of them.

    async def project_of(self, tenant: Tenant) -> Project:
        project = await self._projects.get_project(tenant.org_id, tenant.project_id)
        if project is None:
            raise NotFound("the project of this operation no longer exists")
        return project

    async def records(
        self, tenant: Tenant, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[MemoryRecord]:
        """The memories among `ids` of `tenant` (holding or not)."""
        if not ids:
            return []
        return await self._store.get(tenant, ids, self._clock.now(), with_vectors=with_vectors)

    async def similar(
        self, tenant: Tenant, vector: Sequence[float], top_k: int
    ) -> list[ScoredRecord]:
        """The memories of `tenant` that hold now, most similar first."""
        return await self._store.search([tenant], vector, Filter(), top_k, self._clock.now())

    async def create_for(
        self,
        tenant: Tenant,
        items: Sequence[NewMemory],
        writer_key_id: str,
        cause: Cause = NO_CAUSE,
    ) -> list[Created | DomainError]:
        """Creates memories for `tenant` (quotas and size limits apply), as
        written by the key `writer_key_id`, recorded as caused by `cause`."""
        project = await self.project_of(tenant)
        return await self._writer.create_many(
            tenant, project, items, "", writer_key_id=writer_key_id, cause=cause
        )

    async def update_for(
        self, current: MemoryRecord, update: MemoryUpdate, cause: Cause = NO_CAUSE
    ) -> MemoryRecord:
        """Applies `update` (which may name server-only paths) to `current`,
        read with its vector, recorded as caused by `cause`."""
        project = await self.project_of(current.tenant)
        return await self._updater.apply(project, current, update, self._clock.now(), cause)

    async def record_changes(
        self, changes: Sequence[tuple[EventType, MemoryRecord]], cause: Cause
    ) -> None:
        """Records events of changes already stored (a job's re-run records
        again what an earlier run may have written without its event)."""
        await self._changes.record(changes, cause)

    # --- maintenance -------------------------------------------------------------------

    async def sweep_expired(self) -> int:
        """Deletes expired memories (of every tenant), each recorded as EXPIRED."""

        async def expired(records: Sequence[MemoryRecord]) -> None:
            await self._changes.record([(EventType.EXPIRED, r) for r in records])

        keep = await self._holds.held() if self._holds is not None else []
        now = self._clock.now()
        swept = await self._store.sweep_expired(now, on_deleted=expired, keep=keep)
        self.sweep_held = await self._store.count_expired(now, keep) if keep else 0
        if self.sweep_held:
            log.info("kept %d expired memories under legal hold", self.sweep_held)
        return swept

    async def delete_scope(self, org_id: str, project_id: str, environment_id: str | None) -> int:
        return await self._store.delete_scope(org_id, project_id, environment_id)

    async def count_scope(self, org_id: str, project_id: str, environment_id: str | None) -> int:
        return await self._store.count_scope(org_id, project_id, environment_id)


def _cause(caller: Caller) -> Cause:
    return Cause(request_id=caller.request_id)


@asynccontextmanager
async def _unaudited() -> AsyncIterator[PendingEvent]:
    yield PendingEvent()


@asynccontextmanager
async def _with_end_user(
    cm: AbstractAsyncContextManager[PendingEvent], end_user_id: str
) -> AsyncIterator[PendingEvent]:
    async with cm as ev:
        if end_user_id:
            ev.details["end_user_id"] = end_user_id
        yield ev
