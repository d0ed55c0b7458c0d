"""The query-vector cache on a real server (hashing embedder, the cache the
composition root builds from MEMORYD_EMBEDDING_CACHE_SIZE): repeated and
evicted queries still rank as without it, and organizations asking the same
text each get their own memories."""

from __future__ import annotations

import pytest
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.v1 import admin_pb2, memory_pb2

NO_LIMITS = {
    "key_requests_per_second": 1e6,
    "key_burst": 1_000_000,
    "project_requests_per_second": 1e6,
    "project_burst": 1_000_000,
}


async def data_client(srv: RunningServer, owner: Client | None = None) -> Client:
    project: admin_pb2.Project = await srv.project("app", client=owner)
    return srv.client(await srv.data_key(project, client=owner))


async def create(client: Client, content: str) -> str:
    resp = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content)),
        metadata=client.md(),
    )
    return resp.memory.id


async def top(client: Client, query: str) -> str:
    resp = await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query=query, top_k=1), metadata=client.md()
    )
    return resp.results[0].memory.id


@pytest.mark.parametrize("cache_size", [0, 1, 64])
async def test_searches_rank_alike_with_the_cache_on_small_or_off(
    make_server: MakeServer, cache_size: int
) -> None:
    srv = await make_server(embedding_cache_size=cache_size, **NO_LIMITS)
    client = await data_client(srv)
    topics = ["violin lessons on Tuesday", "allergic to peanuts", "moved to Lisbon in May"]
    ids = [await create(client, f"Ann is {t}.") for t in topics]
    # twice over, so that with room the second round is answered from the
    # cache, and with one entry each query evicts the one before
    for _ in range(2):
        for topic, memory_id in zip(topics, ids, strict=True):
            assert await top(client, topic) == memory_id


async def test_organizations_asking_the_same_text_each_find_their_own(
    make_server: MakeServer,
) -> None:
    srv = await make_server(embedding_cache_size=64, **NO_LIMITS)
    mine = await data_client(srv)
    theirs = await data_client(srv, await srv.new_org())
    my_id = await create(mine, "Ann plays the violin on Tuesdays.")
    their_id = await create(theirs, "Ann plays the violin on Tuesdays.")
    for _ in range(2):
        assert await top(mine, "violin Tuesdays") == my_id
        assert await top(theirs, "violin Tuesdays") == their_id
