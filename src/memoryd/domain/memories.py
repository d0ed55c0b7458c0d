"""The memory rules: validation, quotas, end users, TTL, dedupe, revisions,
cross-project search, paging. Storage is the `VectorStore` port, text → vector
the `Embedder` port; the tenant always comes from the caller's key.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from memoryd.domain import paging
from memoryd.domain.audit import Auditor, PendingEvent
from memoryd.domain.clock import Clock
from memoryd.domain.control import Environment, Project
from memoryd.domain.dedupe import first_near_duplicates
from memoryd.domain.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaViolation,
    ResourceExhausted,
    Violations,
)
from memoryd.domain.ids import is_uuid, new_memory_id
from memoryd.domain.memory import (
    FILTER_KEYWORD_FIELDS,
    FILTER_TIME_FIELDS,
    METADATA_KEY_FORBIDDEN,
    METADATA_PREFIX,
    Cursor,
    Embedder,
    Filter,
    Match,
    MatchAny,
    MemoryRecord,
    NumberRange,
    Revision,
    ScoredRecord,
    TimeRange,
    VectorStore,
)
from memoryd.domain.tenancy import Caller, Principal, Scope, Tenant, scope_grants

MAX_BATCH = 1000
MAX_TOP_K = 100
DEFAULT_TOP_K = 10
MAX_TAGS = 64
MAX_TAG_LEN = 128
MAX_ID_FIELD_LEN = 256
MAX_REVISIONS = 100
MAX_FILTER_CONDITIONS = 64
# The one nesting limit of a filter (the top level is 1), for the API and the
# domain alike; it was already the effective limit before the API deferred to it.
MAX_FILTER_DEPTH = 4
DEFAULT_DEDUPE_THRESHOLD = 0.95
DEFAULT_MAX_QUERY_CHARS = 4096
MAX_TTL = timedelta(days=3650)
EXPORT_PAGE = 256
IMPORT_CHUNK = 64
MAX_IMPORT_ERRORS = 100
_COUNT_TTL_S = 5.0
# An error's details travel in trailing metadata, which clients refuse past
# 16 KiB by default: client strings echoed in one are clipped, and at most
# this many field violations are reported.
MAX_VIOLATIONS = 8
MAX_ECHO = 64

# The audit action of a call that reaches every end user's memories (a key
# holding memory:all_end_users, without x-end-user-id); its target is the
# method's name.
AUDIT_ALL_END_USERS = "memory.all_end_users"

UPDATABLE_FIELDS = frozenset(
    {"content", "metadata", "tags", "agent_id", "thread_id", "source", "expire_time", "embedding"}
)


@dataclass(frozen=True)
class Defaults:
    """Server-wide quota defaults (a project's non-zero overrides win, up to
    a ceiling: the byte sizes are hard limits, the memory count has its own)."""

    max_memories_per_environment: int = 1_000_000
    max_content_bytes: int = 32_768
    max_metadata_bytes: int = 16_384
    max_memories_per_environment_override: int = 10_000_000


@dataclass(frozen=True)
class NewMemory:
    """One memory to create, as the client sent it."""

    content: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    agent_id: str = ""
    thread_id: str = ""
    source: str = ""
    tags: tuple[str, ...] = ()
    embedding: tuple[float, ...] = ()
    expire_time: datetime | None = None
    ttl: timedelta | None = None
    dedupe: bool = False
    dedupe_threshold: float = 0.0


@dataclass(frozen=True)
class Created:
    record: MemoryRecord
    deduplicated: bool = False


@dataclass(frozen=True)
class MemoryPage:
    records: list[MemoryRecord]
    next_page_token: str


@dataclass(frozen=True)
class ImportSummary:
    imported: int
    failed: int
    errors: list[tuple[int, DomainError]]


class ProjectSource(Protocol):
    """Reads the project of a tenant (settings, quotas) and the environments
    a cross-project search may span."""

    async def get_project(self, org_id: str, project_id: str) -> Project | None: ...

    async def list_environments_of_kind(self, org_id: str, kind: Any) -> list[Environment]: ...


class WriteMeter(Protocol):
    """Counts memories written and bytes stored (usage metering)."""

    async def memories_written(self, tenant: Tenant, count: int, content_bytes: int) -> None: ...


class _NoMeter:
    async def memories_written(self, tenant: Tenant, count: int, content_bytes: int) -> None:
        return None


class MemoryService:
    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        projects: ProjectSource,
        clock: Clock,
        defaults: Defaults = Defaults(),
        meter: WriteMeter | None = None,
        on_environment_count: Callable[[int], None] | None = None,
        max_query_chars: int = DEFAULT_MAX_QUERY_CHARS,
        auditor: Auditor | None = None,
    ) -> None:
        """`on_environment_count` sees each exact count of an environment's
        memories as the quota check refreshes it (for a metric);
        `max_query_chars` bounds a search's query text (it is embedded).
        `auditor` records deletes, purges, updates and imports (creates are not
        audited: they are the bulk of traffic, and usage metering counts them),
        and the calls that reach every end user's memories."""
        self._store = store
        self._auditor = auditor
        self._embedder = embedder
        self._projects = projects
        self._clock = clock
        self._defaults = defaults
        self._meter = meter or _NoMeter()
        self._on_count = on_environment_count or (lambda n: None)
        self._max_query_chars = max_query_chars
        self._counts: dict[str, tuple[float, int]] = {}
        self._count_lock = asyncio.Lock()

    @property
    def dimension(self) -> int:
        return self._embedder.dimension

    # --- policy -------------------------------------------------------------------

    async def _project(self, p: Principal) -> Project:
        # `projects` is a short-lived cache (ProjectCache): no second one here
        project = await self._projects.get_project(p.org_id, p.project_id)
        if project is None:
            raise NotFound("the project of this API key no longer exists")
        return project

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

    def _quota(self, project: Project, name: str) -> int:
        """The project's override of quota `name` when set, else the server's
        default; never above the server's ceiling (an override stored before
        the ceiling was lowered is capped here)."""
        default = int(getattr(self._defaults, name))
        value = int(getattr(project.quotas, name))
        if value <= 0:
            return default
        if name == "max_memories_per_environment":
            return min(value, self._defaults.max_memories_per_environment_override)
        return min(value, default)  # content and metadata sizes: the default is the cap

    # --- create -------------------------------------------------------------------

    async def create(self, caller: Caller, item: NewMemory) -> Created:
        tenant, project = await self._tenant(caller, Scope.MEMORY_ADD)
        results = await self._create_many(tenant, project, [item], "")
        result = results[0]
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
        return await self._create_many(tenant, project, items, "requests[{i}].")

    async def _create_many(
        self, tenant: Tenant, project: Project, items: Sequence[NewMemory], prefix: str
    ) -> list[Created | DomainError]:
        now = self._clock.now()
        results: list[Created | DomainError | None] = [None] * len(items)
        pending: list[tuple[int, NewMemory, datetime | None]] = []
        for i, item in enumerate(items):
            try:
                expire = self._validate_new(item, project, now, prefix.format(i=i))
            except DomainError as err:
                results[i] = err
            else:
                pending.append((i, item, expire))

        vectors = await self._vectors_for(
            [item for _, item, _ in pending], fairness_key=tenant.org_id
        )
        stored_hits = [
            await self._near_duplicate(tenant, project, item, vector, now) if item.dedupe else None
            for (_, item, _), vector in zip(pending, vectors, strict=True)
        ]
        # An earlier item of this same call is not stored yet: compare with those too.
        batch_hits = first_near_duplicates(
            vectors,
            [
                _dedupe_threshold(project, item) if item.dedupe and hit is None else None
                for (_, item, _), hit in zip(pending, stored_hits, strict=True)
            ],
            excluded=[hit is not None for hit in stored_hits],
        )
        records: list[MemoryRecord] = []
        record_of: dict[int, MemoryRecord] = {}  # position in `pending` -> its new record
        dedupe_hits: dict[int, MemoryRecord] = {}
        for k, ((i, item, expire), vector) in enumerate(zip(pending, vectors, strict=True)):
            existing = stored_hits[k]
            earlier = batch_hits[k]
            if existing is None and earlier is not None:
                existing = record_of[earlier]
            if existing is not None:
                dedupe_hits[i] = existing
                continue
            records.append(
                MemoryRecord(
                    id=new_memory_id(),
                    tenant=tenant,
                    content=item.content,
                    metadata=dict(item.metadata),
                    agent_id=item.agent_id,
                    thread_id=item.thread_id,
                    source=item.source,
                    tags=tuple(dict.fromkeys(item.tags)),
                    create_time=now,
                    update_time=now,
                    expire_time=expire,
                    revision=1,
                    vector=tuple(vector),
                )
            )
            record_of[k] = records[-1]
        if records:
            await self._reserve(tenant, project, len(records))
            await self._store.upsert(tenant, records)
            await self._meter.memories_written(
                tenant, len(records), sum(len(r.content.encode()) for r in records)
            )
        created = iter(records)
        for i, _item, _expire in pending:
            if i in dedupe_hits:
                results[i] = Created(dedupe_hits[i], deduplicated=True)
            else:
                results[i] = Created(next(created))
        return [r for r in results if r is not None]

    def _validate_new(
        self, item: NewMemory, project: Project, now: datetime, prefix: str
    ) -> datetime | None:
        v = Violations()
        if not item.content.strip():
            v.add(f"{prefix}memory.content", "is required and must not be blank")
        _check_fields(v, prefix + "memory.", item.agent_id, item.thread_id, item.source, item.tags)
        _check_metadata(v, prefix + "memory.metadata", item.metadata)
        if item.embedding:
            self._check_vector(v, f"{prefix}memory.embedding", item.embedding)
        if item.dedupe_threshold and not 0.0 < item.dedupe_threshold <= 1.0:
            v.add(f"{prefix}dedupe_threshold", "must be in (0, 1]")
        expire = item.expire_time
        if item.ttl is not None:
            if item.expire_time is not None:
                v.add(f"{prefix}ttl", "give ttl or memory.expire_time, not both")
            elif not timedelta(0) < item.ttl <= MAX_TTL:
                v.add(f"{prefix}ttl", "must be positive and at most 3650 days")
            else:
                expire = now + item.ttl
        elif expire is None and project.settings.default_ttl is not None:
            expire = now + project.settings.default_ttl
        if item.expire_time is not None and item.expire_time <= now:
            v.add(f"{prefix}memory.expire_time", "must be in the future")
        elif item.expire_time is not None and item.expire_time > now + MAX_TTL:
            v.add(f"{prefix}memory.expire_time", "must be at most 3650 days ahead")
        bounded(v).raise_if_any()
        self._check_sizes(project, item.content, item.metadata)
        return expire

    def _check_sizes(self, project: Project, content: str, metadata: Mapping[str, Any]) -> None:
        limit = self._quota(project, "max_content_bytes")
        size = len(content.encode())
        if size > limit:
            raise ResourceExhausted(
                f"content is {size} bytes; this project allows {limit} per memory",
                [QuotaViolation("memory.content", f"max_content_bytes={limit}")],
                reason="CONTENT_TOO_LARGE",
            )
        limit = self._quota(project, "max_metadata_bytes")
        size = len(json.dumps(metadata, separators=(",", ":")).encode()) if metadata else 0
        if size > limit:
            raise ResourceExhausted(
                f"metadata is {size} bytes as JSON; this project allows {limit} per memory",
                [QuotaViolation("memory.metadata", f"max_metadata_bytes={limit}")],
                reason="METADATA_TOO_LARGE",
            )

    def _check_vector(self, v: Violations, name: str, vector: Sequence[float]) -> None:
        dim = self._embedder.dimension
        if len(vector) != dim:
            v.add(name, f"has {len(vector)} values; this server's model has dimension {dim}")
        elif not all(map(math.isfinite, vector)):
            v.add(name, "must hold finite numbers (no NaN or infinity)")
        elif not any(vector):
            v.add(name, "must not be all zeros")

    async def _vectors_for(
        self, items: Sequence[NewMemory], *, fairness_key: str
    ) -> list[list[float]]:
        texts = [(i, it.content) for i, it in enumerate(items) if not it.embedding]
        out: list[list[float]] = [list(it.embedding) for it in items]
        if texts:
            embedded = await self._embedder.embed([t for _, t in texts], fairness_key=fairness_key)
            for (i, _), vec in zip(texts, embedded, strict=True):
                out[i] = vec
        return out

    async def _near_duplicate(
        self,
        tenant: Tenant,
        project: Project,
        item: NewMemory,
        vector: Sequence[float],
        now: datetime,
    ) -> MemoryRecord | None:
        threshold = _dedupe_threshold(project, item)
        # Without an end user, compare only with memories that have none either.
        flt = Filter() if tenant.end_user_id else Filter(must=(Match("end_user_id", ""),))
        hits = await self._store.search([tenant], vector, flt, 1, now, min_score=threshold)
        return hits[0].record if hits else None

    async def _reserve(self, tenant: Tenant, project: Project, n: int) -> None:
        """Refuses writes past the environment's memory quota. The count is
        exact when refreshed (every few seconds) and counted up in between;
        replicas may each admit a few seconds' worth past it."""
        limit = self._quota(project, "max_memories_per_environment")
        # The quota counts the environment's memories of every end user.
        env_tenant = tenant.across_end_users()
        key = env_tenant.key
        async with self._count_lock:
            cached = self._counts.get(key)
            mono = time.monotonic()
            if cached is None or cached[0] < mono:
                count = await self._store.count(env_tenant, Filter(), self._clock.now())
                self._on_count(count)
            else:
                count = cached[1]
            if count + n > limit:
                self._counts[key] = (mono + _COUNT_TTL_S, count)
                raise ResourceExhausted(
                    f"this environment holds {count} memories; its quota is {limit}",
                    [
                        QuotaViolation(
                            f"environment:{tenant.environment_id}",
                            f"max_memories_per_environment={limit}",
                        )
                    ],
                    reason="MEMORY_QUOTA_EXCEEDED",
                )
            self._counts[key] = (
                cached[0] if cached is not None and cached[0] >= mono else mono + _COUNT_TTL_S,
                count + n,
            )

    def _forget_count(self, tenant: Tenant) -> None:
        self._counts.pop(Tenant(tenant.org_id, tenant.project_id, tenant.environment_id).key, None)

    # --- read ---------------------------------------------------------------------

    async def get(self, caller: Caller, memory_id: str, with_vector: bool = False) -> MemoryRecord:
        tenant, _ = await self._tenant(caller, Scope.MEMORY_READ)
        tenant = await self._reach(caller, tenant, "GetMemory")
        return await self._one(tenant, memory_id, with_vector)

    async def _one(self, tenant: Tenant, memory_id: str, with_vector: bool = False) -> MemoryRecord:
        if not memory_id:
            raise InvalidArgument.field("id", "is required")
        if not is_uuid(memory_id):
            raise NotFound(f"memory {_clip(memory_id)!r} not found")
        found = await self._store.get(
            tenant, [memory_id], self._clock.now(), with_vectors=with_vector
        )
        if not found:
            raise NotFound(f"memory {_clip(memory_id)!r} not found")
        return found[0]

    async def list_memories(
        self, caller: Caller, flt: Filter, page_size: int, page_token: str
    ) -> MemoryPage:
        tenant, _ = await self._tenant(caller, Scope.MEMORY_READ)
        validate_filter(flt)
        size = paging.page_size(page_size)
        fp = paging.fingerprint("memories", tenant.end_user_id, repr(flt))
        raw = paging.decode_keyset(page_token, fp)
        after = Cursor(datetime.fromisoformat(raw[0]), raw[1]) if raw else None
        tenant = await self._reach(caller, tenant, "ListMemories")
        page = await self._store.scroll(tenant, flt, size, self._clock.now(), after)
        token = ""
        if page.next_cursor is not None:
            token = paging.encode_keyset(
                fp, (page.next_cursor.create_time.isoformat(), page.next_cursor.id)
            )
        return MemoryPage(page.records, token)

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
    ) -> list[ScoredRecord]:
        tenant, _ = await self._tenant(caller, Scope.MEMORY_READ)
        self._check_query(query)
        v = Violations()
        if query and vector:
            v.add("query_embedding", "give query or query_embedding, not both")
        elif not query.strip() and not vector:
            v.add("query", "query or query_embedding is required")
        if vector:
            self._check_vector(v, "query_embedding", vector)
        if top_k < 0 or top_k > MAX_TOP_K:
            v.add("top_k", f"must be between 1 and {MAX_TOP_K} (0: {DEFAULT_TOP_K})")
        if not math.isfinite(min_score) or not -1.0 <= min_score <= 1.0:
            v.add("min_score", "must be between -1 and 1")
        bounded(v).raise_if_any()
        validate_filter(flt)
        if cross_project:
            _require_cross_project(caller.principal)
        tenant = await self._reach(caller, tenant, "SearchMemories")
        tenants = [tenant]
        if cross_project:
            tenants = await self._cross_project_tenants(caller.principal, tenant)
        if not vector:
            vector = (await self._embedder.embed([query], fairness_key=tenant.org_id))[0]
        return await self._store.search(
            tenants,
            vector,
            flt,
            top_k or DEFAULT_TOP_K,
            self._clock.now(),
            min_score=min_score if min_score else None,
        )

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

    async def _cross_project_tenants(self, p: Principal, tenant: Tenant) -> list[Tenant]:
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

    async def revisions(
        self, caller: Caller, memory_id: str, page_size: int, page_token: str
    ) -> tuple[list[Revision], str]:
        tenant, _ = await self._tenant(caller, Scope.MEMORY_READ)
        tenant = await self._reach(caller, tenant, "ListMemoryRevisions")
        record = await self._one(tenant, memory_id)
        size = paging.page_size(page_size)
        fp = paging.fingerprint("revisions", memory_id)
        start = paging.decode_token(page_token, fp) or 0
        if not isinstance(start, int) or start < 0:
            raise InvalidArgument.field("page_token", "is not a token this server issued")
        items = list(record.revisions[start : start + size])
        more = start + size < len(record.revisions)
        return items, paging.encode_token(fp, start + size) if more else ""

    async def export(
        self, caller: Caller, flt: Filter, with_vectors: bool
    ) -> AsyncIterator[MemoryRecord]:
        """Every memory of the tenant matching `flt`, oldest first.

        The store pages newest first, so a first pass notes where each page
        ends (one cursor per EXPORT_PAGE memories, never the memories), then
        the pages are read again from the oldest, each reversed. The export
        holds the memories that existed when it started: none twice, none
        written after it started.
        """
        tenant, _ = await self._tenant(caller, Scope.MEMORY_READ)
        validate_filter(flt)
        tenant = await self._reach(caller, tenant, "ExportMemories")
        now = self._clock.now()
        newest: Cursor | None = None
        ends: list[Cursor] = []
        after: Cursor | None = None
        while True:
            page = await self._store.scroll(tenant, flt, EXPORT_PAGE, now, after)
            if newest is None and page.records:
                newest = Cursor(page.records[0].create_time, page.records[0].id)
            if page.next_cursor is None:
                break
            ends.append(page.next_cursor)
            after = page.next_cursor
        if newest is None:
            return
        # Page k: the memories older than ends[k - 1] (page 0: from `newest`)
        # down to ends[k] included (the last page: to the oldest).
        for k in reversed(range(len(ends) + 1)):
            records = await self._segment(
                tenant,
                flt,
                now,
                start=ends[k - 1] if k else None,
                floor=ends[k] if k < len(ends) else None,
                newest=newest,
            )
            if with_vectors and records:
                by_id = {
                    r.id: r
                    for r in await self._store.get(
                        tenant, [r.id for r in records], now, with_vectors=True
                    )
                }
                records = [by_id.get(r.id, r) for r in records]
            for record in reversed(records):
                yield record

    async def _segment(
        self,
        tenant: Tenant,
        flt: Filter,
        now: datetime,
        *,
        start: Cursor | None,
        floor: Cursor | None,
        newest: Cursor,
    ) -> list[MemoryRecord]:
        """Newest first: the memories strictly older than `start` (from the
        newest when None) down to `floor` included (to the oldest when None),
        leaving out any newer than `newest`."""
        out: list[MemoryRecord] = []
        after = start
        while True:
            page = await self._store.scroll(tenant, flt, EXPORT_PAGE, now, after)
            for r in page.records:
                if floor is not None and _key(r) < _key(floor):
                    return out
                if _key(r) <= _key(newest):
                    out.append(r)
            if page.next_cursor is None:
                return out
            after = page.next_cursor

    # --- change ---------------------------------------------------------------------

    async def update(
        self, caller: Caller, memory_id: str, changes: NewMemory, paths: Sequence[str]
    ) -> MemoryRecord:
        async with self._audited(caller, "memory.update", memory_id) as ev:
            # which fields, never their values (nor paths the client made up)
            ev.details["fields"] = ",".join(sorted(UPDATABLE_FIELDS.intersection(paths)))
            return await self._update(caller, memory_id, changes, paths)

    async def _update(
        self, caller: Caller, memory_id: str, changes: NewMemory, paths: Sequence[str]
    ) -> MemoryRecord:
        tenant, project = await self._tenant(caller, Scope.MEMORY_UPDATE)
        v = Violations()
        if not paths:
            v.add("update_mask", f"is required; allowed: {', '.join(sorted(UPDATABLE_FIELDS))}")
        for i, path in enumerate(paths):
            if path not in UPDATABLE_FIELDS:
                v.add(
                    f"update_mask.paths[{i}]",
                    f"{_clip(path)!r} cannot be updated; "
                    f"allowed: {', '.join(sorted(UPDATABLE_FIELDS))}",
                )
        bounded(v).raise_if_any()
        now = self._clock.now()
        if "content" in paths and not changes.content.strip():
            v.add("memory.content", "must not be blank")
        _check_fields(
            v, "memory.", changes.agent_id, changes.thread_id, changes.source, changes.tags
        )
        _check_metadata(v, "memory.metadata", changes.metadata)
        if "embedding" in paths:
            self._check_vector(v, "memory.embedding", changes.embedding)
        if "expire_time" in paths and changes.expire_time is not None:
            if changes.expire_time <= now:
                v.add("memory.expire_time", "must be in the future (or unset to never expire)")
            elif changes.expire_time > now + MAX_TTL:
                v.add("memory.expire_time", "must be at most 3650 days ahead")
        bounded(v).raise_if_any()

        tenant = await self._reach(caller, tenant, "UpdateMemory")
        current = await self._one(tenant, memory_id, with_vector=True)
        new_content = changes.content if "content" in paths else current.content
        new_metadata = changes.metadata if "metadata" in paths else current.metadata
        self._check_sizes(project, new_content, new_metadata)
        if "embedding" in paths:
            vector: tuple[float, ...] | None = tuple(changes.embedding)
        elif "content" in paths and new_content != current.content:
            embedded = await self._embedder.embed([new_content], fairness_key=tenant.org_id)
            vector = tuple(embedded[0])
        else:
            vector = current.vector
        past = Revision(
            revision=current.revision,
            content=current.content,
            metadata=current.metadata,
            tags=current.tags,
            agent_id=current.agent_id,
            thread_id=current.thread_id,
            source=current.source,
            update_time=current.update_time,
            replace_time=now,
        )
        updated = replace(
            current,
            # A memory keeps the end user it was written for.
            tenant=current.tenant,
            content=new_content,
            metadata=dict(new_metadata),
            tags=tuple(dict.fromkeys(changes.tags)) if "tags" in paths else current.tags,
            agent_id=changes.agent_id if "agent_id" in paths else current.agent_id,
            thread_id=changes.thread_id if "thread_id" in paths else current.thread_id,
            source=changes.source if "source" in paths else current.source,
            expire_time=changes.expire_time if "expire_time" in paths else current.expire_time,
            update_time=now,
            revision=current.revision + 1,
            vector=vector,
            revisions=(past, *current.revisions)[:MAX_REVISIONS],
        )
        await self._store.upsert(current.tenant, [updated])
        await self._meter.memories_written(current.tenant, 1, len(new_content.encode()))
        return replace(updated, vector=None)

    async def delete(self, caller: Caller, memory_id: str) -> None:
        async with self._audited(caller, "memory.delete", memory_id):
            tenant, _ = await self._tenant(caller, Scope.MEMORY_DELETE)
            tenant = await self._reach(caller, tenant, "DeleteMemory")
            record = await self._one(tenant, memory_id)
            await self._store.delete(tenant, [record.id])
            self._forget_count(tenant)

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
        count = await self._store.delete_matching(tenant, flt, now)
        self._forget_count(tenant)
        return count

    async def import_stream(
        self, caller: Caller, items: AsyncIterator[NewMemory | DomainError]
    ) -> ImportSummary:
        async with self._audited(caller, "memory.import") as ev:
            summary = await self._import(caller, items)
            ev.details.update(imported=str(summary.imported), failed=str(summary.failed))
            return summary

    async def _import(
        self, caller: Caller, items: AsyncIterator[NewMemory | DomainError]
    ) -> ImportSummary:
        tenant, project = await self._tenant(caller, Scope.MEMORY_ADD)
        imported, failed = 0, 0
        errors: list[tuple[int, DomainError]] = []
        # Items that did not even convert stay in the chunk, so that failures
        # are recorded in stream order and `errors` holds the first ones.
        chunk: list[tuple[int, NewMemory | DomainError]] = []
        index = 0

        async def flush() -> None:
            nonlocal imported, failed
            news = [it for _, it in chunk if not isinstance(it, DomainError)]
            created = iter(await self._create_many(tenant, project, news, "") if news else [])
            for i, item in chunk:
                result = item if isinstance(item, DomainError) else next(created)
                if isinstance(result, DomainError):
                    failed += 1
                    if len(errors) < MAX_IMPORT_ERRORS:
                        errors.append((i, result))
                else:
                    imported += 1
            chunk.clear()

        async for item in items:
            chunk.append((index, item))
            if len(chunk) >= IMPORT_CHUNK:
                await flush()
            index += 1
        if chunk:
            await flush()
        return ImportSummary(imported, failed, errors)

    # --- maintenance -------------------------------------------------------------------

    async def sweep_expired(self) -> int:
        return await self._store.sweep_expired(self._clock.now())

    async def delete_scope(self, org_id: str, project_id: str, environment_id: str | None) -> None:
        await self._store.delete_scope(org_id, project_id, environment_id)


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


def _check_fields(
    v: Violations, prefix: str, agent_id: str, thread_id: str, source: str, tags: Sequence[str]
) -> None:
    for name, value in (("agent_id", agent_id), ("thread_id", thread_id), ("source", source)):
        if len(value) > MAX_ID_FIELD_LEN:
            v.add(prefix + name, f"must be at most {MAX_ID_FIELD_LEN} characters")
    if len(tags) > MAX_TAGS:
        v.add(prefix + "tags", f"at most {MAX_TAGS} tags")
    for i, tag in enumerate(tags):
        if not tag or len(tag) > MAX_TAG_LEN:
            v.add(f"{prefix}tags[{i}]", f"must be 1 to {MAX_TAG_LEN} characters")


def _check_metadata(v: Violations, name: str, metadata: Mapping[str, Any]) -> None:
    for key in metadata:
        if not key or "." in key or len(key) > 128:
            v.add(f"{name}.{_clip(key)}", "keys must be 1 to 128 characters without '.'")
    _check_nested_keys(v, name, metadata)


_KEY_HELP = "keys must not contain '\\' or '\"' (a filter could not name them)"


def _check_nested_keys(v: Violations, name: str, value: Any) -> None:
    """Refuses keys a filter path cannot name, at every depth (a filter can
    name nested keys: `metadata.a.b`)."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            here = f"{name}.{_clip(str(key))}"
            if any(c in str(key) for c in METADATA_KEY_FORBIDDEN):
                v.add(here, _KEY_HELP)
            _check_nested_keys(v, here, inner)
    elif isinstance(value, list | tuple):
        for i, inner in enumerate(value):
            _check_nested_keys(v, f"{name}[{i}]", inner)


def _require_cross_project(p: Principal) -> None:
    if not (Scope.ORG_CROSS_PROJECT_READ in p.scopes or Scope.ALL in p.scopes):
        raise PermissionDenied(
            f"x-allow-cross-project needs the scope '{Scope.ORG_CROSS_PROJECT_READ}'",
            reason="SCOPE_MISSING",
        )


def _dedupe_threshold(project: Project, item: NewMemory) -> float:
    return item.dedupe_threshold or project.settings.dedupe_threshold or DEFAULT_DEDUPE_THRESHOLD


def _key(at: MemoryRecord | Cursor) -> tuple[datetime, str]:
    """The position of a memory in the store's (create_time, id) order."""
    return (at.create_time, at.id)


def _clip(text: str) -> str:
    """A client string as echoed in an error: at most MAX_ECHO characters."""
    return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 1] + "…"


def bounded(v: Violations) -> Violations:
    """`v` with at most MAX_VIOLATIONS violations (and a last one saying how
    many more there were), so that the error fits in a call's trailers."""
    if len(v.items) > MAX_VIOLATIONS:
        extra = len(v.items) - MAX_VIOLATIONS
        first = v.items[0].field
        v.items[MAX_VIOLATIONS:] = [
            FieldViolation(first, f"and {extra} more violations, not listed")
        ]
    return v


# --- filters ---------------------------------------------------------------------------


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


FILTER_INVALID = "FILTER_INVALID"


def raise_filter_violations(v: Violations) -> None:
    """Raises InvalidArgument (reason FILTER_INVALID) when `v` holds any."""
    if v.items:
        items = bounded(v).items
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
        v.add(f"{name}.field", f"{_clip(f)!r} cannot be filtered on; {_FIELD_HELP}")
        return
    if is_meta:
        parts = f[len(METADATA_PREFIX) :].split(".")
        if not all(parts) or any(c in p for p in parts for c in METADATA_KEY_FORBIDDEN):
            v.add(
                f"{name}.field",
                f"{_clip(f)!r}: metadata.<key> names dot-separated keys, none empty; " + _KEY_HELP,
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
