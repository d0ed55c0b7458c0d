"""The `VectorStore` behaviour both Qdrant adapters share, written once over a
handful of engine primitives each adapter supplies.

Every primitive takes an engine filter, and every filter of a tenant's call
is built here from the `Tenant` (`memoryd.storage.vectors.conditions`) and
the domain filter (`memoryd.storage.vectors.filters`): the adapters never
see a domain filter or a tenant. The one unfiltered read
(`_owners`) serves the cross-tenant id check of `upsert` and returns only
the owner of each id, never to a caller.

Points of an older payload layout are brought to this one in place when a
store opens (`_upgrade_points`), before it serves any call.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Generic

from memoryd.crypto.sealer import Sealer
from memoryd.domain.encryption import EnvRef
from memoryd.domain.errors import AlreadyExists, InvalidArgument, Unavailable
from memoryd.domain.memory import (
    BY_MEANING,
    CURRENT,
    Cursor,
    Filter,
    MemoryRecord,
    OnDeleted,
    Page,
    Ranking,
    ScoredRecord,
    Validity,
)
from memoryd.domain.tenancy import Tenant
from memoryd.storage.vectors import conditions as cond
from memoryd.storage.vectors import layout as p
from memoryd.storage.vectors import ranking as rk
from memoryd.storage.vectors.conditions import C, F
from memoryd.storage.vectors.filters import translate
from memoryd.storage.vectors.layout import Hit, Point

# Points per engine call when reading or deleting in batches: small enough
# that one call never holds an embedded engine for long.
BATCH = 256

log = logging.getLogger("memoryd.storage.vectors")


class PointStore(abc.ABC, Generic[C, F]):
    """A `VectorStore` over one Qdrant collection (or Edge shard)."""

    # Whether `upsert` reads the owners again after writing: needed where
    # other processes write to the same collection (no lock spans them).
    _recheck_owners = False

    def __init__(self, tuning: rk.Tuning | None = None, sealer: Sealer | None = None) -> None:
        self._dimension: int | None = None
        self._tuning = tuning or rk.Tuning()
        # content and revisions are sealed with their environment's data key
        self._sealer = sealer

    # --- lifecycle ----------------------------------------------------------

    @abc.abstractmethod
    async def open(self, model_id: str, dimension: int) -> None:
        """Creates the collection or checks that it was made for this model;
        raises FailedPrecondition when it was not."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Releases the engine; later calls raise Unavailable. Idempotent."""

    # --- engine primitives ------------------------------------------------

    @property
    @abc.abstractmethod
    def _c(self) -> cond.Conditions[C, F]:
        """The engine's condition builder."""

    @abc.abstractmethod
    async def _upsert(self, points: list[Point], guard: F) -> None:
        """Writes `points`; an existing point not matching `guard` stays as it is."""

    @abc.abstractmethod
    async def _owners(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        """(tenant key, end user) of each of `ids` that exists, of any tenant."""

    @abc.abstractmethod
    async def _scroll(
        self,
        flt: F,
        limit: int,
        *,
        newest_first: bool = False,
        offset: str | None = None,
        with_payload: bool = True,
        with_vectors: bool = False,
    ) -> tuple[list[Hit], str | None]:
        """Up to `limit` points matching `flt`: by create_time descending when
        `newest_first` (then no next offset), else by id from `offset`."""

    @abc.abstractmethod
    async def _query(self, flt: F, plan: rk.Plan[F]) -> list[Hit]:
        """The points `plan` ranks best among those matching `flt`, best
        first (every stage of the plan confined to `flt`)."""

    @abc.abstractmethod
    async def _count(self, flt: F) -> int:
        """The exact number of points matching `flt`."""

    @abc.abstractmethod
    async def _delete(self, flt: F) -> None:
        """Deletes the points matching `flt`."""

    @abc.abstractmethod
    async def _set_payloads(self, changes: list[tuple[F, dict[str, Any]]]) -> None:
        """For each (filter, fields): sets those payload fields (keeping the
        others) on the points matching the filter. Never creates a point."""

    async def _purge(self, flt: F) -> None:
        """Deletes every point matching `flt`, however many. By default in
        batches, so that no single engine call is long."""
        while await self._delete_batch(flt, BATCH):
            pass

    def _write_lock(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held around a check-then-write sequence. Adapters whose engine can
        be shared with other writers rely on conditional writes instead."""
        return contextlib.nullcontext()

    # --- VectorStore --------------------------------------------------------

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            raise Unavailable("the vector store is not open", reason="VECTOR_STORE_CLOSED")
        return self._dimension

    async def upsert(self, tenant: Tenant, records: Sequence[MemoryRecord]) -> None:
        """Writes whole records of `tenant` (one end user's, the records
        without an end user, or, for a tenant reaching all end users, records
        of any of its end users).

        Raises InvalidArgument for a record outside `tenant`, without a
        vector of the store's dimension, or with an id that is not a UUID;
        AlreadyExists when an id is taken by a point `tenant` cannot see
        (ids are global in the collection). Nothing is written then, except
        where a concurrent writer took an id between the check and the write
        (found by the re-check of adapters without a lock): then the other
        records of the batch are written, and that one is not.
        """
        if not records:
            return
        if self._sealer is not None:
            await self._sealer.ready([_env_of(tenant)], create=True)
        # The guard repeats the owner check inside the write itself, so a point
        # of another tenant that appears between the check and the write is
        # still not overwritten.
        guard = self._c.filter(must=cond.tenant_conditions(self._c, [tenant]))
        points: list[Point] = []
        for r in records:
            if r.tenant.all_end_users or not cond.can_see(
                tenant, r.tenant.key, r.tenant.end_user_id
            ):
                # A memory belongs to one end user or to none, never to "all".
                raise InvalidArgument.field("tenant", "a record of another tenant was given")
            pid = p.point_id(r.id)
            if pid is None:
                raise InvalidArgument.field("id", f"memory ids are UUIDs, got {r.id!r}")
            if r.vector is None or len(r.vector) != self.dimension:
                got = "none" if r.vector is None else f"{len(r.vector)} dimensions"
                raise InvalidArgument.field(
                    "vector", f"this store holds {self.dimension}-d vectors, got {got}"
                )
            words = rk.document_keywords(r.content)
            keywords = None if words is None else (words.indices, words.values)
            points.append(Point(pid, list(map(float, r.vector)), self._payload(r), keywords))
        async with self._write_lock():
            owners = await self._owners([pt.id for pt in points])
            if any(not cond.can_see(tenant, *owner) for owner in owners.values()):
                raise _taken()
            await self._upsert(points, guard)
            if self._recheck_owners:
                # The guard skips, silently, a point another writer created
                # between the check and the write: find out, and say so.
                owners = await self._owners([pt.id for pt in points])
                if any(not cond.can_see(tenant, *owner) for owner in owners.values()):
                    raise _taken()

    async def get(
        self, tenant: Tenant, ids: Sequence[str], now: datetime, *, with_vectors: bool = False
    ) -> list[MemoryRecord]:
        """The records among `ids` visible to `tenant`, in no given order,
        with their revisions."""
        wanted = _point_ids(ids)
        out: list[MemoryRecord] = []
        for i in range(0, len(wanted), BATCH):
            chunk = wanted[i : i + BATCH]
            flt = self._read_filter([tenant], now, extra=[self._c.has_id(chunk)])
            hits, _ = await self._scroll(flt, len(chunk), with_vectors=with_vectors)
            # by id: a caller may be about to update the record, whose
            # history it must carry on (or list)
            out.extend(await self._records(hits, with_vectors=with_vectors, with_revisions=True))
        return out

    async def delete(self, tenant: Tenant, ids: Sequence[str]) -> None:
        """Deletes the records among `ids` that belong to `tenant` (expired or not)."""
        wanted = _point_ids(ids)
        for i in range(0, len(wanted), BATCH):
            chunk = wanted[i : i + BATCH]
            must = [*cond.tenant_conditions(self._c, [tenant]), self._c.has_id(chunk)]
            async with self._write_lock():
                await self._delete(self._c.filter(must=must))

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
        """The best visible records for `ranking` among `tenants` that
        `validity` admits, best first; `min_score` bounds the cosine
        similarity (of the semantic candidates). Keyword statistics (IDF)
        count the points of `tenants` only, whatever the filter. Records
        come without their revisions."""
        if not tenants or limit <= 0:
            return []
        if vector is not None and len(vector) != self.dimension:
            raise InvalidArgument.field(
                "vector", f"this store holds {self.dimension}-d vectors, got {len(vector)}"
            )
        if ranking.needs_vector and vector is None:
            raise InvalidArgument.field("vector", "this search needs the query vector")
        engine_filter = self._read_filter(tenants, now, flt, validity)
        corpus = self._c.filter(must=cond.tenant_conditions(self._c, tenants))
        query = rk.plan(
            ranking,
            None if vector is None else [float(x) for x in vector],
            limit,
            min_score,
            corpus,
            now,
            self._tuning,
        )
        if query is None:
            return []
        hits = await self._query(engine_filter, query)
        records = await self._records(hits)
        return [ScoredRecord(r, h.score) for r, h in zip(records, hits, strict=True)]

    async def scroll(
        self,
        tenant: Tenant,
        flt: Filter,
        limit: int,
        now: datetime,
        after: Cursor | None = None,
        validity: Validity = CURRENT,
    ) -> Page:
        """Visible records that `validity` admits, newest first (create_time
        desc, id desc), strictly after `after`, without their revisions.
        `next_cursor` is None on the last page.

        Both engines order by one payload field only, and ties on create_time
        (a batch written at one instant) are common, so the keyset is walked
        in two steps: first the rest of the cursor's create_time group (read
        whole, sorted by id here), then older points ordered by the engine;
        when that read is cut inside a create_time group, the group is read
        whole so the page ends on an exact (create_time, id) position. So a
        page that starts or ends inside a group of records created at one
        instant costs reading that whole group: fine for batches, slow for
        an import of many thousands stamped alike.
        """
        if limit <= 0:
            return Page()
        base = self._read_conditions([tenant], now, flt, validity)
        rows: list[tuple[int, str, Hit]] = []
        older: list[C] = []
        if after is not None:
            at = p.to_micros(after.create_time)
            after_id = p.point_id(after.id)
            if after_id is None:
                raise InvalidArgument.field("page_token", "the page token is not valid")
            group = await self._scroll_all(
                self._c.filter(must=[*base, cond.created_at(self._c, at)])
            )
            rows = [(at, h.id, h) for h in group if h.id < after_id]
            older = [cond.created_before(self._c, at)]
        need = limit + 1 - len(rows)
        if need > 0:
            hits, _ = await self._scroll(
                self._c.filter(must=[*base, *older]), need, newest_first=True
            )
            if len(hits) == need:
                # The last create_time group may continue past the cut: read it whole.
                last = hits[-1].payload[p.CREATE_TIME]
                hits = [h for h in hits if h.payload[p.CREATE_TIME] != last]
                hits += await self._scroll_all(
                    self._c.filter(must=[*base, cond.created_at(self._c, last)])
                )
            rows += [(h.payload[p.CREATE_TIME], h.id, h) for h in hits]
        rows.sort(key=lambda row: (row[0], row[1]), reverse=True)
        records = await self._records([h for _, _, h in rows[:limit]])
        more = len(rows) > limit
        return Page(
            records=records,
            next_cursor=Cursor(records[-1].create_time, records[-1].id) if more else None,
        )

    async def count(self, tenant: Tenant, flt: Filter, now: datetime) -> int:
        """The exact number of visible records of `tenant` matching `flt`."""
        return await self._count(self._read_filter([tenant], now, flt))

    async def delete_matching(
        self, tenant: Tenant, flt: Filter, now: datetime, on_deleted: OnDeleted | None = None
    ) -> int:
        """Deletes the visible records matching `flt`; answers how many. Works
        in batches: each batch deletes exactly the points it read, re-checked
        against the filter, so a point changed meanwhile is not deleted.
        `on_deleted` sees each batch's records after it is deleted."""
        engine_filter = self._read_filter([tenant], now, flt)
        deleted = 0
        while hits := await self._delete_batch(engine_filter, BATCH, on_deleted is not None):
            deleted += len(hits)
            if on_deleted is not None:
                await on_deleted(await self._records(hits))
        return deleted

    async def delete_scope(
        self, org_id: str, project_id: str, environment_id: str | None = None
    ) -> int:
        """Deletes every record of a project, or of one of its environments;
        answers how many there were."""
        flt = self._scope_filter(org_id, project_id, environment_id)
        there = await self._count(flt)
        await self._purge(flt)
        return there

    async def count_scope(
        self, org_id: str, project_id: str, environment_id: str | None = None
    ) -> int:
        return await self._count(self._scope_filter(org_id, project_id, environment_id))

    def _scope_filter(self, org_id: str, project_id: str, environment_id: str | None) -> F:
        must = [self._c.match(p.ORG_ID, org_id), self._c.match(p.PROJECT_ID, project_id)]
        if environment_id is not None:
            must.append(self._c.match(p.ENVIRONMENT_ID, environment_id))
        return self._c.filter(must=must)

    async def sweep_expired(
        self,
        now: datetime,
        limit: int = 10_000,
        on_deleted: OnDeleted | None = None,
        keep: Sequence[Tenant] = (),
    ) -> int:
        """Deletes up to `limit` expired records of any tenant but those of
        `keep`; answers how many. `on_deleted` sees each batch's records
        after it is deleted."""
        held = [
            self._c.nest(self._c.filter(must=cond.tenant_conditions(self._c, [t]))) for t in keep
        ]
        engine_filter = self._c.filter(must=[cond.expired(self._c, now)], must_not=held)
        deleted = 0
        while deleted < limit:
            hits = await self._delete_batch(
                engine_filter, min(BATCH, limit - deleted), on_deleted is not None
            )
            if not hits:
                break
            deleted += len(hits)
            if on_deleted is not None:
                await on_deleted(await self._records(hits))
        return deleted

    async def count_expired(self, now: datetime, within: Sequence[Tenant]) -> int:
        """The expired records of the tenants `within`."""
        if not within:
            return 0
        any_of = [
            self._c.nest(self._c.filter(must=cond.tenant_conditions(self._c, [t]))) for t in within
        ]
        expired = self._c.filter(must=[cond.expired(self._c, now)], should=any_of)
        return await self._count(expired)

    async def end_user_points(self, tenant: Tenant) -> tuple[int, int]:
        """(points, revisions they keep) of `tenant`'s end user, in every
        state: expired and invalidated too (what an erasure must reach)."""
        flt = self._c.filter(must=cond.tenant_conditions(self._c, [tenant]))
        points = revisions = 0
        offset: str | None = None
        while True:
            hits, offset = await self._scroll(flt, BATCH, offset=offset)
            points += len(hits)
            revisions += sum(len(h.payload.get(p.REVISIONS) or ()) for h in hits)
            if offset is None:
                return points, revisions

    async def erase_end_user(self, tenant: Tenant) -> int:
        """Deletes every point of `tenant`'s end user, in every state;
        answers how many."""
        flt = self._c.filter(must=cond.tenant_conditions(self._c, [tenant]))
        erased = 0
        while hits := await self._delete_batch(flt, BATCH):
            erased += len(hits)
        return erased

    async def count_end_user(self, tenant: Tenant) -> int:
        """The points of `tenant`'s end user left, in every state."""
        return await self._count(self._c.filter(must=cond.tenant_conditions(self._c, [tenant])))

    # --- helpers ------------------------------------------------------------

    def _payload(self, record: MemoryRecord) -> dict[str, Any]:
        """The payload of `record`'s point, its texts sealed."""
        payload = p.to_payload(record)
        if self._sealer is not None:
            env = _env_of(record.tenant)
            seal = self._sealer.seal
            payload[p.CONTENT] = seal(env, p.CONTENT, payload[p.CONTENT])
            for revision in payload[p.REVISIONS]:
                revision["content"] = seal(env, p.REVISIONS, revision["content"])
        return payload

    async def _records(
        self, hits: Sequence[Hit], *, with_vectors: bool = False, with_revisions: bool = False
    ) -> list[MemoryRecord]:
        """The records of `hits`, their texts opened (loading the data keys
        they need first)."""
        sealer = self._sealer
        if sealer is None:
            return [
                _record(h, with_vectors=with_vectors, with_revisions=with_revisions) for h in hits
            ]
        await sealer.ready_for((p.environment_of(h.payload), h.payload[p.CONTENT]) for h in hits)
        out = []
        for h in hits:
            env = p.environment_of(h.payload)
            opened = dict(h.payload)
            opened[p.CONTENT] = sealer.open(env, p.CONTENT, opened[p.CONTENT])
            if with_revisions and opened.get(p.REVISIONS):
                opened[p.REVISIONS] = [
                    {**r, "content": sealer.open(env, p.REVISIONS, r["content"])}
                    for r in opened[p.REVISIONS]
                ]
            out.append(
                p.from_payload(
                    h.id,
                    opened,
                    h.vector if with_vectors else None,
                    with_revisions=with_revisions,
                )
            )
        return out

    def _read_conditions(
        self,
        tenants: Sequence[Tenant],
        now: datetime,
        flt: Filter | None = None,
        validity: Validity | None = None,
    ) -> list[C]:
        """What a read requires: the tenants, not expired, the domain filter,
        and what `validity` admits (None: whatever holds or held)."""
        must = [*cond.tenant_conditions(self._c, tenants), cond.alive(self._c, now)]
        if validity is not None:
            must.extend(cond.admitted(self._c, validity, now))
        if flt is not None and not flt.empty:
            must.append(self._c.nest(translate(self._c, flt)))
        return must

    def _read_filter(
        self,
        tenants: Sequence[Tenant],
        now: datetime,
        flt: Filter | None = None,
        validity: Validity | None = None,
        extra: Sequence[C] = (),
    ) -> F:
        """The filter of a read, and `extra`."""
        return self._c.filter(must=[*self._read_conditions(tenants, now, flt, validity), *extra])

    async def _upgrade_points(self) -> int:
        """Brings the points of layout 1 (without a time of truth) to this
        layout in place, in batches, and answers how many it changed.

        Only the missing fields are set (`layout.upgrade`), each by a filter
        that still requires the point to lack them: a point deleted or
        rewritten meanwhile (another replica) is left as it is, never
        recreated. Idempotent; if stopped midway, the next open carries on
        from the points still lacking them.
        """
        old = self._c.filter(must_not=[cond.has_validity(self._c)])
        upgraded = 0
        offset: str | None = None
        while True:
            hits, offset = await self._scroll(old, BATCH, offset=offset)
            if hits:
                changes = [
                    (
                        self._c.filter(
                            must=[self._c.has_id([h.id])],
                            must_not=[cond.has_validity(self._c)],
                        ),
                        p.upgrade(h.payload),
                    )
                    for h in hits
                ]
                async with self._write_lock():
                    await self._set_payloads(changes)
                upgraded += len(hits)
            if offset is None:
                break
        if upgraded:
            log.info("upgraded %d memory points to payload layout %d", upgraded, p.LAYOUT)
        return upgraded

    async def _delete_batch(self, flt: F, limit: int, with_payload: bool = False) -> list[Hit]:
        """Deletes up to `limit` points matching `flt`; answers them (with
        their payloads when asked)."""
        async with self._write_lock():
            hits, _ = await self._scroll(flt, limit, with_payload=with_payload)
            if hits:
                ids = [h.id for h in hits]
                await self._delete(self._c.filter(must=[self._c.nest(flt), self._c.has_id(ids)]))
            return hits

    async def _scroll_all(self, flt: F) -> list[Hit]:
        """Every point matching `flt`, read in batches."""
        out: list[Hit] = []
        offset: str | None = None
        while True:
            hits, offset = await self._scroll(flt, BATCH, offset=offset)
            out.extend(hits)
            if offset is None:
                return out


def _taken() -> AlreadyExists:
    return AlreadyExists(
        "a memory with this id already exists; omit the id to have one assigned",
        reason="MEMORY_ID_TAKEN",
    )


def _env_of(tenant: Tenant) -> EnvRef:
    return (tenant.org_id, tenant.project_id, tenant.environment_id)


def _point_ids(ids: Sequence[str]) -> list[str]:
    """The distinct UUIDs among `ids`; anything else names no point."""
    return list(dict.fromkeys(pid for i in ids if (pid := p.point_id(i)) is not None))


def _record(hit: Hit, *, with_vectors: bool = False, with_revisions: bool = False) -> MemoryRecord:
    return p.from_payload(
        hit.id, hit.payload, hit.vector if with_vectors else None, with_revisions=with_revisions
    )
