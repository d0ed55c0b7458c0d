"""`memoryd serve` with MEMORYD_MCP_PORT: an agent lists the tools over the
network with the `mcp` SDK's client and calls one, with a key of the server."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx2
from helpers.polling import wait_for
from helpers.served import Served
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from memoryd.v1 import admin_pb2, admin_pb2_grpc, keys_pb2, keys_pb2_grpc

MCP_URL = re.compile(r"memoryd MCP endpoint on (http://127\.0\.0\.1:\d+/mcp)")


async def test_serve_answers_mcp_over_the_network(tmp_path: Path) -> None:
    served = Served(tmp_path / "data", tmp_path, 0, "--mcp-port", "0")
    try:
        await wait_for(lambda: _mcp_url(served) is not None, within=10.0)
        url = _mcp_url(served)
        assert url is not None
        owner = (("x-api-key", served.owner_key() or ""),)
        assert served.channel is not None
        project = await admin_pb2_grpc.AdminServiceStub(served.channel).CreateProject(
            admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="agents")),
            metadata=owner,
        )
        key = await keys_pb2_grpc.KeyServiceStub(served.channel).CreateApiKey(
            keys_pb2.CreateApiKeyRequest(
                project_id=project.id,
                environment_id=project.environments[0].id,
                name="agent",
                scopes=["memory:read", "memory:add"],
            ),
            metadata=owner,
        )
        headers = {"Authorization": f"Bearer {key.secret}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(url, http_client=http)) as agent,
        ):
            names = {t.name for t in (await agent.list_tools()).tools}
            assert names == {
                "search_memories",
                "get_memory",
                "list_memories",
                "get_operation",
                "add_memory",
                "add_messages",
            }
            added = await agent.call_tool("add_memory", {"content": "prefers window seats"})
            assert not added.is_error, added.content
            found = await agent.call_tool("search_memories", {"query": "window seats"})
            assert found.structured_content is not None
            assert [r["memory"]["content"] for r in found.structured_content["results"]] == [
                "prefers window seats"
            ]
        assert await served.stop(signal.SIGTERM) == 0
    finally:
        served.kill()


def _mcp_url(served: Served) -> str | None:
    found = MCP_URL.search(served.err_path.read_text())
    return found.group(1) if found else None
