"""In-memory fakes of the domain's ports, for the `tests/unit/domain` tier.

Each fake keeps the part of its port's contract the domain's rules lean on,
written plainly (dicts and lists) so that a reader can check it by eye:

- `FakeControlStore`: organizations, projects, environments, keys and the
  audit log, confined to the caller's organization like the SQL store;
- `FakeVectorStore`: memory points in a dict, with the tenant rule (one end
  user, none, or all of them), expiry, the time of truth (`Validity`), the
  structured filter and cosine search;
- `FakeHasher`: sha256, compared in constant time;
- `ListSink`, `Invalidations`: record what the domain sent them.

`Domain` wires them with the real `Auditor`, the real `HashingEmbedder`
and a `ManualClock`, and builds `MemoryService`, `KeyManager` and
`ProjectManager` on them; it also seeds organizations, projects and keys and
makes callers.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from memoryd.domain.audit import Auditor
from memoryd.domain.clock import ManualClock
from memoryd.domain.control import (
    ApiKeyRecord,
    AuditEvent,
    Environment,
    KeyQuery,
    ListPage,
    Organization,
    Project,
    ProjectSettings,
    Quotas,
    RateLimits,
)
from memoryd.domain.errors import AlreadyExists, NotFound
from memoryd.domain.keys import KeyManager
from memoryd.domain.memories import Defaults, MemoryService
from memoryd.domain.memory import (
    BY_MEANING,
    CURRENT,
    Condition,
    Cursor,
    Filter,
    Match,
    MatchAny,
    MemoryRecord,
    NumberRange,
    OnDeleted,
    Page,
    Ranking,
    ScoredRecord,
    SearchMode,
    TimeRange,
    Validity,
)
from memoryd.domain.projects import Ceilings, ProjectManager
from memoryd.domain.tenancy import Caller, EnvironmentKind, KeyKind, Principal, Scope, Tenant
from memoryd.embeddings.hashing import HashingEmbedder

T = TypeVar("T")

# --- the control store ---------------------------------------------------------------------


def _page(
    items: Iterable[T],
    key: Callable[[T], tuple[str, str]],
    limit: int,
    after: tuple[str, str] | None,
) -> ListPage[T]:
    """Newest first by `key` (ISO time, id), strictly after `after`."""
    ordered = sorted(items, key=key, reverse=True)
    if after is not None:
        ordered = [x for x in ordered if key(x) < after]
    page = ordered[:limit]
    more = len(ordered) > limit
    return ListPage(page, key(page[-1]) if more else None)


def _by_time(x: Any) -> tuple[str, str]:
    return (x.create_time.isoformat(), x.id)


class FakeControlStore:
    """The part of `ControlStore` that MemoryService, KeyManager and
    ProjectManager use (it also serves as their `ProjectSource`)."""

    def __init__(self) -> None:
        self.orgs: dict[str, Organization] = {}
        self.projects: dict[str, Project] = {}
        self.environments: dict[str, Environment] = {}
        self.keys: dict[str, ApiKeyRecord] = {}
        self.audit: list[AuditEvent] = []

    async def create_org(self, org: Organization) -> None:
        self.orgs[org.id] = org

    async def get_org(self, org_id: str) -> Organization | None:
        return self.orgs.get(org_id)

    # projects and environments

    async def create_project(self, project: Project, environments: Sequence[Environment]) -> None:
        if any(
            p.org_id == project.org_id and p.name == project.name for p in self.projects.values()
        ):
            raise AlreadyExists(f"a project named {project.name!r} exists")
        self.projects[project.id] = replace(project, environments=())
        for env in environments:
            self.environments[env.id] = env

    async def get_project(
        self, org_id: str, project_id: str, show_deleted: bool = False
    ) -> Project | None:
        project = self.projects.get(project_id)
        if project is None or project.org_id != org_id:
            return None
        if project.delete_time is not None and not show_deleted:
            return None
        envs = tuple(
            e
            for e in self.environments.values()
            if e.project_id == project_id and (show_deleted or e.delete_time is None)
        )
        return replace(project, environments=envs)

    async def list_projects(
        self, org_id: str, limit: int, after: tuple[str, str] | None, show_deleted: bool = False
    ) -> ListPage[Project]:
        mine = (
            p
            for p in self.projects.values()
            if p.org_id == org_id and (show_deleted or p.delete_time is None)
        )
        return _page(mine, _by_time, limit, after)

    async def mark_deleted(
        self,
        org_id: str,
        project_id: str,
        environment_id: str | None,
        delete_time: datetime,
        purge_time: datetime,
    ) -> bool:
        if environment_id is None:
            p = self.projects.get(project_id)
            if p is None or p.org_id != org_id or p.delete_time is not None:
                return False
            self.projects[project_id] = replace(p, delete_time=delete_time, purge_time=purge_time)
            return True
        e = self.environments.get(environment_id)
        if e is None or e.org_id != org_id or e.delete_time is not None:
            return False
        self.environments[environment_id] = replace(
            e, delete_time=delete_time, purge_time=purge_time
        )
        return True

    async def undelete(self, org_id: str, project_id: str, environment_id: str | None) -> bool:
        if environment_id is None:
            p = self.projects.get(project_id)
            if p is None or p.org_id != org_id or p.delete_time is None:
                return False
            self.projects[project_id] = replace(p, delete_time=None, purge_time=None)
            return True
        e = self.environments.get(environment_id)
        if e is None or e.org_id != org_id or e.delete_time is None:
            return False
        self.environments[environment_id] = replace(e, delete_time=None, purge_time=None)
        return True

    async def due_purges(self, now: datetime, limit: int) -> list[tuple[str, str, str | None]]:
        out: list[tuple[str, str, str | None]] = [
            (p.org_id, p.id, None)
            for p in self.projects.values()
            if p.purge_time is not None and p.purge_time <= now
        ]
        out.extend(
            (e.org_id, e.project_id, e.id)
            for e in self.environments.values()
            if e.purge_time is not None
            and e.purge_time <= now
            and self.projects[e.project_id].delete_time is None
        )
        return out[:limit]

    async def update_project(self, project: Project) -> None:
        if await self.get_project(project.org_id, project.id) is None:
            raise NotFound("project not found")
        self.projects[project.id] = replace(project, environments=())

    async def delete_project(self, org_id: str, project_id: str) -> None:
        if await self.get_project(org_id, project_id, show_deleted=True) is None:
            return
        del self.projects[project_id]
        for env in [e for e in self.environments.values() if e.project_id == project_id]:
            await self.delete_environment(org_id, env.id)
        self.keys = {k: v for k, v in self.keys.items() if v.project_id != project_id}

    async def create_environment(self, env: Environment) -> None:
        if await self.get_project(env.org_id, env.project_id) is None:
            raise NotFound("project not found")
        siblings = (e for e in self.environments.values() if e.project_id == env.project_id)
        if any(e.name == env.name for e in siblings):
            raise AlreadyExists(f"an environment named {env.name!r} exists")
        self.environments[env.id] = env

    async def get_environment(
        self, org_id: str, environment_id: str, show_deleted: bool = False
    ) -> Environment | None:
        env = self.environments.get(environment_id)
        if env is None or env.org_id != org_id:
            return None
        if not show_deleted and (
            env.delete_time is not None or self.projects[env.project_id].delete_time is not None
        ):
            return None
        return env

    async def list_environments(
        self,
        org_id: str,
        project_id: str,
        limit: int,
        after: tuple[str, str] | None,
        show_deleted: bool = False,
    ) -> ListPage[Environment]:
        mine = (
            e
            for e in self.environments.values()
            if e.org_id == org_id
            and e.project_id == project_id
            and (show_deleted or e.delete_time is None)
        )
        return _page(mine, _by_time, limit, after)

    async def list_environments_of_kind(
        self, org_id: str, kind: EnvironmentKind
    ) -> list[Environment]:
        return [e for e in self.environments.values() if e.org_id == org_id and e.kind is kind]

    async def delete_environment(self, org_id: str, environment_id: str) -> None:
        if await self.get_environment(org_id, environment_id, show_deleted=True) is None:
            return
        del self.environments[environment_id]
        self.keys = {k: v for k, v in self.keys.items() if v.environment_id != environment_id}

    # keys

    async def create_key(self, key: ApiKeyRecord) -> None:
        if key.kind is KeyKind.DATA:
            env = await self.get_environment(key.org_id, key.environment_id)
            if env is None or env.project_id != key.project_id:
                raise NotFound("environment not found")
        self.keys[key.id] = key

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        return self.keys.get(key_id)

    async def get_org_key(self, org_id: str, key_id: str) -> ApiKeyRecord | None:
        key = self.keys.get(key_id)
        return key if key is not None and key.org_id == org_id else None

    async def list_keys(
        self, query: KeyQuery, limit: int, after: tuple[str, str] | None
    ) -> ListPage[ApiKeyRecord]:
        def wanted(k: ApiKeyRecord) -> bool:
            return (
                k.org_id == query.org_id
                and query.project_id in ("", k.project_id)
                and query.environment_id in ("", k.environment_id)
                and (query.show_revoked or k.revoke_time is None)
            )

        return _page(filter(wanted, self.keys.values()), _by_time, limit, after)

    async def update_key(self, key: ApiKeyRecord) -> None:
        if await self.get_org_key(key.org_id, key.id) is None:
            raise NotFound("key not found")
        self.keys[key.id] = key

    # audit

    async def append_audit(self, event: AuditEvent) -> None:
        self.audit.append(event)


# --- the vector store ------------------------------------------------------------------------


def _visible(tenant: Tenant, record: MemoryRecord, now: datetime) -> bool:
    """The tenant rule and expiry, as the `VectorStore` contract states them."""
    alive = record.expire_time is None or record.expire_time > now
    return alive and tenant.sees(record.tenant.key, record.tenant.end_user_id)


def admits(validity: Validity, record: MemoryRecord, now: datetime) -> bool:
    """Whether a read of `validity` at `now` sees `record`, as `Validity` states it."""
    if validity.include_invalidated and validity.as_of is None:
        return True
    at = validity.as_of or now
    since = record.valid_time or record.create_time
    return since <= at and (record.invalid_time is None or at < record.invalid_time)


def _values(record: MemoryRecord, name: str) -> list[Any]:
    """The values of a filter field on a record (a list: `tags` has several)."""
    if name == "tags":
        return list(record.tags)
    if name == "end_user_id":
        return [record.tenant.end_user_id]
    if name.startswith("metadata."):
        value: Any = record.metadata
        for part in name.removeprefix("metadata.").split("."):
            if not isinstance(value, Mapping) or part not in value:
                return []
            value = value[part]
        return value if isinstance(value, list) else [value]
    return [getattr(record, name)]


def matches(record: MemoryRecord, cond: Condition) -> bool:
    """Whether `record` meets a condition of the structured filter."""
    if isinstance(cond, Filter):
        return (
            all(matches(record, c) for c in cond.must)
            and (not cond.should or any(matches(record, c) for c in cond.should))
            and not any(matches(record, c) for c in cond.must_not)
        )
    values = _values(record, cond.field)
    if isinstance(cond, Match):
        return cond.value in values
    if isinstance(cond, MatchAny):
        return any(v in values for v in cond.values)
    if isinstance(cond, NumberRange):
        return any(_in_range(v, cond) for v in values if isinstance(v, int | float))
    return any(_in_time_range(v, cond) for v in values)


def _in_range(v: float, r: NumberRange) -> bool:
    return (
        (r.gt is None or v > r.gt)
        and (r.gte is None or v >= r.gte)
        and (r.lt is None or v < r.lt)
        and (r.lte is None or v <= r.lte)
    )


def _in_time_range(v: datetime, r: TimeRange) -> bool:
    return (r.start is None or v >= r.start) and (r.end is None or v < r.end)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


class FakeVectorStore:
    """`VectorStore` over a dict of id → record. `upserts` counts writes, so
    a test can tell a refused call never reached the store; `rankings` holds
    the ranking of each search."""

    def __init__(self) -> None:
        self.records: dict[str, MemoryRecord] = {}
        self.upserts = 0
        self.rankings: list[Ranking] = []

    async def upsert(self, tenant: Tenant, records: Sequence[MemoryRecord]) -> None:
        for record in records:
            assert record.tenant == tenant, "a record is written with its own tenant"
            self.records[record.id] = record
        self.upserts += 1

    async def get(
        self, tenant: Tenant, ids: Sequence[str], now: datetime, *, with_vectors: bool = False
    ) -> list[MemoryRecord]:
        found = [self.records[i] for i in ids if i in self.records]
        return [
            r if with_vectors else replace(r, vector=None)
            for r in found
            if _visible(tenant, r, now)
        ]

    async def delete(self, tenant: Tenant, ids: Sequence[str]) -> None:
        for i in ids:
            record = self.records.get(i)
            if record is not None and tenant.sees(record.tenant.key, record.tenant.end_user_id):
                del self.records[i]

    def _matching(
        self, tenants: Sequence[Tenant], flt: Filter, now: datetime, validity: Validity | None
    ) -> list[MemoryRecord]:
        """Visible to one of `tenants`, matching `flt`, admitted by
        `validity` (None: holding or not)."""
        return [
            r
            for r in self.records.values()
            if any(_visible(t, r, now) for t in tenants)
            and matches(r, flt)
            and (validity is None or admits(validity, r, now))
        ]

    async def search(
        self,
        tenants: Sequence[Tenant],
        vector: Sequence[float] | None,
        flt: Filter,
        limit: int,
        now: datetime,
        min_score: float | None = None,
        validity: Validity = CURRENT,
        ranking: Ranking = BY_MEANING,
    ) -> list[ScoredRecord]:
        """Cosine similarity; for KEYWORD the number of the query's words
        in the content (a stand-in for BM25), for HYBRID their sum."""
        self.rankings.append(ranking)
        words = set(ranking.text.lower().split())
        scored = []
        for r in self._matching(tenants, flt, now, validity):
            similarity = _cosine(vector, r.vector or ()) if vector is not None else 0.0
            overlap = len(words & set(r.content.lower().split()))
            similar = min_score is None or similarity >= min_score
            if ranking.mode is SearchMode.KEYWORD:
                keep, score = overlap > 0, float(overlap)
            elif ranking.mode is SearchMode.SEMANTIC:
                keep, score = similar, similarity
            else:
                keep, score = similar or overlap > 0, similarity + overlap
            if keep:
                scored.append(ScoredRecord(replace(r, vector=None, revisions=()), score))
        return sorted(scored, key=lambda s: s.score, reverse=True)[:limit]

    async def scroll(
        self,
        tenant: Tenant,
        flt: Filter,
        limit: int,
        now: datetime,
        after: Cursor | None = None,
        validity: Validity = CURRENT,
    ) -> Page:
        def key(r: MemoryRecord) -> tuple[datetime, str]:
            return (r.create_time, r.id)

        ordered = sorted(self._matching([tenant], flt, now, validity), key=key, reverse=True)
        if after is not None:
            ordered = [r for r in ordered if key(r) < (after.create_time, after.id)]
        page = [replace(r, vector=None, revisions=()) for r in ordered[:limit]]
        more = len(ordered) > limit
        return Page(page, Cursor(page[-1].create_time, page[-1].id) if more else None)

    async def count(self, tenant: Tenant, flt: Filter, now: datetime) -> int:
        return len(self._matching([tenant], flt, now, None))

    async def delete_matching(
        self, tenant: Tenant, flt: Filter, now: datetime, on_deleted: OnDeleted | None = None
    ) -> int:
        doomed = self._matching([tenant], flt, now, None)
        for r in doomed:
            del self.records[r.id]
        if on_deleted is not None and doomed:
            await on_deleted([replace(r, vector=None, revisions=()) for r in doomed])
        return len(doomed)

    async def delete_scope(
        self, org_id: str, project_id: str, environment_id: str | None = None
    ) -> int:
        before = len(self.records)
        self.records = {
            i: r
            for i, r in self.records.items()
            if not _in_scope(r.tenant, org_id, project_id, environment_id)
        }
        return before - len(self.records)

    async def count_scope(
        self, org_id: str, project_id: str, environment_id: str | None = None
    ) -> int:
        return sum(
            _in_scope(r.tenant, org_id, project_id, environment_id) for r in self.records.values()
        )

    async def sweep_expired(
        self, now: datetime, limit: int = 10_000, on_deleted: OnDeleted | None = None
    ) -> int:
        expired = [
            r for r in self.records.values() if r.expire_time is not None and r.expire_time <= now
        ][:limit]
        for r in expired:
            del self.records[r.id]
        if on_deleted is not None and expired:
            await on_deleted([replace(r, vector=None, revisions=()) for r in expired])
        return len(expired)


# --- the small ports -------------------------------------------------------------------------


class FakeHasher:
    """`SecretHasher` as plain sha256: fast, and the same contract (a
    self-describing hash, False for a wrong secret or a malformed hash)."""

    async def hash(self, secret: str) -> str:
        return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()

    async def verify(self, secret: str, hashed: str) -> bool:
        return secrets.compare_digest(await self.hash(secret), hashed)

    def close(self) -> None:
        return None


class ListSink:
    """`AuditSink` that keeps every event in order."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def append(self, event: AuditEvent) -> None:
        self.events.append(event)

    def actions(self) -> list[str]:
        return [e.action for e in self.events]


class Invalidations:
    """`KeyInvalidator` that notes the key ids it was told about."""

    def __init__(self) -> None:
        self.key_ids: list[str] = []

    async def __call__(self, key_id: str) -> None:
        self.key_ids.append(key_id)


class MemoryScopeDeletions:
    """A `MemoryScopeDeleter` that notes (org, project, environment or None)."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, str, str | None]] = []

    async def __call__(self, org_id: str, project_id: str, environment_id: str | None) -> None:
        self.scopes.append((org_id, project_id, environment_id))


# --- wiring ----------------------------------------------------------------------------------

ORG = "org_1"
DIMENSION = 64


@dataclass
class Domain:
    """The fakes of one test, the services built on them, and seeding helpers."""

    clock: ManualClock = field(default_factory=ManualClock)
    control: FakeControlStore = field(default_factory=FakeControlStore)
    vectors: FakeVectorStore = field(default_factory=FakeVectorStore)
    embedder: HashingEmbedder = field(default_factory=lambda: HashingEmbedder(DIMENSION))
    hasher: FakeHasher = field(default_factory=FakeHasher)
    sink: ListSink = field(default_factory=ListSink)
    invalidated: Invalidations = field(default_factory=Invalidations)
    deleted_scopes: MemoryScopeDeletions = field(default_factory=MemoryScopeDeletions)
    auditor: Auditor = field(init=False)

    def __post_init__(self) -> None:
        self.auditor = Auditor(self.control, self.clock, self.sink)

    def memory_service(self, defaults: Defaults | None = None) -> MemoryService:
        return MemoryService(
            self.vectors, self.embedder, self.control, self.clock, defaults, auditor=self.auditor
        )

    def key_manager(self) -> KeyManager:
        return KeyManager(self.control, self.hasher, self.auditor, self.clock, self.invalidated)

    def project_manager(self, ceilings: Ceilings | None = None) -> ProjectManager:
        return ProjectManager(
            self.control,
            self.auditor,
            self.clock,
            self.invalidated,
            self.deleted_scopes,
            ceilings=ceilings or Ceilings(),
        )

    # --- seeding ---

    async def project(
        self,
        name: str = "app",
        *,
        org_id: str = ORG,
        settings: ProjectSettings | None = None,
        quotas: Quotas | None = None,
        kinds: Sequence[EnvironmentKind] = (EnvironmentKind.LIVE,),
    ) -> Project:
        """A project `prj_<name>` with one environment `env_<name>_<kind>` per kind."""
        now = self.clock.now()
        if org_id not in self.control.orgs:
            await self.control.create_org(Organization(org_id, org_id, now))
        project = Project(
            id=f"prj_{name}",
            org_id=org_id,
            name=name,
            display_name="",
            settings=settings or ProjectSettings(),
            rate_limits=RateLimits(),
            quotas=quotas or Quotas(),
            create_time=now,
            update_time=now,
        )
        envs = [
            Environment(f"env_{name}_{k.value}", org_id, project.id, k.value, k, now) for k in kinds
        ]
        await self.control.create_project(project, envs)
        return replace(project, environments=tuple(envs))

    def data_caller(
        self,
        project: Project,
        scopes: Iterable[str] = (Scope.MEMORY_READ, Scope.MEMORY_ADD),
        *,
        end_user: str = "",
        kind: EnvironmentKind = EnvironmentKind.LIVE,
    ) -> Caller:
        """A verified data key of `project`'s environment of `kind`."""
        env = next(e for e in project.environments if e.kind is kind)
        return Caller(
            Principal(
                key_id=f"key_{project.name}_{kind.value}",
                kind=KeyKind.DATA,
                org_id=project.org_id,
                scopes=frozenset(scopes),
                project_id=project.id,
                environment_id=env.id,
                environment_kind=kind,
                end_user_id=end_user,
            ),
            request_id="req-1",
        )

    async def org_key(
        self,
        scopes: Iterable[str] = (Scope.ALL,),
        *,
        org_id: str = ORG,
        expire_time: datetime | None = None,
        name: str = "",
    ) -> tuple[ApiKeyRecord, Caller]:
        """A stored org key and a caller verified with it."""
        scopes = tuple(scopes)
        now = self.clock.now()
        if org_id not in self.control.orgs:
            await self.control.create_org(Organization(org_id, org_id, now))
        key_id = f"k{len(self.control.keys):011d}"
        record = ApiKeyRecord(
            id=key_id,
            org_id=org_id,
            kind=KeyKind.ORG,
            name=name or key_id,
            scopes=scopes,
            secret_hash=await self.hasher.hash(key_id),
            create_time=now,
            created_by="bootstrap",
            expire_time=expire_time,
        )
        await self.control.create_key(record)
        # keys made in one test sort by creation: one microsecond apart
        self.clock.advance(1e-6)
        return record, Caller(Principal(key_id, KeyKind.ORG, org_id, frozenset(scopes)))


def _in_scope(tenant: Tenant, org_id: str, project_id: str, environment_id: str | None) -> bool:
    """Whether `tenant` is within a project, or one of its environments."""
    return (tenant.org_id, tenant.project_id) == (org_id, project_id) and (
        environment_id is None or tenant.environment_id == environment_id
    )
