"""The `mcp` suite: what the MCP endpoint adds to a search. One `memoryd
serve` process with `MEMORYD_MCP_PORT`, one environment holding `memories`
memories (10 end users), and the same text queries two ways:

- gRPC `SearchMemories` (grpc.aio client), query embedded by the server;
- MCP `search_memories` with the `mcp` SDK's own client (streamable HTTP,
  JSON answers), which the endpoint turns into that same gRPC call.

Both at 1 call in flight (latency) and at `concurrency` (throughput), with
the p50 ratio MCP/gRPC. The embedder is the server's setting: with
`--embedding-provider hashing` the figures isolate the transport; with the
real model both include the same query embedding. Client and server share
the machine, so the MCP client's own work (JSON-RPC, pydantic) is counted.
"""

from __future__ import annotations

import itertools
import logging
import socket
from contextlib import AsyncExitStack
from typing import Any

import httpx2
from grpc import aio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from benchmarks.harness import HIGH_LIMITS, Result, ServerProcess, drive
from benchmarks.memory import corpus, create_env_keys, load_memories
from memoryd.config import Settings
from memoryd.v1 import memory_pb2, memory_pb2_grpc

END_USERS = 10


async def mcp_suite(
    settings: Settings, memories: int, seconds: float, concurrency: int
) -> list[str]:
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request otherwise
    mcp_port = _free_port()
    env = {**HIGH_LIMITS, "MEMORYD_MCP_PORT": str(mcp_port)}
    lines: list[str] = []
    async with (
        ServerProcess(settings, env) as server,
        aio.insecure_channel(server.address) as channel,
    ):
        key = (await create_env_keys(channel, server.owner_key, 10))[0]
        facts = corpus(memories, max(END_USERS, memories // 100))
        stub = memory_pb2_grpc.MemoryServiceStub(channel)

        def md(tenant: int) -> tuple[tuple[str, str], ...]:
            return (("x-api-key", key), ("x-end-user-id", f"user-{tenant % END_USERS}"))

        await load_memories(stub, md, [(f, None) for f in facts], 4)
        questions = itertools.cycle([(f.tenant % END_USERS, f.question) for f in facts[:500]])
        url = f"http://127.0.0.1:{mcp_port}/mcp"
        lines.append(
            f"mcp: {memories} memories, {END_USERS} end users, embedder "
            f"{settings.embedding_provider}; {seconds:.0f} s per measurement"
        )
        for in_flight in (1, concurrency):
            cpu = server.cpu_seconds()
            grpc_result = await _grpc(stub, md, questions, seconds, in_flight)
            grpc_cpu = (server.cpu_seconds() - cpu) / max(grpc_result.calls, 1) * 1000
            cpu = server.cpu_seconds()
            mcp_result = await _mcp(url, key, questions, seconds, in_flight)
            mcp_cpu = (server.cpu_seconds() - cpu) / max(mcp_result.calls, 1) * 1000
            ratio = mcp_result.pct(0.5) / grpc_result.pct(0.5)
            lines += [
                f"{grpc_result.line()}   server CPU {grpc_cpu:.2f} ms/call",
                f"{mcp_result.line()}   server CPU {mcp_cpu:.2f} ms/call",
                f"{'  MCP/gRPC p50 ratio':<38} {ratio:9.2f}x",
            ]
    return lines


async def _grpc(stub: Any, md: Any, questions: Any, seconds: float, in_flight: int) -> Result:
    async def search() -> None:
        tenant, question = next(questions)
        await stub.SearchMemories(
            memory_pb2.SearchMemoriesRequest(query=question, top_k=10),
            metadata=md(tenant),
            timeout=30,
        )

    return await drive(f"gRPC SearchMemories x{in_flight}", search, seconds, in_flight)


async def _mcp(url: str, key: str, questions: Any, seconds: float, in_flight: int) -> Result:
    """The SDK's client, one per end user, as agents would hold them."""
    errors = 0
    async with AsyncExitStack() as stack:
        clients: dict[int, Client] = {}
        for tenant in range(END_USERS):
            headers = {"Authorization": f"Bearer {key}", "x-end-user-id": f"user-{tenant}"}
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=30))
            transport = streamable_http_client(url, http_client=http)
            clients[tenant] = await stack.enter_async_context(Client(transport))

        async def search() -> None:
            nonlocal errors
            tenant, question = next(questions)
            result = await clients[tenant].call_tool(
                "search_memories", {"query": question, "top_k": 10}
            )
            errors += bool(result.is_error)

        result = await drive(f"MCP search_memories x{in_flight}", search, seconds, in_flight)
    result.errors += errors
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
