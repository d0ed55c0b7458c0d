"""The create path, as named steps: validate each item, embed those without
a vector, find near-duplicates (among the memories that hold now), reserve
the environment's quota, store and meter the new memories. One item's
failure fails that item only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from memoryd.domain.changes import EventType
from memoryd.domain.clock import Clock
from memoryd.domain.control import Project
from memoryd.domain.errors import DomainError
from memoryd.domain.ids import new_memory_id
from memoryd.domain.memories.dedupe import duplicates
from memoryd.domain.memories.model import Created, Defaults, NewMemory, WriteMeter
from memoryd.domain.memories.quota import EnvironmentCounts, effective_quota, size_limits
from memoryd.domain.memories.recording import NO_CAUSE, Cause, ChangeRecorder
from memoryd.domain.memories.validation import validate_new
from memoryd.domain.memory import Embedder, MemoryRecord, Origin, VectorStore
from memoryd.domain.tenancy import Tenant


@dataclass(frozen=True)
class _Valid:
    """An item that passed validation: its position in the call, its expiry."""

    index: int
    item: NewMemory
    expire: datetime | None


class Writer:
    """Creates memories for a tenant whose call was already authorized."""

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        clock: Clock,
        counts: EnvironmentCounts,
        meter: WriteMeter,
        defaults: Defaults,
        changes: ChangeRecorder | None = None,
    ) -> None:
        self._store = store
        self._changes = changes or ChangeRecorder()
        self._embedder = embedder
        self._clock = clock
        self._counts = counts
        self._meter = meter
        self._defaults = defaults

    async def create_many(
        self,
        tenant: Tenant,
        project: Project,
        items: Sequence[NewMemory],
        prefix: str,
        *,
        writer_key_id: str,
        cause: Cause = NO_CAUSE,
    ) -> list[Created | DomainError]:
        """One result per item, in order: the created (or deduplicated)
        memory, or the item's error (field names prefixed with `prefix`,
        which may hold "{i}" for the item's index). A refused quota or a
        store failure fails the whole call. Each new memory's origin is its
        item's, with `writer_key_id` (the calling key's id) as its writer.
        The new memories are recorded as CREATED (caused by `cause`); a
        deduplicated item changes nothing and records nothing."""
        now = self._clock.now()
        results: list[Created | DomainError | None] = [None] * len(items)
        valid = self._validate(items, project, now, prefix, results)
        vectors = await self._vectors_for([v.item for v in valid], fairness_key=tenant.org_id)
        hits = await duplicates(self._store, tenant, project, [v.item for v in valid], vectors, now)
        outcomes = self._outcomes(tenant, valid, vectors, hits, now, writer_key_id)
        new = [c.record for c in outcomes if not c.deduplicated]
        await self._write(tenant, project, new, cause)
        for v, outcome in zip(valid, outcomes, strict=True):
            results[v.index] = outcome
        return [r for r in results if r is not None]

    def _validate(
        self,
        items: Sequence[NewMemory],
        project: Project,
        now: datetime,
        prefix: str,
        results: list[Created | DomainError | None],
    ) -> list[_Valid]:
        """The valid items; each invalid one's error goes in `results`."""
        limits = size_limits(self._defaults, project)
        valid: list[_Valid] = []
        for i, item in enumerate(items):
            try:
                expire = validate_new(
                    item, project, now, prefix.format(i=i), self._embedder.dimension
                )
                limits.check(item.content, item.metadata)
            except DomainError as err:
                results[i] = err
            else:
                valid.append(_Valid(i, item, expire))
        return valid

    async def _vectors_for(
        self, items: Sequence[NewMemory], *, fairness_key: str
    ) -> list[list[float]]:
        """The client's vector of each item, or its content embedded."""
        texts = [(i, it.content) for i, it in enumerate(items) if not it.embedding]
        out: list[list[float]] = [list(it.embedding) for it in items]
        if texts:
            embedded = await self._embedder.embed([t for _, t in texts], fairness_key=fairness_key)
            for (i, _), vec in zip(texts, embedded, strict=True):
                out[i] = vec
        return out

    @staticmethod
    def _outcomes(
        tenant: Tenant,
        valid: Sequence[_Valid],
        vectors: Sequence[Sequence[float]],
        hits: Sequence[MemoryRecord | int | None],
        now: datetime,
        writer_key_id: str,
    ) -> list[Created]:
        """A new record for each item without a duplicate, else the memory
        it duplicates (stored, or an earlier new record of this call)."""
        outcomes: list[Created] = []
        for v, vector, hit in zip(valid, vectors, hits, strict=True):
            if isinstance(hit, int):
                outcomes.append(Created(outcomes[hit].record, deduplicated=True))
            elif hit is not None:
                outcomes.append(Created(hit, deduplicated=True))
            else:
                outcomes.append(Created(_record(tenant, v, vector, now, writer_key_id)))
        return outcomes

    async def _write(
        self, tenant: Tenant, project: Project, records: list[MemoryRecord], cause: Cause
    ) -> None:
        if not records:
            return
        limit = effective_quota(self._defaults, project, "max_memories_per_environment")
        await self._counts.reserve(tenant, limit, len(records))
        await self._store.upsert(tenant, records)
        await self._changes.record([(EventType.CREATED, r) for r in records], cause)
        await self._meter.memories_written(
            tenant, len(records), sum(len(r.content.encode()) for r in records)
        )


def _record(
    tenant: Tenant, v: _Valid, vector: Sequence[float], now: datetime, writer_key_id: str
) -> MemoryRecord:
    item = v.item
    return MemoryRecord(
        id=item.id or new_memory_id(),
        tenant=tenant,
        content=item.content,
        metadata=dict(item.metadata),
        agent_id=item.agent_id,
        thread_id=item.thread_id,
        source=item.source,
        tags=tuple(dict.fromkeys(item.tags)),
        create_time=now,
        update_time=now,
        expire_time=v.expire,
        revision=1,
        vector=tuple(vector),
        valid_time=item.valid_time or now,
        invalid_time=item.invalid_time,
        origin=replace(item.origin or Origin(), writer_key_id=writer_key_id),
    )
