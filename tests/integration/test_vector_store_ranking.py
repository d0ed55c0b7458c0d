"""How the vector stores rank, on real engines (Qdrant Edge on a thread and
in its child process, and qdrant-client's local mode): keyword search (BM25
with the caller's own word statistics), hybrid fusion, recency decay and
diversity, the same on every engine; and the upgrade of a store made before
keyword vectors existed.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

from memoryd.domain.errors import FailedPrecondition, InvalidArgument
from memoryd.domain.memory import (
    Filter,
    Match,
    MemoryRecord,
    Ranking,
    ScoredRecord,
    SearchMode,
)
from memoryd.domain.tenancy import Tenant
from memoryd.storage.vectors import layout as p
from memoryd.storage.vectors.edge import MARKER, SHARD, EdgeVectorStore
from memoryd.storage.vectors.edge_engine import NEXT_SHARD, OLD_SHARD
from memoryd.storage.vectors.point_store import PointStore
from memoryd.storage.vectors.qdrant import (
    QdrantVectorStore,
    collection_name,
    upgrade_collection,
)
from memoryd.storage.vectors.ranking import Fusion, Tuning

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")

DIM = 8
MODEL = "test/model-8"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

A = Tenant("org_a", "prj_a", "env_a")
A_ALL = Tenant("org_a", "prj_a", "env_a", all_end_users=True)
A_USER1 = Tenant("org_a", "prj_a", "env_a", "user1")
A_USER2 = Tenant("org_a", "prj_a", "env_a", "user2")
STRANGERS = {
    "other org": Tenant("org_b", "prj_a", "env_a"),
    "other project": Tenant("org_a", "prj_b", "env_a"),
    "other environment": Tenant("org_a", "prj_a", "env_b"),
    "other end user": A_USER2,
}
ENGINES = ["edge", "edge-process", "qdrant"]

Store = PointStore[Any, Any]


def unit(values: Sequence[float]) -> tuple[float, ...]:
    norm = math.sqrt(sum(v * v for v in values))
    return tuple(v / norm for v in values)


def axis(i: int, tilt: float = 0.0) -> tuple[float, ...]:
    v = [0.0] * DIM
    v[i % DIM] = 1.0
    v[(i + 1) % DIM] = tilt
    return unit(v)


def record(tenant: Tenant, content: str, **changes: Any) -> MemoryRecord:
    base = MemoryRecord(
        id=str(uuid.uuid4()),
        tenant=tenant,
        content=content,
        metadata={},
        agent_id="",
        thread_id="",
        source="",
        tags=(),
        create_time=NOW - timedelta(hours=1),
        update_time=NOW - timedelta(hours=1),
        expire_time=None,
        revision=1,
        vector=axis(0),
    )
    rec = replace(base, **changes)
    return rec if rec.valid_time is not None else replace(rec, valid_time=rec.create_time)


def keyword(text: str) -> Ranking:
    return Ranking(SearchMode.KEYWORD, text)


def hybrid(text: str) -> Ranking:
    return Ranking(SearchMode.HYBRID, text)


def ids(hits: Sequence[ScoredRecord]) -> list[str]:
    return [h.record.id for h in hits]


def new_store(
    engine: str, path: Path, client: QdrantClient | None = None, tuning: Tuning | None = None
) -> Store:
    if engine == "qdrant":
        return QdrantVectorStore(client or QdrantClient(":memory:"), tuning=tuning)
    return EdgeVectorStore(path, process=engine == "edge-process", tuning=tuning)


@pytest.fixture(params=ENGINES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = new_store(request.param, tmp_path / "vectors")
    await s.open(MODEL, DIM)
    yield s
    await s.close()


async def search(
    s: Store,
    tenant: Tenant,
    ranking: Ranking,
    vector: Sequence[float] | None = None,
    limit: int = 10,
    **kw: Any,
) -> list[ScoredRecord]:
    return await s.search([tenant], vector, Filter(), limit, NOW, ranking=ranking, **kw)


def orders(tenant: Tenant, n: int) -> list[MemoryRecord]:
    """`n` order memories that differ only in their code, with the same vector."""
    return [
        record(tenant, f"Order ORD-{21000 + i} for a white phone case shipped to Lima.")
        for i in range(n)
    ]


# --- keywords ------------------------------------------------------------------------------


async def test_a_keyword_search_finds_the_one_exact_code(store: Store) -> None:
    recs = orders(A, 60)
    await store.upsert(A, recs)
    target = recs[17]
    hits = await search(store, A, keyword("Where was order ORD-21017 shipped?"), axis(0))
    assert hits[0].record.id == target.id
    assert hits[0].score > 1.5 * hits[1].score  # the rare code weighs most
    # by meaning alone they are all the same
    semantic = await search(store, A, Ranking(), axis(0), limit=60)
    assert all(h.score == pytest.approx(1.0, abs=1e-5) for h in semantic)


async def test_a_hybrid_search_still_finds_by_meaning(store: Store) -> None:
    """A memory sharing no word with the query is found by its vector, and
    one sharing a word but nothing else is found by the word."""
    near = record(A, "Drinks green tea every morning.", vector=axis(2))
    worded = record(A, "The beverage cart broke down.", vector=tuple(-x for x in axis(2)))
    noise = [record(A, f"Unrelated note number {i}.", vector=axis(4, 0.1 * i)) for i in range(8)]
    await store.upsert(A, [near, worded, *noise])
    hits = await search(store, A, hybrid("usual morning beverage?"), axis(2, 0.05), limit=3)
    assert set(ids(hits)[:2]) == {near.id, worded.id}
    # SEMANTIC ranks the word-only match nowhere near the top
    semantic = await search(store, A, Ranking(), axis(2, 0.05), limit=3)
    assert ids(semantic)[0] == near.id and worded.id not in ids(semantic)


async def test_min_score_bounds_the_semantic_side_and_keeps_keyword_matches(store: Store) -> None:
    near = record(A, "Lives in a flat in Porto.", vector=axis(1))
    far_worded = record(A, "Has a cat named Porto.", vector=axis(5))
    far = record(A, "Plays chess on Sundays.", vector=axis(6))
    await store.upsert(A, [near, far_worded, far])
    hits = await search(store, A, hybrid("Porto"), axis(1), min_score=0.5)
    assert set(ids(hits)) == {near.id, far_worded.id}
    semantic = await search(store, A, Ranking(), axis(1), min_score=0.5)
    assert ids(semantic) == [near.id]


async def test_a_query_of_stop_words_only_finds_nothing_by_keywords(store: Store) -> None:
    quiet = record(A, "the of and")  # no word of it counts, and it is stored all the same
    await store.upsert(A, [quiet, *orders(A, 3)])
    assert await search(store, A, keyword("the and of")) == []
    # HYBRID falls back to its semantic side
    assert len(await search(store, A, hybrid("the of"), axis(0))) == 4
    assert len(await store.get(A, [quiet.id], NOW)) == 1


async def test_keyword_search_needs_no_vector_but_diversity_does(store: Store) -> None:
    await store.upsert(A, orders(A, 3))
    assert len(await search(store, A, keyword("ORD-21001"))) >= 1
    with pytest.raises(InvalidArgument):
        await search(store, A, replace(keyword("ORD-21001"), diversity=0.5))


async def test_keyword_and_hybrid_search_respect_the_filter(store: Store) -> None:
    recs = orders(A, 10)
    recs[3] = replace(recs[3], tags=("vip",))
    await store.upsert(A, recs)
    vip = Filter(must=(Match("tags", "vip"),))
    for ranking in (keyword("ORD-21005"), hybrid("ORD-21005")):
        hits = await store.search([A], axis(0), vip, 10, NOW, ranking=ranking)
        assert ids(hits) == [recs[3].id], ranking.mode


# --- tenancy: whose words count, whose memories are found -----------------------------------


@pytest.mark.parametrize("stranger", list(STRANGERS), ids=list(STRANGERS))
@pytest.mark.parametrize("mode", [SearchMode.KEYWORD, SearchMode.HYBRID])
async def test_no_stranger_memory_is_found_by_its_words(
    store: Store, stranger: str, mode: SearchMode
) -> None:
    other = STRANGERS[stranger]
    theirs = record(other, "Order ORD-99999 for a red kettle.", vector=axis(3))
    mine = record(A_USER1, "Order ORD-12345 for a blue lamp.", vector=axis(4))
    await store.upsert(other, [theirs])
    await store.upsert(A_USER1, [mine])
    hits = await search(store, A_USER1, Ranking(mode, "ORD-99999 red kettle"), axis(3), 50)
    assert theirs.id not in ids(hits)
    assert {h.record.tenant for h in hits} <= {A_USER1}


async def scores(s: Store, tenant: Tenant, text: str) -> list[tuple[str, float]]:
    hits = await search(s, tenant, keyword(text), limit=100)
    return [(h.record.id, round(h.score, 4)) for h in hits]


async def test_one_tenants_words_never_change_anothers_keyword_ranking(store: Store) -> None:
    """IDF counts the caller's own memories (its environment, and its end
    user when it names one): a flood of "lion" in every other tenant leaves
    A's and user1's scores exactly as they were, while the same flood in A
    itself changes A's (so the check can fail)."""
    mine = [
        record(A, "The lion sleeps."),
        record(A, "The tiger hunts at dusk."),
        record(A, "A lion and a tiger met."),
    ]
    user1 = [record(A_USER1, r.content) for r in mine]
    await store.upsert(A, mine)
    await store.upsert(A_USER1, user1)
    query = "lion tiger"
    before = {t: await scores(store, t, query) for t in (A, A_USER1)}
    assert len(before[A]) == 3

    for t in [*STRANGERS.values(), Tenant("org_a", "prj_a", "env_a", "user3")]:
        await store.upsert(t, [record(t, f"lion lion {i}") for i in range(40)])
    after = {t: await scores(store, t, query) for t in (A, A_USER1)}
    assert after == before

    await store.upsert(A, [record(A, f"lion lion {i}") for i in range(40)])
    flooded = dict(await scores(store, A, query))
    assert flooded[mine[0].id] != dict(before[A])[mine[0].id]
    # and user1, whose corpus is its own, is still untouched
    assert await scores(store, A_USER1, query) == before[A_USER1]


async def test_a_reach_over_all_end_users_counts_them_all(store: Store) -> None:
    await store.upsert(A_USER1, [record(A_USER1, "Order ORD-1 of tea.")])
    await store.upsert(A_USER2, [record(A_USER2, "Order ORD-2 of tea.")])
    await store.upsert(A, [record(A, "Order ORD-3 of coffee.")])
    assert len(await search(store, A_ALL, keyword("order tea"))) == 3
    assert len(await search(store, A, keyword("order tea"))) == 1


# --- recency and diversity -------------------------------------------------------------------


async def test_recency_halves_a_score_every_half_life(store: Store) -> None:
    ages = [1, 8, 15, 29]
    recs = [record(A, "Lives in Porto.", valid_time=NOW - timedelta(days=d)) for d in ages]
    await store.upsert(A, recs)
    week = timedelta(days=7)
    for mode in SearchMode:
        ranking = Ranking(mode, "Porto", recency_half_life=week)
        hits = await search(store, A, ranking, axis(0))
        assert ids(hits) == [r.id for r in recs], mode
        # each score is the undecayed one times 0.5^(age / half-life)
        undecayed = {
            h.record.id: h.score
            for h in await search(store, A, replace(ranking, recency_half_life=None), axis(0))
        }
        for h, days in zip(hits, ages, strict=True):
            want = undecayed[h.record.id] * 0.5 ** (days / 7)
            assert h.score == pytest.approx(want, rel=1e-3), (mode, days)


async def test_recency_lets_a_newer_memory_overtake_a_closer_older_one(store: Store) -> None:
    old = record(A, "Works at Vandelay.", vector=axis(1), valid_time=NOW - timedelta(days=400))
    new = record(A, "Joined Northwind.", vector=axis(1, 0.3), valid_time=NOW - timedelta(days=20))
    await store.upsert(A, [old, new])
    assert ids(await search(store, A, Ranking(), axis(1)))[0] == old.id
    decayed = Ranking(recency_half_life=timedelta(days=90))
    assert ids(await search(store, A, decayed, axis(1))) == [new.id, old.id]


async def test_diversity_picks_results_unlike_each_other(store: Store) -> None:
    twins = [record(A, f"Likes tea {i}.", vector=axis(0, 0.01 * i)) for i in range(4)]
    other = record(A, "Likes long walks.", vector=axis(0, 0.6))
    await store.upsert(A, [*twins, other])
    plain = await search(store, A, Ranking(), axis(0), limit=2)
    assert other.id not in ids(plain)
    diverse = await search(store, A, Ranking(diversity=0.7), axis(0), limit=2)
    assert other.id in ids(diverse)
    assert len(diverse) == 2


# --- the same on every engine ----------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["rrf", "dbsf", "sum"])
async def test_every_engine_ranks_alike(tmp_path: Path, fusion: Fusion) -> None:
    """One corpus and the same searches on each engine, with each fusion:
    the same results, in the same order, with the same scores."""
    rng = random.Random(5)
    words = ["tea", "coffee", "porto", "lima", "order", "kettle"]
    words += ["lamp", "lion", "tiger", "river", "chess", "walk"]
    recs = []
    for i in range(120):
        tenant = [A, A_USER1][i % 2]
        # a length of its own (padding), so that no two keyword scores tie:
        # engines may order ties differently
        text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 7))) + f" ORD-{i}"
        text += " pad" * i
        v = unit([rng.gauss(0, 1) for _ in range(DIM)])
        recs.append(
            record(tenant, text, vector=v, valid_time=NOW - timedelta(hours=rng.randint(1, 2000)))
        )
    rankings = [
        Ranking(),
        keyword("tea porto ORD-17"),
        hybrid("lion river ORD-8"),
        Ranking(SearchMode.HYBRID, "kettle lamp", recency_half_life=timedelta(days=10)),
        Ranking(SearchMode.HYBRID, "chess walk", diversity=0.5),
        Ranking(SearchMode.SEMANTIC, recency_half_life=timedelta(days=3), diversity=0.3),
    ]
    query = unit([rng.gauss(0, 1) for _ in range(DIM)])
    results: dict[str, list[list[tuple[str, float]]]] = {}
    for engine in ENGINES:
        # (weighted RRF is left out: qdrant-client's local mode weighs ranks a
        # little differently from the engine, ~1% apart in a score)
        weight = 1.0 if fusion == "rrf" else 0.5
        s = new_store(
            engine, tmp_path / engine, tuning=Tuning(fusion=fusion, keyword_weight=weight)
        )
        await s.open(MODEL, DIM)
        try:
            await s.upsert(A, [r for r in recs if r.tenant == A])
            await s.upsert(A_USER1, [r for r in recs if r.tenant == A_USER1])
            results[engine] = []
            for ranking in rankings:
                for tenant in (A, A_USER1, A_ALL):
                    hits = await search(s, tenant, ranking, query, limit=8)
                    results[engine].append([(h.record.id, h.score) for h in hits])
        finally:
            await s.close()
    for i, (e, q) in enumerate(zip(results["edge"], results["qdrant"], strict=True)):
        assert alike(e, q), (i, tied(e), tied(q))
    for e, ep in zip(results["edge"], results["edge-process"], strict=True):
        assert alike(e, ep)
    assert all(results["edge"]), "every search found something"


def tied(hits: list[tuple[str, float]]) -> list[tuple[float, frozenset[str]]]:
    """Results as groups of (nearly) equal score, best first: engines may
    order ties differently, and compute a score in another order (the last
    digits differ). The last group may be cut by the limit, so only its
    score counts."""
    groups: list[tuple[float, set[str]]] = []
    for hid, score in hits:
        if groups and math.isclose(groups[-1][0], score, rel_tol=1e-4, abs_tol=1e-6):
            groups[-1][1].add(hid)
        else:
            groups.append((score, {hid}))
    out = [(score, frozenset(members)) for score, members in groups]
    return [*out[:-1], (out[-1][0], frozenset())] if out else []


def alike(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    """The same results by `tied` groups, their scores equal to 1%: where a
    leg of a fusion holds equal scores, engines may rank them in another
    order, which moves a fused reciprocal-rank score by ~0.5%."""
    ga, gb = tied(a), tied(b)
    return len(ga) == len(gb) and all(
        ids_a == ids_b and math.isclose(sa, sb, rel_tol=1e-2, abs_tol=1e-6)
        for (sa, ids_a), (sb, ids_b) in zip(ga, gb, strict=True)
    )


async def test_the_sum_fusion_weighs_the_keyword_match_by_its_bm25(tmp_path: Path) -> None:
    """sum: semantic weight x cosine + keyword weight x bm25 / (bm25 +
    saturation); a point one leg misses scores 0 there."""
    near = record(A, "Drinks green tea.", vector=axis(2))
    worded = record(A, "Order ORD-777 of mugs.", vector=axis(5))
    s = EdgeVectorStore(
        tmp_path / "v", tuning=Tuning(fusion="sum", keyword_weight=0.5, saturation=3.0)
    )
    await s.open(MODEL, DIM)
    try:
        await s.upsert(A, [near, worded])
        [bm25] = await search(s, A, keyword("ORD-777"))
        hits = {h.record.id: h.score for h in await search(s, A, hybrid("ORD-777"), axis(2))}
        assert hits[near.id] == pytest.approx(1.0, abs=1e-5)  # cosine 1, no word matched
        assert hits[worded.id] == pytest.approx(0.5 * bm25.score / (bm25.score + 3.0), rel=1e-4)
    finally:
        await s.close()


async def test_tuning_changes_the_fusion(tmp_path: Path) -> None:
    """The fusion is a setting: weighting the keyword leg heavily puts the
    keyword match first; weighting the semantic leg puts the nearest first."""
    near = record(A, "Drinks green tea.", vector=axis(2))
    worded = record(A, "Order ORD-777 of mugs.", vector=axis(5))
    for weights, first in (((1.0, 5.0), worded.id), ((5.0, 1.0), near.id)):
        s = EdgeVectorStore(
            tmp_path / str(weights),
            tuning=Tuning(semantic_weight=weights[0], keyword_weight=weights[1], rrf_k=1),
        )
        await s.open(MODEL, DIM)
        try:
            await s.upsert(A, [near, worded])
            assert ids(await search(s, A, hybrid("ORD-777"), axis(2)))[0] == first
            dbsf = EdgeVectorStore(tmp_path / f"dbsf{weights}", tuning=Tuning(fusion="dbsf"))
            await dbsf.open(MODEL, DIM)
            await dbsf.upsert(A, [near, worded])
            assert set(ids(await search(dbsf, A, hybrid("ORD-777"), axis(2)))) == {
                near.id,
                worded.id,
            }
            await dbsf.close()
        finally:
            await s.close()


# --- stores made before keyword search ------------------------------------------------------


def old_edge_store(path: Path, recs: Sequence[MemoryRecord]) -> None:
    """A store as memoryd wrote it before keyword search: a shard without
    keyword vectors, its marker of layout 2."""
    path.mkdir(parents=True)
    (path / MARKER).write_text(json.dumps({"layout": 2, "model_id": MODEL, "dimension": DIM}))
    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0),
    )
    shard = qe.EdgeShard.create(str(path / SHARD), config)
    try:
        shard.update(
            qe.UpdateOperation.create_field_index(p.TENANT, qe.KeywordIndexParams(is_tenant=True))
        )
        points = [qe.Point(r.id, list(r.vector or ()), p.to_payload(r)) for r in recs]
        for i in range(0, len(points), 200):
            shard.update(qe.UpdateOperation.upsert_points(points[i : i + 200]))
        shard.flush()
    finally:
        shard.close()


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
async def test_an_edge_store_made_before_keywords_is_upgraded_when_it_opens(
    tmp_path: Path, process: bool
) -> None:
    recs = orders(A, 300) + orders(A_USER1, 5)
    path = tmp_path / "v"
    old_edge_store(path, recs)
    s = EdgeVectorStore(path, process=process)
    await s.open(MODEL, DIM)
    try:
        assert await s.count(A_ALL, Filter(), NOW) == len(recs)
        hits = await search(s, A, keyword("ORD-21123"), limit=1)
        assert ids(hits) == [recs[123].id]
        got = await s.get(A, [recs[7].id], NOW, with_vectors=True)
        assert replace(got[0], vector=None) == replace(recs[7], vector=None)
        assert got[0].vector == pytest.approx(recs[7].vector, abs=1e-6)
    finally:
        await s.close()
    assert sorted(x.name for x in path.iterdir() if x.name.startswith("shard")) == [SHARD]


@pytest.mark.parametrize("cut", ["copy half done", "old moved aside", "new in place"])
async def test_an_interrupted_edge_upgrade_finishes_on_the_next_open(
    tmp_path: Path, cut: str
) -> None:
    """The upgrade stopped at each step (simulated by the directories it
    leaves): the next open ends with every point, searchable by keywords."""
    recs = orders(A, 40)
    path = tmp_path / "v"
    old_edge_store(path, recs)
    if cut == "copy half done":
        (path / NEXT_SHARD).mkdir()
        (path / NEXT_SHARD / "junk").write_text("half a copy")
    elif cut == "old moved aside":
        (path / SHARD).rename(path / OLD_SHARD)
    else:
        # the swap happened; only dropping the old copy was left
        old_edge_store(tmp_path / "spare", recs[:1])
        (tmp_path / "spare" / SHARD).rename(path / OLD_SHARD)
        s = EdgeVectorStore(path)
        await s.open(MODEL, DIM)  # upgrades the real one
        await s.close()
        old_edge_store(tmp_path / "spare2", recs[:1])
        (tmp_path / "spare2" / SHARD).rename(path / OLD_SHARD)
    s = EdgeVectorStore(path)
    await s.open(MODEL, DIM)
    try:
        assert await s.count(A, Filter(), NOW) == len(recs)
        assert ids(await search(s, A, keyword("ORD-21011"), limit=1)) == [recs[11].id]
    finally:
        await s.close()
    assert sorted(x.name for x in path.iterdir() if x.name.startswith("shard")) == [SHARD]


def old_collection(client: QdrantClient, recs: Sequence[MemoryRecord]) -> str:
    name = collection_name(MODEL)
    client.create_collection(
        name,
        vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
        metadata={"memoryd": {"model_id": MODEL, "dimension": DIM, "layout": 2}},
    )
    client.upsert(
        name,
        points=[
            models.PointStruct(id=r.id, vector=list(r.vector or ()), payload=p.to_payload(r))
            for r in recs
        ],
    )
    return name


async def test_a_qdrant_collection_made_before_keywords_refuses_to_open_until_upgraded() -> None:
    client = QdrantClient(":memory:")
    recs = orders(A, 300)
    name = old_collection(client, recs)
    s = QdrantVectorStore(client)
    with pytest.raises(FailedPrecondition) as info:
        await s.open(MODEL, DIM)
    assert info.value.reason == "VECTOR_STORE_UPGRADE_NEEDED"
    assert "memoryd upgrade-vectors" in info.value.message

    said: list[str] = []
    assert await upgrade_collection(client, name, said.append) == len(recs)
    assert said and not client.collection_exists(f"{name}__upgrade")
    s = QdrantVectorStore(client)
    await s.open(MODEL, DIM)
    try:
        assert await s.count(A, Filter(), NOW) == len(recs)
        assert ids(await search(s, A, keyword("ORD-21250"), limit=1)) == [recs[250].id]
    finally:
        await s.close()
    # nothing left to do
    assert await upgrade_collection(client, name) == 0


async def test_a_qdrant_upgrade_cut_after_dropping_the_old_collection_resumes() -> None:
    """The state an upgrade leaves when stopped after its staging copy was
    complete and the old collection dropped: run again, it makes the new
    collection from the staging copy."""
    client = QdrantClient(":memory:")
    recs = orders(A, 30)
    name = collection_name(MODEL)
    staging = f"{name}__upgrade"
    client.create_collection(
        staging,
        vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        metadata={
            "memoryd": {"model_id": MODEL, "dimension": DIM, "layout": 2},
            "upgrade": "complete",
        },
    )
    client.upsert(
        staging,
        points=[
            models.PointStruct(id=r.id, vector={"": list(r.vector or ())}, payload=p.to_payload(r))
            for r in recs
        ],
    )
    assert await upgrade_collection(client, name) == len(recs)
    assert not client.collection_exists(staging)
    s = QdrantVectorStore(client)
    await s.open(MODEL, DIM)
    try:
        assert await s.count(A, Filter(), NOW) == len(recs)
        assert ids(await search(s, A, keyword("ORD-21003"), limit=1)) == [recs[3].id]
    finally:
        await s.close()


async def test_a_half_made_staging_copy_is_made_again() -> None:
    client = QdrantClient(":memory:")
    recs = orders(A, 30)
    name = old_collection(client, recs)
    client.create_collection(
        f"{name}__upgrade",
        vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        metadata={"memoryd": {"model_id": MODEL, "dimension": DIM, "layout": 2}},
    )
    assert await upgrade_collection(client, name) == len(recs)
    s = QdrantVectorStore(client)
    await s.open(MODEL, DIM)
    try:
        assert await s.count(A, Filter(), NOW) == len(recs)
    finally:
        await s.close()
