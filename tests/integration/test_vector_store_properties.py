"""Random operations from many tenants against both real vector stores,
every read checked against an in-memory model of the contract.

Hypothesis drives a state machine per engine (Qdrant Edge in a temporary
directory; qdrant-client local mode): upserts (new ids, updates, and ids of
other tenants that must be refused), gets, deletes, searches (also across
tenants), paginated scrolls, counts, delete_matching, delete_scope, expiry
by a moving clock and sweeps. Tenants come from a pool of 2 organizations x
2 projects x 2 environments x (no end user, 2 end users). Records hold from
a valid_time (past or ahead) until an invalid_time (or always), and searches
and scrolls read them at now, at a time (as_of) or whatever their validity.
A read that shows a record its tenant may not see, misses one it may, or
miscounts, fails.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from qdrant_client import QdrantClient

from memoryd.domain.errors import AlreadyExists
from memoryd.domain.memory import (
    CURRENT,
    Condition,
    Cursor,
    Filter,
    Match,
    MatchAny,
    MemoryRecord,
    NumberRange,
    TimeRange,
    Validity,
)
from memoryd.domain.tenancy import Tenant
from memoryd.storage.vectors.edge import EdgeVectorStore
from memoryd.storage.vectors.point_store import PointStore
from memoryd.storage.vectors.qdrant import QdrantVectorStore

T = TypeVar("T")

DIM = 4
START = datetime(2026, 5, 1, tzinfo=UTC)
# "*": a tenant reaching every end user of its environment (memory:all_end_users);
# "": only the memories without an end user; "u1", "u2": one end user's.
TENANTS = [
    Tenant(org, prj, env, "" if user == "*" else user, all_end_users=user == "*")
    for org in ("org_1", "org_2")
    for prj in ("prj_1", "prj_2")
    for env in ("env_1", "env_2")
    for user in ("", "u1", "u2", "*")
]
SETTINGS = settings(
    max_examples=30,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

EVERYTHING = Filter()

tenants = st.sampled_from(TENANTS)
vectors = (
    st.lists(st.integers(-3, 3), min_size=DIM, max_size=DIM)
    .filter(any)
    .map(lambda v: tuple(x / math.sqrt(sum(y * y for y in v)) for x in v))
)
metadata = st.fixed_dictionaries(
    {},
    optional={
        "color": st.sampled_from(["red", "blue", "true"]),
        "n": st.sampled_from([0, 1, 2, 2.5, 3.0]),
        "flag": st.booleans(),
    },
)
leaf_conditions: st.SearchStrategy[Condition] = st.one_of(
    st.builds(Match, st.just("agent_id"), st.sampled_from(["x", "y", ""])),
    st.builds(Match, st.just("tags"), st.sampled_from(["a", "b", "c"])),
    st.builds(Match, st.just("end_user_id"), st.sampled_from(["", "u1", "u2"])),
    st.builds(MatchAny, st.just("tags"), st.lists(st.sampled_from("abc"), max_size=2).map(tuple)),
    st.builds(Match, st.just("metadata.color"), st.sampled_from(["red", "blue", "true"])),
    st.builds(Match, st.just("metadata.flag"), st.booleans()),
    st.builds(Match, st.just("metadata.n"), st.sampled_from([1, 2, 3, 2.5])),
    st.builds(
        NumberRange,
        st.just("metadata.n"),
        gt=st.none() | st.sampled_from([0.0, 1.0]),
        lte=st.none() | st.sampled_from([2.0, 3.0]),
    ),
    st.builds(
        TimeRange,
        st.sampled_from(["create_time", "update_time"]),
        start=st.none() | st.integers(0, 40).map(lambda s: START - timedelta(seconds=s)),
        end=st.none() | st.integers(0, 40).map(lambda s: START + timedelta(seconds=s)),
    ),
)
validities: st.SearchStrategy[Validity] = st.one_of(
    st.just(CURRENT),
    st.just(Validity(include_invalidated=True)),
    st.builds(
        Validity,
        include_invalidated=st.booleans(),
        as_of=st.integers(-10, 60).map(lambda s: START + timedelta(seconds=s)),
    ),
)
filters: st.SearchStrategy[Filter] = st.one_of(
    st.just(Filter()),
    st.builds(Filter, must=st.lists(leaf_conditions, max_size=2).map(tuple)),
    st.builds(
        Filter,
        must=st.lists(leaf_conditions, max_size=1).map(tuple),
        should=st.lists(leaf_conditions, max_size=2).map(tuple),
        must_not=st.lists(
            leaf_conditions
            | st.builds(Filter, should=st.lists(leaf_conditions, max_size=2).map(tuple)),
            max_size=1,
        ).map(tuple),
    ),
)


def can_see(viewer: Tenant, owner: Tenant) -> bool:
    return owner.key == viewer.key and (
        viewer.all_end_users or owner.end_user_id == viewer.end_user_id
    )


def owner_of(tenant: Tenant, end_user_id: str = "") -> Tenant:
    """A memory's own tenant: one end user or none, never all of them."""
    return replace(tenant, end_user_id=end_user_id, all_end_users=False)


def _same_type_equal(have: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return isinstance(have, bool) and isinstance(want, bool) and have == want
    if isinstance(want, str) or isinstance(have, str):
        return isinstance(have, str) and isinstance(want, str) and have == want
    return have is not None and have == want


def matches(r: MemoryRecord, c: Condition) -> bool:
    """The contract's meaning of a filter condition."""
    if isinstance(c, Filter):
        return (
            all(matches(r, x) for x in c.must)
            and (not c.should or any(matches(r, x) for x in c.should))
            and not any(matches(r, x) for x in c.must_not)
        )
    if isinstance(c, TimeRange):
        t = r.create_time if c.field == "create_time" else r.update_time
        return (c.start is None or c.start <= t) and (c.end is None or t < c.end)
    if c.field.startswith("metadata."):
        value = r.metadata.get(c.field.removeprefix("metadata."))
        if isinstance(c, NumberRange):
            if not isinstance(value, int | float) or isinstance(value, bool):
                return False
            return (
                (c.gt is None or value > c.gt)
                and (c.gte is None or value >= c.gte)
                and (c.lt is None or value < c.lt)
                and (c.lte is None or value <= c.lte)
            )
        wanted = (c.value,) if isinstance(c, Match) else c.values
        return any(_same_type_equal(value, w) for w in wanted)
    assert isinstance(c, Match | MatchAny), c  # the strategies make no others here
    if c.field == "tags":
        have: tuple[str, ...] = r.tags
    elif c.field == "end_user_id":
        have = (r.tenant.end_user_id,)
    else:
        have = (getattr(r, c.field),)
    wanted = (c.value,) if isinstance(c, Match) else c.values
    return any(w in have for w in wanted)


def admits(validity: Validity, r: MemoryRecord, now: datetime) -> bool:
    """The contract's meaning of a validity."""
    if validity.as_of is None and validity.include_invalidated:
        return True
    at = validity.as_of or now
    assert r.valid_time is not None  # the model's records all say
    return r.valid_time <= at and (r.invalid_time is None or at < r.invalid_time)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


class StoreMachine(RuleBasedStateMachine):
    """The model: every point in the store (expired or not), by id."""

    def make_store(self) -> PointStore[Any, Any]:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = self.make_store()
        self.run(self.store.open("prop/model", DIM))
        self.model: dict[str, MemoryRecord] = {}
        self.now = START
        self.ids_made = 0

    def next_id(self) -> str:
        # Deterministic (Hypothesis replays a run exactly) yet in no useful order.
        self.ids_made += 1
        return str(uuid.uuid5(uuid.NAMESPACE_OID, str(self.ids_made)))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.loop.close()

    def visible(
        self,
        viewers: Sequence[Tenant],
        flt: Filter = EVERYTHING,
        validity: Validity | None = None,
    ) -> dict[str, MemoryRecord]:
        """What `viewers` see of the model (`validity` None: holding or not)."""
        return {
            i: r
            for i, r in self.model.items()
            if any(can_see(v, r.tenant) for v in viewers)
            and (r.expire_time is None or r.expire_time > self.now)
            and matches(r, flt)
            and (validity is None or admits(validity, r, self.now))
        }

    def check_records(self, tenant: Sequence[Tenant], got: Sequence[MemoryRecord]) -> None:
        for g in got:
            assert any(can_see(t, g.tenant) for t in tenant), f"{tenant} saw {g.tenant}'s {g.id}"
            assert replace(g, vector=None) == replace(self.model[g.id], vector=None)

    def pick_tenant(self, data: st.DataObject) -> Tenant:
        """Any tenant of the pool or, as often, one next to existing records
        (an owner, its whole tenant, a sibling end user): most reads of a
        random tenant would find nothing."""
        near = sorted(
            {
                replace(r.tenant, end_user_id=u.strip("*"), all_end_users=u == "*")
                for r in self.model.values()
                for u in ("", "u1", "u2", "*")
            },
            key=lambda t: (t.key, t.end_user_id, t.all_end_users),
        )
        return data.draw(st.sampled_from(near) | tenants if near else tenants)

    def some_ids(self, data: st.DataObject) -> list[str]:
        pool = sorted(self.model)
        known = data.draw(st.lists(st.sampled_from(pool), max_size=4)) if pool else []
        return known + [self.next_id() for _ in range(data.draw(st.integers(0, 1)))]

    # --- writes ---------------------------------------------------------------

    def new_records(self, tenant: Tenant, data: st.DataObject, n: int) -> list[MemoryRecord]:
        recs: list[MemoryRecord] = []
        for _ in range(n):
            owner = tenant
            if tenant.all_end_users:  # a tenant reaching all end users writes for any
                owner = owner_of(tenant, data.draw(st.sampled_from(["", "u1", "u2"])))
            ttl = data.draw(st.none() | st.integers(-2, 20))
            valid_time = self.now + timedelta(seconds=data.draw(st.sampled_from([-6, 0, 3])))
            lasts = data.draw(st.none() | st.integers(1, 10))
            recs.append(
                MemoryRecord(
                    id=self.next_id(),
                    tenant=owner,
                    content=data.draw(st.text(max_size=8)),
                    metadata=data.draw(metadata),
                    agent_id=data.draw(st.sampled_from(["x", "y", ""])),
                    thread_id="t",
                    source="s",
                    tags=tuple(
                        data.draw(st.lists(st.sampled_from("abc"), unique=True, max_size=2))
                    ),
                    # Few distinct instants: many records share a create_time.
                    create_time=self.now - timedelta(seconds=data.draw(st.sampled_from([0, 1, 5]))),
                    update_time=self.now - timedelta(seconds=data.draw(st.integers(0, 3))),
                    expire_time=None if ttl is None else self.now + timedelta(seconds=ttl),
                    revision=1,
                    vector=data.draw(vectors),
                    valid_time=valid_time,
                    invalid_time=None if lasts is None else valid_time + timedelta(seconds=lasts),
                )
            )
        return recs

    @initialize(data=st.data())
    def seed(self, data: st.DataObject) -> None:
        for tenant in data.draw(st.lists(tenants, min_size=3, max_size=6)):
            self.write(tenant, self.new_records(tenant, data, data.draw(st.integers(1, 8))))

    def write(self, tenant: Tenant, recs: list[MemoryRecord]) -> None:
        refused = any(
            r.id in self.model and not can_see(tenant, self.model[r.id].tenant) for r in recs
        )
        if refused:
            with pytest.raises(AlreadyExists):
                self.run(self.store.upsert(tenant, recs))
            return
        self.run(self.store.upsert(tenant, recs))
        self.model.update({r.id: r for r in recs})

    @rule(tenant=tenants, data=st.data(), n=st.integers(1, 6))
    def upsert(self, tenant: Tenant, data: st.DataObject, n: int) -> None:
        self.write(tenant, self.new_records(tenant, data, n))

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def update_or_take_over(self, data: st.DataObject) -> None:
        """Writes an existing id: an update when `tenant` may see its record,
        else (another tenant's id) refused, the batch with it."""
        tenant = self.pick_tenant(data)
        target = self.model[data.draw(st.sampled_from(sorted(self.model)))]
        mine = owner_of(tenant, tenant.end_user_id)
        owner = target.tenant if can_see(tenant, target.tenant) else mine
        [rec, *others] = self.new_records(tenant, data, data.draw(st.integers(1, 3)))
        changed = replace(rec, id=target.id, tenant=owner, create_time=target.create_time)
        self.write(tenant, [replace(changed, revision=target.revision + 1), *others])

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        tenant = self.pick_tenant(data)
        doomed = self.some_ids(data)
        self.run(self.store.delete(tenant, doomed))
        for i in doomed:
            if i in self.model and can_see(tenant, self.model[i].tenant):
                del self.model[i]

    @rule(data=st.data(), flt=filters)
    def delete_matching(self, data: st.DataObject, flt: Filter) -> None:
        tenant = self.pick_tenant(data)
        expected = self.visible([tenant], flt)
        assert self.run(self.store.delete_matching(tenant, flt, self.now)) == len(expected)
        for i in expected:
            del self.model[i]

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data(), whole_project=st.booleans())
    def delete_scope(self, data: st.DataObject, whole_project: bool) -> None:
        t = data.draw(tenants)
        env = None if whole_project else t.environment_id
        self.run(self.store.delete_scope(t.org_id, t.project_id, env))
        for i, r in list(self.model.items()):
            rt = r.tenant
            if (rt.org_id, rt.project_id) == (t.org_id, t.project_id) and env in (
                None,
                rt.environment_id,
            ):
                del self.model[i]

    @rule(seconds=st.integers(1, 8))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def sweep(self) -> None:
        expired = [
            i
            for i, r in self.model.items()
            if r.expire_time is not None and r.expire_time <= self.now
        ]
        assert self.run(self.store.sweep_expired(self.now)) == len(expired)
        for i in expired:
            del self.model[i]

    # --- reads ------------------------------------------------------------------

    @rule(data=st.data(), with_vectors=st.booleans())
    def get(self, data: st.DataObject, with_vectors: bool) -> None:
        tenant = self.pick_tenant(data)
        wanted = self.some_ids(data)
        got = self.run(self.store.get(tenant, wanted, self.now, with_vectors=with_vectors))
        visible = self.visible([tenant])
        assert {g.id for g in got} == {i for i in wanted if i in visible}
        self.check_records([tenant], got)
        for g in got:
            assert (g.vector is not None) == with_vectors
            if g.vector is not None:
                assert g.vector == pytest.approx(self.model[g.id].vector, abs=1e-5)

    @rule(data=st.data(), flt=filters)
    def count(self, data: st.DataObject, flt: Filter) -> None:
        tenant = self.pick_tenant(data)
        assert self.run(self.store.count(tenant, flt, self.now)) == len(self.visible([tenant], flt))

    @rule(data=st.data(), flt=filters, size=st.integers(1, 6), validity=validities)
    def scroll(self, data: st.DataObject, flt: Filter, size: int, validity: Validity) -> None:
        tenant = self.pick_tenant(data)
        got: list[MemoryRecord] = []
        cursor: Cursor | None = None
        while True:
            page = self.run(self.store.scroll(tenant, flt, size, self.now, cursor, validity))
            assert len(page.records) <= size
            got.extend(page.records)
            if page.next_cursor is None:
                break
            assert len(page.records) == size
            cursor = page.next_cursor
        expected = sorted(
            self.visible([tenant], flt, validity).values(),
            key=lambda r: (r.create_time, r.id),
            reverse=True,
        )
        assert [g.id for g in got] == [r.id for r in expected]
        self.check_records([tenant], got)

    @rule(
        data=st.data(),
        query=vectors,
        flt=filters,
        limit=st.integers(1, 8),
        validity=validities,
    )
    def search(
        self,
        data: st.DataObject,
        query: tuple[float, ...],
        flt: Filter,
        limit: int,
        validity: Validity,
    ) -> None:
        viewers = list(
            dict.fromkeys(self.pick_tenant(data) for _ in range(data.draw(st.integers(1, 3))))
        )
        found = self.run(self.store.search(viewers, query, flt, limit, self.now, validity=validity))
        candidates = self.visible(viewers, flt, validity)
        ids = [s.record.id for s in found]
        assert len(ids) == len(set(ids)) == min(limit, len(candidates))
        assert set(ids) <= set(candidates)
        self.check_records(viewers, [s.record for s in found])
        scores = [s.score for s in found]
        for s in found:
            assert s.score == pytest.approx(
                cosine(query, candidates[s.record.id].vector or ()), abs=1e-4
            )
        # Exact engines: the best `limit` scores, best first (ties in any order).
        best = sorted((cosine(query, r.vector or ()) for r in candidates.values()), reverse=True)
        assert scores == pytest.approx(best[:limit], abs=1e-4)

    @invariant()
    def counts_add_up(self) -> None:
        # Cheap and global: a tenant reaching all end users counts all its alive points.
        if self.model:
            t = next(iter(self.model.values())).tenant
            whole = replace(t, end_user_id="", all_end_users=True)
            assert self.run(self.store.count(whole, Filter(), self.now)) == len(
                self.visible([whole])
            )


class EdgeMachine(StoreMachine):
    def make_store(self) -> PointStore[Any, Any]:
        self.dir = tempfile.mkdtemp(prefix="memoryd-prop-")
        return EdgeVectorStore(self.dir)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class QdrantLocalMachine(StoreMachine):
    def make_store(self) -> PointStore[Any, Any]:
        return QdrantVectorStore(QdrantClient(":memory:"))

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Payload indexes have no effect", UserWarning)
            super().__init__()


EdgeMachine.TestCase.settings = SETTINGS
QdrantLocalMachine.TestCase.settings = SETTINGS
TestEdgeStoreAgainstModel = EdgeMachine.TestCase
TestQdrantLocalStoreAgainstModel = QdrantLocalMachine.TestCase
