"""The `search_knowledge` tool: KnowledgeService.SearchKnowledge for agents.

The request is built from proto JSON (query, filter, folder, top_k,
min_score); each result is answered as the proto has it (document id and
name, chunk index, character offsets, text, score).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from pydantic import Field

from memoryd.api.mcp.tools import Answer, Arguments, BadArgument, Rpc, Tool, to_json
from memoryd.domain.tenancy import Scope
from memoryd.v1 import knowledge_pb2, knowledge_pb2_grpc


class SearchKnowledgeArgs(Arguments):
    query: str = Field(min_length=1, description="What to look for, in plain words.")
    folder: str = Field("", description="Optional: only documents in this folder.")
    filter: dict[str, Any] | None = Field(
        None, description="Optional structured filter on document fields, as proto JSON."
    )
    top_k: int = Field(10, ge=1, le=100, description="How many chunks, 1 to 100.")
    min_score: float = Field(0.0, ge=0.0, description="Only chunks scoring at least this.")


async def search_knowledge(rpc: Rpc, a: SearchKnowledgeArgs) -> Answer:
    body: dict[str, Any] = {"query": a.query, "top_k": a.top_k, "min_score": a.min_score}
    if a.folder:
        body["folder"] = a.folder
    if a.filter is not None:
        body["filter"] = a.filter
    try:
        request = json_format.ParseDict(body, knowledge_pb2.SearchKnowledgeRequest())
    except json_format.ParseError as err:
        raise BadArgument("filter", str(err)) from None
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(rpc.channel)
    response = await rpc(stub.SearchKnowledge, request)
    results = [to_json(r) for r in response.results]
    return Answer(f"{len(results)} chunks found", {"results": results})


def knowledge_tools() -> tuple[Tool, ...]:
    """`search_knowledge`."""
    return (
        Tool(
            "search_knowledge",
            "Search the documents uploaded to this environment (manuals, notes, policies) for "
            "a query; answers the best matching passages (chunks) with their document's id and "
            "name, position and score. Use it for facts from documents, search_memories for "
            "what was learned about the user.",
            SearchKnowledgeArgs,
            Scope.KNOWLEDGE_READ,
            search_knowledge,
            read_only=True,
        ),
    )
