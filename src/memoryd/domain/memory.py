"""Memories: the values, the structured filter, and the ports behind them.

The `VectorStore` port is implemented by `memoryd.storage.vectors.edge`
(Qdrant Edge, embedded) and `memoryd.storage.vectors.qdrant` (a Qdrant
server through qdrant-client). Both pass `tests/integration/test_vector_store_contract.py`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from memoryd.domain.tenancy import Tenant

JSON = Any

# Fields a filter may name, besides `metadata.<key>`. Tenant fields
# (org, project, environment, tenant) are never among them.
FILTER_KEYWORD_FIELDS = frozenset({"agent_id", "thread_id", "source", "tags", "end_user_id"})
FILTER_TIME_FIELDS = frozenset({"create_time", "update_time"})
METADATA_PREFIX = "metadata."
# Characters no metadata key may hold, at any depth: inside a quoted JSON path
# segment the engine reads `\` as an escape and `"` as the end of the key, so
# a filter on such a key cannot be expressed (Qdrant answers an error). Probed
# on Qdrant Edge and qdrant-client's local mode: spaces, brackets, `$`, `*`,
# quotes `'`, control characters and non-ASCII all filter fine.
METADATA_KEY_FORBIDDEN = ("\\", '"')


@dataclass(frozen=True)
class Origin:
    """Where a memory came from: the operation (AddMessages) that wrote or
    last changed it, the messages and extractor behind it, and the API key
    that wrote it. Empty fields are unknown (a memory written by
    CreateMemory knows only its writer)."""

    operation_id: str = ""  # the operation id (without "operations/")
    message_indexes: tuple[int, ...] = ()
    thread_id: str = ""
    extractor: str = ""
    extractor_version: str = ""
    prompt_versions: tuple[str, ...] = ()
    writer_key_id: str = ""


@dataclass(frozen=True)
class Validity:
    """Which memories a read sees by their time of truth.

    Default: those that hold at the read's `now` (valid_time <= now <
    invalid_time). include_invalidated: also those that stopped holding (and
    those whose valid_time is still ahead). as_of: those that held at
    `as_of` (valid_time <= as_of < invalid_time); overrides
    include_invalidated.
    """

    include_invalidated: bool = False
    as_of: datetime | None = None


CURRENT = Validity()


class SearchMode(enum.Enum):
    """How a search ranks: by meaning (the embeddings), by the query's
    words (BM25 with the caller's own word statistics), or both fused."""

    SEMANTIC = "semantic"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class Ranking:
    """How a search orders what it finds.

    `text` is the query's words (KEYWORD and HYBRID need them). With
    `recency_half_life`, each score is multiplied by 0.5^(age / half-life),
    the age counted from the memory's valid_time. With `diversity` (0..1,
    0: off), the results are chosen by maximal marginal relevance among the
    candidates, which needs the query vector.
    """

    mode: SearchMode = SearchMode.SEMANTIC
    text: str = ""
    recency_half_life: timedelta | None = None
    diversity: float = 0.0

    @property
    def needs_vector(self) -> bool:
        return self.mode is not SearchMode.KEYWORD or self.diversity > 0

    @property
    def needs_text(self) -> bool:
        return self.mode is not SearchMode.SEMANTIC


BY_MEANING = Ranking()


@dataclass(frozen=True)
class Revision:
    """A past state of a memory, kept when it is updated. `valid_time` and
    `invalid_time` are that state's (None: not recorded, or never invalid)."""

    revision: int
    content: str
    metadata: Mapping[str, JSON]
    tags: tuple[str, ...]
    agent_id: str
    thread_id: str
    source: str
    update_time: datetime
    replace_time: datetime
    valid_time: datetime | None = None
    invalid_time: datetime | None = None


@dataclass(frozen=True)
class MemoryRecord:
    """One memory as stored. `vector` is None when not read.

    Time of truth: the memory holds from `valid_time` (None: from
    `create_time`; a stored memory always has one) until `invalid_time`
    (None: it still holds). `superseded_by` names the memory that replaced
    it, and `origin` says where it came from.
    """

    id: str
    tenant: Tenant
    content: str
    metadata: Mapping[str, JSON]
    agent_id: str
    thread_id: str
    source: str
    tags: tuple[str, ...]
    create_time: datetime
    update_time: datetime
    expire_time: datetime | None
    revision: int
    vector: tuple[float, ...] | None = None
    revisions: tuple[Revision, ...] = ()
    valid_time: datetime | None = None
    invalid_time: datetime | None = None
    superseded_by: str = ""
    origin: Origin = Origin()


@dataclass(frozen=True)
class ScoredRecord:
    record: MemoryRecord
    score: float


# --- the structured filter -------------------------------------------------


@dataclass(frozen=True)
class Match:
    """`field` equals `value` (for `tags`: the memory has the tag)."""

    field: str
    value: str | int | float | bool


@dataclass(frozen=True)
class MatchAny:
    """`field` equals any of `values`."""

    field: str
    values: tuple[str | int, ...]


@dataclass(frozen=True)
class NumberRange:
    field: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class TimeRange:
    """`start <= field < end`; None bounds are open."""

    field: str
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class Filter:
    """All `must` hold, at least one `should` holds (if any), no `must_not` holds."""

    must: tuple[Condition, ...] = ()
    should: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.must or self.should or self.must_not)


Condition = Match | MatchAny | NumberRange | TimeRange | Filter


@dataclass(frozen=True)
class Cursor:
    """Position in a newest-first listing: strictly after (create_time, id)."""

    create_time: datetime
    id: str


@dataclass(frozen=True)
class Page:
    records: list[MemoryRecord] = field(default_factory=list)
    next_cursor: Cursor | None = None


# What a deleting call hands each batch of records it deleted (the change log).
OnDeleted = Callable[[Sequence[MemoryRecord]], Awaitable[None]]


class VectorStore(Protocol):
    """Stores memory points. Every method takes the tenant(s) and confines
    itself to them: a point of another tenant is never read, counted, changed
    or deleted, even by id. Expired points (expire_time <= now) are invisible
    to every read. End user: a tenant with `end_user_id` sees only that end
    user's points; one without sees only the points without an end user,
    unless it has `all_end_users` (then all of the environment's points).
    Time of truth: `search` and `scroll` see the points their `Validity`
    admits (by default those that hold at `now`); `get` sees a point
    whatever its validity, and `count`, `delete_matching`, `delete_scope`
    and `sweep_expired` ignore it.

    Raises `memoryd.domain.errors.Unavailable` when the engine cannot be
    reached, `FailedPrecondition` from `open` on a model mismatch.
    """

    async def open(self, model_id: str, dimension: int) -> None:
        """Creates the collection or checks that it was made for this model."""
        ...

    async def close(self) -> None: ...

    async def upsert(self, tenant: Tenant, records: Sequence[MemoryRecord]) -> None:
        """Writes whole records (with vectors) of `tenant`. Records must carry
        `tenant` as their tenant (end user included)."""
        ...

    async def get(
        self, tenant: Tenant, ids: Sequence[str], now: datetime, *, with_vectors: bool = False
    ) -> list[MemoryRecord]:
        """The records among `ids` visible to `tenant`, in no given order,
        with their revisions, whether they still hold or not."""
        ...

    async def delete(self, tenant: Tenant, ids: Sequence[str]) -> None:
        """Deletes the records among `ids` that belong to `tenant`."""
        ...

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
        """The best records for `ranking` among the given tenants (one, or
        several of one organization for a cross-project search) that
        `validity` admits, without their revisions. `vector` is needed
        unless the ranking is by keywords alone; `min_score` bounds the
        cosine similarity (in HYBRID, of the semantic candidates only).
        Keyword statistics come from the given tenants' records only."""
        ...

    async def scroll(
        self,
        tenant: Tenant,
        flt: Filter,
        limit: int,
        now: datetime,
        after: Cursor | None = None,
        validity: Validity = CURRENT,
    ) -> Page:
        """Records that `validity` admits, newest first (create_time desc,
        id desc), strictly after `after`, without their revisions."""
        ...

    async def count(self, tenant: Tenant, flt: Filter, now: datetime) -> int:
        """The exact number of visible records matching `flt` (holding or not)."""
        ...

    async def delete_matching(
        self, tenant: Tenant, flt: Filter, now: datetime, on_deleted: OnDeleted | None = None
    ) -> int:
        """Deletes the visible records matching `flt`, holding or not;
        answers how many. `on_deleted` (when given) is awaited with each
        batch of records (without vectors or revisions) once it is deleted;
        if it raises, deleting stops there and the error propagates."""
        ...

    async def delete_scope(
        self, org_id: str, project_id: str, environment_id: str | None = None
    ) -> int:
        """Deletes every record of a project (or one of its environments);
        answers how many there were."""
        ...

    async def count_scope(
        self, org_id: str, project_id: str, environment_id: str | None = None
    ) -> int:
        """How many records a project (or one of its environments) has, of
        any tenant within it, expired or not (a purge's verification)."""
        ...

    async def sweep_expired(
        self,
        now: datetime,
        limit: int = 10_000,
        on_deleted: OnDeleted | None = None,
        keep: Sequence[Tenant] = (),
    ) -> int:
        """Deletes up to `limit` expired records of any tenant but those of
        `keep` (legal holds); answers how many. `on_deleted` as for
        `delete_matching`."""
        ...

    async def count_expired(self, now: datetime, within: Sequence[Tenant]) -> int:
        """The expired records of the tenants `within` (held from the sweep)."""
        ...


class Embedder(Protocol):
    """Turns text into vectors. Raises `Unavailable` when a remote provider fails."""

    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str], *, fairness_key: str = "") -> list[list[float]]:
        """One unit-norm vector of `dimension` floats per text, in order.

        `fairness_key` names who the work is for (the organization): an
        embedder that shares a model between callers serves the keys in turn,
        so that one key's large call does not hold up the others. It may
        refuse with `ResourceExhausted` when one key has too much waiting.
        Cancelling the call stops its remaining work.
        """
        ...

    async def close(self) -> None: ...
