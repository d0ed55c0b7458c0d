"""The control plane's values and its storage port: organizations, projects,
environments, API keys, audit events and usage records. `memoryd.storage.sql`
implements `ControlStore` on SQLite and PostgreSQL; usage records come from
the `UsageSource` port (`memoryd.domain.ports`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Generic, Protocol, TypeVar

from memoryd.domain.tenancy import EnvironmentKind, KeyKind

T = TypeVar("T")


@dataclass(frozen=True)
class Organization:
    id: str
    name: str
    create_time: datetime


@dataclass(frozen=True)
class ProjectSettings:
    require_end_user_id: bool = False
    dedupe_threshold: float = 0.0
    default_ttl: timedelta | None = None
    # how long a deleted project or environment stays restorable; None: the
    # server's MEMORYD_DELETION_RETENTION_DAYS
    deletion_retention_days: int | None = None


@dataclass(frozen=True)
class RateLimits:
    """Overrides; 0 means the server default."""

    project_requests_per_second: float = 0.0
    project_burst: int = 0
    key_requests_per_second: float = 0.0
    key_burst: int = 0


@dataclass(frozen=True)
class Quotas:
    """Overrides; 0 means the server default."""

    max_memories_per_environment: int = 0
    max_content_bytes: int = 0
    max_metadata_bytes: int = 0
    llm_tokens_per_day: int = 0


@dataclass(frozen=True)
class Environment:
    id: str
    org_id: str
    project_id: str
    name: str
    kind: EnvironmentKind
    create_time: datetime
    # set while deleted (restorable until purge_time)
    delete_time: datetime | None = None
    purge_time: datetime | None = None


@dataclass(frozen=True)
class Project:
    id: str
    org_id: str
    name: str
    display_name: str
    settings: ProjectSettings
    rate_limits: RateLimits
    quotas: Quotas
    create_time: datetime
    update_time: datetime
    environments: tuple[Environment, ...] = ()
    # set while deleted (restorable until purge_time)
    delete_time: datetime | None = None
    purge_time: datetime | None = None


@dataclass(frozen=True)
class ApiKeyRecord:
    """A stored key. Holds hashes only, never a plaintext secret."""

    id: str
    org_id: str
    kind: KeyKind
    name: str
    scopes: tuple[str, ...]
    secret_hash: str
    create_time: datetime
    created_by: str
    project_id: str = ""
    environment_id: str = ""
    environment_kind: EnvironmentKind | None = None
    expire_time: datetime | None = None
    last_used_time: datetime | None = None
    revoke_time: datetime | None = None
    rotate_time: datetime | None = None
    previous_secret_hash: str = ""
    previous_secret_expire_time: datetime | None = None
    # read by `get_key` only: the key's project or environment is soft-deleted
    scope_deleted: bool = False

    @property
    def prefix_kind(self) -> str:
        if self.kind is KeyKind.ORG or self.environment_kind is None:
            return "org"
        return self.environment_kind.value

    def __repr__(self) -> str:
        return f"ApiKeyRecord(id={self.id!r}, org_id={self.org_id!r}, kind={self.kind.value})"


@dataclass(frozen=True)
class AuditEvent:
    id: str
    time: datetime
    org_id: str
    actor_key_id: str
    action: str
    target: str
    outcome: str
    project_id: str = ""
    environment_id: str = ""
    request_id: str = ""
    peer: str = ""
    # Server-written facts (a refusal's reason, a purge's count, an update's
    # fields); never content or metadata values.
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UsageRecord:
    """The usage of one environment on one UTC day. Calls made with an org
    key have no project: their record has empty `project_id` and
    `environment_id`."""

    project_id: str
    environment_id: str
    date: date
    calls: int
    # full gRPC method name → served calls of it
    calls_by_method: dict[str, int]
    memories_written: int
    bytes_stored: int
    # calls refused by the rate limiter (not counted in `calls`)
    rate_limited_calls: int
    # language-model tokens of AddMessages operations
    llm_input_tokens: int = 0
    llm_output_tokens: int = 0


@dataclass(frozen=True)
class AuditQuery:
    org_id: str
    project_id: str = ""
    environment_id: str = ""
    actor_key_id: str = ""
    action: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class KeyQuery:
    org_id: str
    project_id: str = ""
    environment_id: str = ""
    show_revoked: bool = False


@dataclass(frozen=True)
class ListPage(Generic[T]):
    items: list[T] = field(default_factory=list)
    # The sort key of the last item when more may follow, else None.
    next_after: tuple[str, str] | None = None


class ControlStore(Protocol):
    """Durable control-plane state. Every lookup that a client drives takes
    the caller's `org_id` and finds nothing outside that organization.

    Raises `AlreadyExists` on a duplicate name, `NotFound` for a missing row
    in `update_*` and when a new row's parent (a project, an environment) was
    deleted meanwhile, `Unavailable` when the database cannot be reached.
    """

    async def open(self) -> None:
        """Connects and creates or migrates the schema."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    # organizations
    async def create_org(self, org: Organization) -> None: ...
    async def get_org(self, org_id: str) -> Organization | None: ...
    async def count_orgs(self) -> int: ...

    # projects and environments
    async def create_project(self, project: Project, environments: Sequence[Environment]) -> None:
        """Creates the project with its first environments, atomically."""
        ...

    async def get_project(
        self, org_id: str, project_id: str, show_deleted: bool = False
    ) -> Project | None:
        """The project (None when deleted, unless `show_deleted`), with its
        environments that are not deleted (all of them with `show_deleted`)."""
        ...

    async def list_projects(
        self, org_id: str, limit: int, after: tuple[str, str] | None, show_deleted: bool = False
    ) -> ListPage[Project]: ...
    async def update_project(self, project: Project) -> None: ...
    async def delete_project(self, org_id: str, project_id: str) -> None:
        """Erases the project, its environments and its keys (the purge)."""
        ...

    async def mark_deleted(
        self,
        org_id: str,
        project_id: str,
        environment_id: str | None,
        delete_time: datetime,
        purge_time: datetime,
    ) -> bool:
        """Soft-deletes the project (environment_id None) or the environment;
        False when it is missing or deleted already."""
        ...

    async def undelete(self, org_id: str, project_id: str, environment_id: str | None) -> bool:
        """Restores a soft-deleted project or environment; False when it is
        missing (purged) or not deleted."""
        ...

    async def due_purges(self, now: datetime, limit: int) -> list[tuple[str, str, str | None]]:
        """(org_id, project_id, environment_id or None) of the deleted
        projects and environments whose purge_time has passed; an environment
        of a deleted project is purged with its project, never alone."""
        ...

    async def create_environment(self, env: Environment) -> None: ...
    async def get_environment(
        self, org_id: str, environment_id: str, show_deleted: bool = False
    ) -> Environment | None:
        """The environment; None when it or its project is deleted, unless
        `show_deleted`."""
        ...

    async def list_environments(
        self,
        org_id: str,
        project_id: str,
        limit: int,
        after: tuple[str, str] | None,
        show_deleted: bool = False,
    ) -> ListPage[Environment]: ...
    async def list_environments_of_kind(
        self, org_id: str, kind: EnvironmentKind
    ) -> list[Environment]: ...
    async def delete_environment(self, org_id: str, environment_id: str) -> None:
        """Erases the environment and its keys (the purge)."""
        ...

    # keys
    async def create_key(self, key: ApiKeyRecord) -> None:
        """Raises NotFound, writing nothing, when a data key's environment
        does not exist (any more) in its project and organization."""
        ...

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        """By id alone: for authentication only. Client-driven reads use
        `get_org_key`."""
        ...

    async def get_org_key(self, org_id: str, key_id: str) -> ApiKeyRecord | None: ...
    async def list_keys(
        self, query: KeyQuery, limit: int, after: tuple[str, str] | None
    ) -> ListPage[ApiKeyRecord]: ...
    async def update_key(self, key: ApiKeyRecord) -> None: ...
    async def touch_key(self, key_id: str, when: datetime) -> None:
        """Records the last use of a key."""
        ...

    # audit
    async def append_audit(self, event: AuditEvent) -> None: ...
    async def list_audit(
        self, query: AuditQuery, limit: int, after: tuple[str, str] | None
    ) -> ListPage[AuditEvent]: ...
