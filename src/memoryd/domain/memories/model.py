"""The values of the memory service: what a client asks to write or change,
what a call answers, the server's quota defaults, and the two small ports
the service reads projects and meters writes through. The stored values and
the store's port are `memoryd.domain.memory`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from memoryd.domain.control import Environment, Project
from memoryd.domain.errors import DomainError
from memoryd.domain.memory import MemoryRecord, Origin
from memoryd.domain.tenancy import Tenant

# The fields a client's update mask may name.
UPDATABLE_FIELDS = frozenset(
    {
        "content",
        "metadata",
        "tags",
        "agent_id",
        "thread_id",
        "source",
        "expire_time",
        "embedding",
        "valid_time",
        "invalid_time",
    }
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
    """One memory to create, as the client sent it.

    `valid_time` None: it holds from its creation; `invalid_time` None: it
    still holds. The last two fields are the server's own, never a
    client's: `id` a UUID the server chose for the memory (a write again
    with the same id overwrites it rather than adding another), and
    `origin` its provenance (its `writer_key_id` is always the caller's).
    """

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
    valid_time: datetime | None = None
    invalid_time: datetime | None = None
    id: str = ""
    origin: Origin | None = None


@dataclass(frozen=True)
class MemoryUpdate:
    """A change to one memory: the fields named in `paths` (the update mask,
    in the client's order) take the values given here; the others keep
    theirs. A client's path outside UPDATABLE_FIELDS is refused.
    None under its path means: for `expire_time`, never expire; for
    `valid_time`, from the creation; for `invalid_time`, it still holds.
    `superseded_by` and `origin` are the server's own paths (a job
    superseding or rewriting a memory), never a client's."""

    paths: tuple[str, ...]
    content: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    agent_id: str = ""
    thread_id: str = ""
    source: str = ""
    tags: tuple[str, ...] = ()
    embedding: tuple[float, ...] = ()
    expire_time: datetime | None = None
    valid_time: datetime | None = None
    invalid_time: datetime | None = None
    superseded_by: str = ""
    origin: Origin | None = None


@dataclass(frozen=True)
class Created:
    """A created memory, or with `deduplicated` the stored (or earlier in
    the same call) memory the new one was a near-duplicate of."""

    record: MemoryRecord
    deduplicated: bool = False


@dataclass(frozen=True)
class MemoryPage:
    records: list[MemoryRecord]
    next_page_token: str


@dataclass(frozen=True)
class ImportSummary:
    """Counts of an import, and the first failures by stream position."""

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


class NoMeter:
    """A WriteMeter that counts nothing (no usage metering configured)."""

    async def memories_written(self, tenant: Tenant, count: int, content_bytes: int) -> None:
        return None
