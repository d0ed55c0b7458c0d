"""The filter rule and the metadata key rule, through every method that takes
them, on a real server (Qdrant Edge underneath).

- S11: a metadata key holding a backslash or a double quote cannot be named
  by the engine's JSON path (Edge failed with INTERNAL): such keys are refused
  with INVALID_ARGUMENT on every write, and in every filter.
- 15: the filter rule is the domain's, applied by each method: one depth
  limit (4 levels), the same refusal from List, Search, Purge and Export.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2
from helpers.errors import reason_of, refused, status_of, violations
from helpers.servers import Client, RunningServer

from memoryd.v1 import memory_pb2

BAD_KEYS = ["ends\\", "back\\slash", "dotted\\.key", '"quoted"', 'in"side']


@pytest.fixture
async def client(server: RunningServer) -> Client:
    return server.client(await server.data_key(await server.project("app")))


def meta(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


async def invalid(call: Awaitable[Any]) -> Any:
    """The google.rpc.Status of a call that must answer INVALID_ARGUMENT."""
    return status_of(await refused(grpc.StatusCode.INVALID_ARGUMENT, call))


async def count_all(client: Client) -> int:
    page = await client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=1000), metadata=client.md()
    )
    return len(page.memories)


# --- S11: on write ----------------------------------------------------------------------------


def _create(c: Client, metadata: struct_pb2.Struct) -> Awaitable[Any]:
    return c.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="x", metadata=metadata)),
        metadata=c.md(),
    )


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
async def test_create_and_update_refuse_a_metadata_key_a_filter_cannot_name(
    client: Client, key: str, nested: bool
) -> None:
    values: dict[str, Any] = {"outer": {key: 1}} if nested else {key: 1}
    status = await invalid(_create(client, meta(values)))
    fields = violations(status)
    assert any(f.startswith("memory.metadata.") for f in fields), fields
    assert reason_of(status) == "INVALID_ARGUMENT"

    made = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="fine")),
        metadata=client.md(),
    )
    update = memory_pb2.UpdateMemoryRequest(
        memory=memory_pb2.Memory(id=made.memory.id, metadata=meta(values))
    )
    update.update_mask.paths.append("metadata")
    fields = violations(await invalid(client.memory.UpdateMemory(update, metadata=client.md())))
    assert any(f.startswith("memory.metadata.") for f in fields), fields
    assert await count_all(client) == 1


async def test_batch_and_import_refuse_each_item_with_such_a_key(client: Client) -> None:
    items = [
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(content=f"item {i}", metadata=meta({key: "v"}))
        )
        for i, key in enumerate(["fine key", "bad\\", 'bad"'])
    ]
    batch = await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(requests=items), metadata=client.md()
    )
    assert (batch.succeeded_count, batch.failed_count) == (1, 2)
    assert [r.error.code for r in batch.results[1:]] == [code_pb2.INVALID_ARGUMENT] * 2
    assert "requests[1].memory.metadata.bad\\" in violations(batch.results[1].error)
    assert 'requests[2].memory.metadata.bad"' in violations(batch.results[2].error)

    async def stream() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
        for item in items:
            yield memory_pb2.ImportMemoriesRequest(memory=item.memory)

    summary = await client.memory.ImportMemories(stream(), metadata=client.md())
    assert (summary.imported_count, summary.failed_count) == (1, 2)
    assert [e.index for e in summary.errors] == [1, 2]
    assert all(e.error.code == code_pb2.INVALID_ARGUMENT for e in summary.errors)
    assert await count_all(client) == 2


async def test_odd_but_nameable_metadata_keys_are_stored_and_filtered(client: Client) -> None:
    keys = ["a b", "c[0]", "$x", "it's", "日本"]
    await _create(client, meta({k: "v" for k in keys}))
    for k in keys:
        flt = memory_pb2.MemoryFilter()
        flt.must.add(field=f"metadata.{k}", equals=struct_pb2.Value(string_value="v"))
        page = await client.memory.ListMemories(
            memory_pb2.ListMemoriesRequest(filter=flt), metadata=client.md()
        )
        assert len(page.memories) == 1, k


# --- S11 and 15: in filters, from every method ------------------------------------------------


def _list(c: Client, flt: memory_pb2.MemoryFilter) -> Awaitable[Any]:
    return c.memory.ListMemories(memory_pb2.ListMemoriesRequest(filter=flt), metadata=c.md())


def _search(c: Client, flt: memory_pb2.MemoryFilter) -> Awaitable[Any]:
    return c.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query="x", filter=flt), metadata=c.md()
    )


def _purge(c: Client, flt: memory_pb2.MemoryFilter) -> Awaitable[Any]:
    return c.memory.PurgeMemories(memory_pb2.PurgeMemoriesRequest(filter=flt), metadata=c.md())


async def _export(c: Client, flt: memory_pb2.MemoryFilter) -> Any:
    stream = c.memory.ExportMemories(memory_pb2.ExportMemoriesRequest(filter=flt), metadata=c.md())
    return [m async for m in stream]


METHODS: dict[str, Callable[[Client, memory_pb2.MemoryFilter], Awaitable[Any]]] = {
    "List": _list,
    "Search": _search,
    "Purge": _purge,
    "Export": _export,
}


def on_key(key: str) -> memory_pb2.MemoryFilter:
    flt = memory_pb2.MemoryFilter()
    flt.must.add(field=f"metadata.{key}", equals=struct_pb2.Value(string_value="v"))
    return flt


def nested(levels: int) -> memory_pb2.MemoryFilter:
    """A filter `levels` deep (1: a plain filter), matching every memory."""
    flt = memory_pb2.MemoryFilter()
    flt.must_not.add(field="source", equals=struct_pb2.Value(string_value="never"))
    for _ in range(levels - 1):
        outer = memory_pb2.MemoryFilter()
        outer.must.add(filter=flt)
        flt = outer
    return flt


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
async def test_a_filter_on_a_metadata_key_a_json_path_cannot_name_is_invalid_argument(
    client: Client, method: str, key: str
) -> None:
    await _create(client, meta({"plain": "v"}))
    status = await invalid(METHODS[method](client, on_key(key)))
    assert "filter.must[0].field" in violations(status)
    assert reason_of(status) == "FILTER_INVALID"
    assert await count_all(client) == 1


@pytest.mark.parametrize("method", list(METHODS))
async def test_one_depth_limit_of_four_levels_on_every_method(client: Client, method: str) -> None:
    await _create(client, meta({"plain": "v"}))
    if method != "Purge":  # a purge that passes would delete
        await METHODS[method](client, nested(4))
    status = await invalid(METHODS[method](client, nested(5)))
    assert violations(status) == {"filter" + ".must[0].filter" * 4: "nests deeper than 4 levels"}
    assert reason_of(status) == "FILTER_INVALID"
    status = await invalid(METHODS[method](client, nested(40)))
    assert "filter" + ".must[0].filter" * 4 in violations(status)
    assert await count_all(client) == 1
