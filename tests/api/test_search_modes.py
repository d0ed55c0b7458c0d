"""SearchMemories' ranking on a real server: the modes (SEMANTIC, KEYWORD,
HYBRID, and the default for what the request gives), a client vector with
the query's words, recency and diversity, the settings that tune the
fusion, and a cross-project keyword search.

The server embeds with the test default (the hashing embedder); the clock
is a ManualClock, so recency depends on no wall clock.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.domain.clock import ManualClock
from memoryd.v1 import admin_pb2, memory_pb2

NO_LIMITS = {
    "key_requests_per_second": 1e6,
    "key_burst": 1_000_000,
    "project_requests_per_second": 1e6,
    "project_burst": 1_000_000,
}


@pytest.fixture
async def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def srv(make_server: MakeServer, clock: ManualClock) -> RunningServer:
    return await make_server(clock=clock, **NO_LIMITS)


@pytest.fixture
async def project(srv: RunningServer) -> admin_pb2.Project:
    return await srv.project("app")


@pytest.fixture
async def client(srv: RunningServer, project: admin_pb2.Project) -> Client:
    return srv.client(await srv.data_key(project))


async def create(client: Client, content: str, **fields: Any) -> memory_pb2.Memory:
    resp = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content, **fields)),
        metadata=client.md(),
    )
    return resp.memory


async def search(client: Client, **request: Any) -> list[memory_pb2.SearchResult]:
    request.setdefault("top_k", 100)
    resp = await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(**request), metadata=client.md()
    )
    return list(resp.results)


def ids(results: list[memory_pb2.SearchResult]) -> list[str]:
    return [r.memory.id for r in results]


async def orders(client: Client, n: int) -> list[memory_pb2.Memory]:
    return [
        await create(client, f"Order ORD-{31000 + i} for a white phone case shipped to Lima.")
        for i in range(n)
    ]


async def test_a_keyword_search_finds_an_exact_code_among_look_alikes(client: Client) -> None:
    recs = await orders(client, 40)
    hits = await search(client, query="Where was order ORD-31029 shipped?", mode=memory_pb2.KEYWORD)
    assert hits[0].memory.id == recs[29].id
    assert hits[0].score > hits[1].score
    # KEYWORD embeds nothing: a vector of the wrong size is still refused, but none is needed
    assert len(await search(client, query="ORD-31003", mode=memory_pb2.KEYWORD, top_k=3)) == 3


async def test_a_search_naming_no_mode_ranks_by_the_default_and_a_vector_alone_semantic(
    make_server: MakeServer,
) -> None:
    srv = await make_server(search_default_mode="hybrid", search_fusion="rrf", **NO_LIMITS)
    client = srv.client(await srv.data_key(await srv.project("app")))
    recs = await orders(client, 5)
    unmoded = await search(client, query="ORD-31002 phone case")
    hybrid = await search(client, query="ORD-31002 phone case", mode=memory_pb2.HYBRID)
    assert [(r.memory.id, r.score) for r in unmoded] == [(r.memory.id, r.score) for r in hybrid]
    # fused scores are reciprocal ranks, far below a cosine similarity
    assert all(0 < r.score < 0.1 for r in hybrid)

    got = await client.memory.GetMemory(
        memory_pb2.GetMemoryRequest(id=recs[2].id, include_embedding=True), metadata=client.md()
    )
    by_vector = await search(client, query_embedding=list(got.embedding))
    assert by_vector[0].memory.id == recs[2].id
    assert by_vector[0].score == pytest.approx(1.0, abs=1e-4)
    semantic = await search(client, query_embedding=list(got.embedding), mode=memory_pb2.SEMANTIC)
    assert [r.memory.id for r in semantic] == [r.memory.id for r in by_vector]


async def test_a_client_vector_with_the_querys_words_searches_hybrid(client: Client) -> None:
    recs = await orders(client, 20)
    vector = (
        await client.memory.GetMemory(
            memory_pb2.GetMemoryRequest(id=recs[0].id, include_embedding=True),
            metadata=client.md(),
        )
    ).embedding
    hybrid = ids(
        await search(
            client, query="ORD-31017", query_embedding=list(vector), mode=memory_pb2.HYBRID
        )
    )
    semantic = ids(await search(client, query_embedding=list(vector), mode=memory_pb2.SEMANTIC))
    # the vector is the semantic side (no embedding of the text: the nearest
    # is still the memory it came from), the words lift the coded order
    assert semantic[0] == recs[0].id and recs[0].id in hybrid
    assert hybrid.index(recs[17].id) < semantic.index(recs[17].id)


async def test_recency_prefers_what_is_newest(client: Client, clock: ManualClock) -> None:
    now = clock.now()
    made = []
    for days in (300, 40, 2):
        at = timestamp_pb2.Timestamp()
        at.FromDatetime(now - timedelta(days=days))
        made.append(await create(client, "Lives in Porto.", valid_time=at))
    plain = await search(client, query="Lives in Porto.", mode=memory_pb2.SEMANTIC)
    assert all(r.score == pytest.approx(plain[0].score) for r in plain)
    half_life = duration_pb2.Duration(seconds=int(timedelta(days=30).total_seconds()))
    decayed = await search(
        client, query="Lives in Porto.", mode=memory_pb2.SEMANTIC, recency_half_life=half_life
    )
    assert ids(decayed) == [m.id for m in reversed(made)]
    assert decayed[1].score == pytest.approx(plain[0].score * 0.5 ** (40 / 30), rel=1e-3)


async def test_diversity_returns_results_unlike_each_other(client: Client) -> None:
    twins = [await create(client, f"Likes green tea with honey {i}.") for i in range(5)]
    other = await create(client, "Likes green hiking trails.")
    plain = await search(client, query="Likes green tea", mode=memory_pb2.SEMANTIC, top_k=2)
    assert set(ids(plain)) <= {t.id for t in twins}
    diverse = await search(
        client, query="Likes green tea", mode=memory_pb2.SEMANTIC, top_k=2, diversity=0.9
    )
    assert other.id in ids(diverse) and len(diverse) == 2


async def test_the_fusion_is_a_setting(make_server: MakeServer) -> None:
    """A keyword-heavy RRF puts the coded order first whatever the vectors
    say; the mode's default is a setting too."""
    srv = await make_server(
        search_keyword_weight=10.0, search_rrf_k=1, search_default_mode="keyword", **NO_LIMITS
    )
    client = srv.client(await srv.data_key(await srv.project("app")))
    recs = await orders(client, 30)
    hybrid = await search(client, query="order ORD-31021 phone", mode=memory_pb2.HYBRID)
    assert hybrid[0].memory.id == recs[21].id
    keyword = await search(client, query="order ORD-31021 phone")
    assert keyword[0].memory.id == recs[21].id
    assert keyword[0].score > 1  # a BM25 score: the default mode is keyword here


async def test_a_cross_project_keyword_search_spans_the_projects(srv: RunningServer) -> None:
    first, second = await srv.project("one"), await srv.project("two")
    a = srv.client(await srv.data_key(first, scopes=("memory:*", "org:cross_project_read")))
    b = srv.client(await srv.data_key(second))
    mine = await create(a, "Invoice 504146 was paid.")
    theirs = await create(b, "Invoice 504147 was paid.")
    hits = await a.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query="invoice paid", mode=memory_pb2.KEYWORD, top_k=10),
        metadata=[*a.md(), ("x-allow-cross-project", "true")],
    )
    assert {r.memory.id for r in hits.results} == {mine.id, theirs.id}
    assert {r.project_id for r in hits.results} == {first.id, second.id}
