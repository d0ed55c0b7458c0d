"""Rate-limit cost follows the work: a batch by its items and text, a text
search more than a vector search, and an import per item as its stream is
read (stopped mid-stream when refused, with what came before stored and
reported). Idle import streams are closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest
from grpc import aio
from helpers.errors import detail, reason_of
from helpers.servers import Client, MakeServer, RunningServer

from memoryd.domain.clock import ManualClock
from memoryd.v1 import memory_pb2

BURST = 100


async def remaining(call: Any) -> int:
    """The key's remaining burst after a call, from its trailers."""
    trailers = dict(await call.trailing_metadata())
    return int(trailers["x-ratelimit-remaining"])


async def keys_of_one_project(server: RunningServer, n: int) -> list[Client]:
    project = await server.project()
    return [server.client(await server.data_key(project)) for _ in range(n)]


def items(n: int, content: str = "item {i}") -> list[memory_pb2.Memory]:
    return [memory_pb2.Memory(content=content.format(i=i)) for i in range(n)]


async def stream(
    memories: Iterable[memory_pb2.Memory], then: asyncio.Event | None = None
) -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
    for m in memories:
        yield memory_pb2.ImportMemoriesRequest(memory=m)
    if then is not None:
        await then.wait()


async def stored(client: Client) -> list[str]:
    page = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=1000), metadata=client.md()
    )
    return sorted(m.content for m in page.memories)


@pytest.fixture
async def frozen(make_server: MakeServer) -> RunningServer:
    """A server whose rate limits never refill (a manual clock)."""
    return await make_server(clock=ManualClock(), key_burst=BURST)


# --- S4: the cost of a batch and of a search ------------------------------------------------


async def test_a_batch_costs_a_unit_per_ten_items_or_per_16_kib_of_text(
    frozen: RunningServer,
) -> None:
    many_small, few_large = await keys_of_one_project(frozen, 2)
    forty = memory_pb2.BatchCreateMemoriesRequest(
        requests=[memory_pb2.CreateMemoryRequest(memory=m) for m in items(40)]
    )
    call = many_small.memory.BatchCreateMemories(forty, metadata=many_small.md())
    assert (await call).succeeded_count == 40
    assert await remaining(call) == BURST - 4

    three_large = memory_pb2.BatchCreateMemoriesRequest(
        requests=[memory_pb2.CreateMemoryRequest(memory=m) for m in items(3, "{i}" + "t" * 29_999)]
    )  # 90,000 bytes of text: 6 units of 16 KiB
    call = few_large.memory.BatchCreateMemories(three_large, metadata=few_large.md())
    assert (await call).succeeded_count == 3
    assert await remaining(call) == BURST - 6


async def test_a_text_search_costs_more_than_a_vector_search(frozen: RunningServer) -> None:
    by_text, by_vector = await keys_of_one_project(frozen, 2)
    call = by_text.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query="tea", top_k=1), metadata=by_text.md()
    )
    await call
    text_cost = BURST - await remaining(call)
    call = by_vector.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query_embedding=[1.0] + [0.0] * 63, top_k=1),
        metadata=by_vector.md(),
    )
    await call
    vector_cost = BURST - await remaining(call)
    assert text_cost > vector_cost >= 1


# --- item 14: an import is charged per item as it is read -----------------------------------


async def test_an_import_costs_what_the_same_batch_costs(frozen: RunningServer) -> None:
    importer, batcher = await keys_of_one_project(frozen, 2)
    call = importer.memory.ImportMemories(stream(items(35)), metadata=importer.md())
    assert (await call).imported_count == 35
    batch = memory_pb2.BatchCreateMemoriesRequest(
        requests=[memory_pb2.CreateMemoryRequest(memory=m) for m in items(35)]
    )
    batch_call = batcher.memory.BatchCreateMemories(batch, metadata=batcher.md())
    await batch_call
    assert await remaining(call) == await remaining(batch_call) == BURST - 4


async def test_an_import_past_the_burst_stops_mid_stream_with_what_came_before_stored(
    make_server: MakeServer,
) -> None:
    server = await make_server(clock=ManualClock(), key_burst=5)
    importer, lister = await keys_of_one_project(server, 2)
    with pytest.raises(aio.AioRpcError) as caught:
        await importer.memory.ImportMemories(stream(items(100)), metadata=importer.md())
    err = caught.value
    # 1 unit for items 0-9, then one per ten more: the 6th unit (item 50) is refused
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert reason_of(err) == "RATE_LIMITED"
    summary = detail(err, memory_pb2.ImportMemoriesResponse)
    assert (summary.imported_count, summary.failed_count) == (50, 0)
    assert "resume from item 50" in (err.details() or "")
    assert await stored(lister) == sorted(f"item {i}" for i in range(50))


async def test_a_corrupt_message_mid_stream_is_invalid_argument_after_storing_the_rest(
    server: RunningServer,
) -> None:
    importer, lister = await keys_of_one_project(server, 2)
    good = [memory_pb2.ImportMemoriesRequest(memory=m).SerializeToString() for m in items(3)]

    async def raw() -> AsyncIterator[bytes]:
        for body in good:
            yield body
        yield b"\xff\xff\xff\xff\x0f"
        yield good[0]

    call = server.channel.stream_unary("/memoryd.v1.MemoryService/ImportMemories")
    with pytest.raises(aio.AioRpcError) as caught:
        await call(raw(), metadata=importer.md())
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert reason_of(err) == "MALFORMED_REQUEST"
    assert detail(err, memory_pb2.ImportMemoriesResponse).imported_count == 3
    assert await stored(lister) == ["item 0", "item 1", "item 2"]


async def test_an_idle_import_stream_is_closed_with_what_it_sent_stored(
    make_server: MakeServer,
) -> None:
    server = await make_server(stream_idle_timeout_s=0.2)
    importer, lister = await keys_of_one_project(server, 2)
    never = asyncio.Event()
    with pytest.raises(aio.AioRpcError) as caught:
        # a generous client deadline: the server's idle timeout must end it first
        await importer.memory.ImportMemories(
            stream(items(3), then=never), metadata=importer.md(), timeout=60
        )
    err = caught.value
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    assert reason_of(err) == "STREAM_IDLE_TIMEOUT"
    assert detail(err, memory_pb2.ImportMemoriesResponse).imported_count == 3
    assert await stored(lister) == ["item 0", "item 1", "item 2"]
