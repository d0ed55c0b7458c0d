"""The embedding model on a real server: bounded query text, deadlines that
stop embedding work, and organizations served in turn. The model is a fake
gated by the test (tests/helpers/gated_model.py), behind the real micro-batcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc import aio
from helpers.errors import reason_of, violations
from helpers.gated_model import GatedModel
from helpers.polling import wait_for
from helpers.servers import Client, fast_hasher

from memoryd.app import App, build_app
from memoryd.config import Settings
from memoryd.domain.bootstrap import bootstrap_org
from memoryd.domain.clock import SystemClock
from memoryd.embeddings import MicroBatcher
from memoryd.v1 import admin_pb2, keys_pb2, memory_pb2

DIM = 8
MAX_QUERY = 4096


class GatedEmbedder:
    """The Embedder port over the real MicroBatcher and a GatedModel."""

    def __init__(self, model: GatedModel, max_texts: int = 4) -> None:
        self.model = model
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.batcher = MicroBatcher(model, self.executor, max_texts=max_texts)
        self.embed_calls = 0

    @property
    def model_id(self) -> str:
        return f"gated:{DIM}"

    @property
    def dimension(self) -> int:
        return DIM

    async def embed(self, texts: Sequence[str], *, fairness_key: str = "") -> list[list[float]]:
        self.embed_calls += 1
        return await self.batcher.submit(texts, fairness_key)

    async def close(self) -> None:
        await self.batcher.close()
        self.model.open()
        self.executor.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[tuple[App, GatedEmbedder, aio.Channel]]:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path / "data"),
        embedding_provider="hashing",
        embedding_dimension=DIM,
        grace_period_s=1.0,
        shutdown_delay_s=0.0,
        log_level="WARNING",
        sweep_interval_s=3600.0,
        key_requests_per_second=1e6,
        key_burst=1_000_000,
        project_requests_per_second=1e6,
        project_burst=1_000_000,
        max_query_chars=MAX_QUERY,
    )
    embedder = GatedEmbedder(GatedModel(DIM))
    app = await build_app(settings, clock=SystemClock(), hasher=fast_hasher(), embedder=embedder)
    await app.start()
    channel = aio.insecure_channel(f"127.0.0.1:{app.port}")
    yield app, embedder, channel
    embedder.model.open()
    await channel.close()
    await app.stop(0)


async def data_client(app: App, channel: aio.Channel, owner_key: str = "") -> Client:
    """A memory:* key of a new project (of the bootstrapped org, or of `owner_key`'s)."""
    assert app.bootstrapped is not None
    owner = Client(channel, owner_key or app.bootstrapped.plaintext)
    project = await owner.admin.CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="app")), metadata=owner.md()
    )
    key = await owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            project_id=project.id,
            environment_id=project.environments[0].id,
            name="data",
            scopes=["memory:*"],
        ),
        metadata=owner.md(),
    )
    return Client(channel, key.secret)


def batch(n: int, word: str) -> memory_pb2.BatchCreateMemoriesRequest:
    return memory_pb2.BatchCreateMemoriesRequest(
        requests=[
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=f"{word} {i}"))
            for i in range(n)
        ]
    )


def search(query: str) -> memory_pb2.SearchMemoriesRequest:
    return memory_pb2.SearchMemoriesRequest(query=query, top_k=10)


async def test_an_oversize_query_is_refused_before_it_reaches_the_embedder(
    gated: tuple[App, GatedEmbedder, aio.Channel],
) -> None:
    app, embedder, channel = gated
    client = await data_client(app, channel)
    embedder.model.open()
    for query in ("q" * 10_000_000, "q" * (MAX_QUERY + 1)):
        with pytest.raises(aio.AioRpcError) as info:
            await client.memory.SearchMemories(search(query), metadata=client.md())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert embedder.embed_calls == 0
    fields, reason = violations(info.value), reason_of(info.value)
    assert "query" in fields and reason == "QUERY_TOO_LONG"
    # at the limit it is embedded and searched
    await client.memory.SearchMemories(search("q" * MAX_QUERY), metadata=client.md())
    assert embedder.embed_calls == 1


async def test_a_batch_past_its_deadline_stops_embedding_and_writes_nothing(
    gated: tuple[App, GatedEmbedder, aio.Channel],
) -> None:
    app, embedder, channel = gated
    client = await data_client(app, channel)
    call = asyncio.ensure_future(
        client.memory.BatchCreateMemories(batch(400, "note"), metadata=client.md(), timeout=2.0)
    )
    await embedder.model.entered()  # the model is blocked inside chunk 1 of 100
    with pytest.raises(aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the server cancels the call: its 396 waiting texts leave the queue
    await wait_for(lambda: embedder.batcher.queued_texts() == 0)
    embedder.model.open()
    await client.memory.SearchMemories(search("afterwards"), metadata=client.md())
    # chunk 1, then the search: no further chunk of the cancelled batch
    assert embedder.model.calls == [["note 0", "note 1", "note 2", "note 3"], ["afterwards"]]
    page = await client.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=client.md())
    assert list(page.memories) == []


async def test_another_org_search_is_served_between_chunks_of_a_large_batch(
    gated: tuple[App, GatedEmbedder, aio.Channel],
) -> None:
    app, embedder, channel = gated
    a = await data_client(app, channel)
    other = await bootstrap_org(app.store, fast_hasher(), SystemClock(), "other")
    b = await data_client(app, channel, other.plaintext)
    big = asyncio.ensure_future(a.memory.BatchCreateMemories(batch(200, "fact"), metadata=a.md()))
    await embedder.model.entered()  # org a's chunk 1 holds the model
    query = asyncio.ensure_future(b.memory.SearchMemories(search("my query"), metadata=b.md()))
    # until b's query waits for the model
    await wait_for(lambda: embedder.batcher.queued_texts(other.org.id) == 1)
    embedder.model.release()  # chunk 1 ends
    await embedder.model.entered()
    # b's query is in the very next model call, ahead of a's other 196 texts
    assert "my query" in embedder.model.calls[1]
    embedder.model.open()
    await query
    assert (await big).succeeded_count == 200
