"""The MCP tools: for each, the arguments an agent sends (a pydantic model,
whose JSON schema is the tool's input schema), the scope that lists it, and
the one gRPC call it makes as the calling key.

A tool never reaches a store: it calls memoryd's own gRPC services (`Rpc`),
so scopes, tenancy, rate limits, usage, audit and metrics are the gRPC
ones. A failed call becomes a tool error carrying the gRPC code and reason.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import mcp_types as types
from google.longrunning import operations_grpc_pb2, operations_pb2
from google.protobuf import duration_pb2, field_mask_pb2, json_format
from google.protobuf.message import Message
from grpc import aio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memoryd.client.errors import MemorydError
from memoryd.domain.memories.search import MAX_TOP_K
from memoryd.domain.tenancy import Scope
from memoryd.v1 import memory_pb2, memory_pb2_grpc

# A tool call's gRPC deadline (add_messages adds its wait to it).
CALL_TIMEOUT_S = 30.0

FILTER_HELP = (
    "Optional structured filter, as JSON: {'must': [conditions], 'should': [...], "
    "'must_not': [...]}; a condition is {'field': F, 'equals': V} or {'field': F, 'any_of': "
    "[V, ...]} or {'field': 'metadata.<key>', 'range': {'gte': 1, 'lt': 5}} or {'field': "
    "'create_time', 'time_range': {'start_time': '2026-01-01T00:00:00Z'}}, where F is agent_id, "
    "thread_id, source, tags or metadata.<key>."
)
REQUEST_ID_HELP = (
    "Optional idempotency key (up to 100 characters): a retry with the same request_id "
    "answers the first call's result instead of writing again."
)


class Arguments(BaseModel):
    """Tool arguments: unknown ones are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Stubs:
    """memoryd's gRPC services on one channel (made once, shared by calls)."""

    def __init__(self, channel: aio.Channel) -> None:
        self.channel = channel
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)
        self.operations = operations_grpc_pb2.OperationsStub(channel)


@dataclass(frozen=True)
class Rpc:
    """memoryd's gRPC services as one caller sees them: every call carries
    the caller's key, end user and request id."""

    stubs: Stubs
    metadata: tuple[tuple[str, str], ...]

    @property
    def channel(self) -> aio.Channel:
        return self.stubs.channel

    @property
    def memory(self) -> memory_pb2_grpc.MemoryServiceStub:
        return self.stubs.memory

    @property
    def operations(self) -> operations_grpc_pb2.OperationsStub:
        return self.stubs.operations

    async def __call__(
        self, method: Any, request: Message, deadline_s: float = CALL_TIMEOUT_S
    ) -> Any:
        return await method(request, metadata=self.metadata, timeout=deadline_s)


@dataclass(frozen=True)
class Answer:
    """A tool's result: a one-line summary and the JSON object it found."""

    summary: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Tool:
    """One tool: listed to keys holding `scope`; `run` makes its gRPC call."""

    name: str
    description: str
    arguments: type[Arguments]
    scope: str
    run: Callable[[Rpc, Any], Awaitable[Answer]]
    read_only: bool = False
    destructive: bool = False

    def listing(self) -> types.Tool:
        return types.Tool(
            name=self.name,
            description=self.description,
            input_schema=self.arguments.model_json_schema(),
            annotations=types.ToolAnnotations(
                read_only_hint=self.read_only,
                destructive_hint=self.destructive,
                idempotent_hint=self.read_only,
                open_world_hint=False,
            ),
        )

    async def call(self, rpc: Rpc, raw: dict[str, Any]) -> types.CallToolResult:
        """Runs the tool; bad arguments and failed calls are tool errors."""
        try:
            arguments = self.arguments.model_validate(raw)
            answer = await self.run(rpc, arguments)
        except ValidationError as err:
            return _invalid_arguments(err)
        except BadArgument as err:
            return _invalid([{"field": err.field, "description": err.description}])
        except grpc.RpcError as err:
            return rpc_error(err)
        text = f"{answer.summary}\n{json.dumps(answer.data, ensure_ascii=False)}"
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], structured_content=answer.data
        )


class BadArgument(Exception):
    """An argument the model accepted but the proto does not (a filter's shape)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def rpc_error(err: grpc.RpcError) -> types.CallToolResult:
    """A failed gRPC call as a tool error with the same code, reason, field
    violations and retry delay (the server's messages hold no secret)."""
    e = MemorydError.from_rpc_error(err)
    error: dict[str, Any] = {"code": e.code.name, "reason": e.reason, "message": e.message}
    if e.field_violations:
        error["field_violations"] = [
            {"field": v.field, "description": v.description} for v in e.field_violations
        ]
    if e.quota_violations:
        error["quota_violations"] = [
            {"subject": q.subject, "description": q.description} for q in e.quota_violations
        ]
    if e.retry_delay is not None:
        error["retry_after_s"] = e.retry_delay
    if e.request_id:
        error["request_id"] = e.request_id
    return _error(error)


def _invalid_arguments(err: ValidationError) -> types.CallToolResult:
    return _invalid(
        [
            {"field": ".".join(str(p) for p in e["loc"]) or "arguments", "description": e["msg"]}
            for e in err.errors(include_input=False, include_url=False)
        ]
    )


def _invalid(violations: list[dict[str, str]]) -> types.CallToolResult:
    """INVALID_ARGUMENT with field violations, as the gRPC API answers it."""
    message = "; ".join(f"{v['field']}: {v['description']}" for v in violations)
    return _error(
        {
            "code": "INVALID_ARGUMENT",
            "reason": "INVALID_ARGUMENT",
            "message": message,
            "field_violations": violations,
        }
    )


def _error(error: dict[str, Any]) -> types.CallToolResult:
    text = f"{error['code']}: {error['message']}"
    if error.get("reason"):
        text += f" [{error['reason']}]"
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content={"error": error},
        is_error=True,
    )


# --- conversions ------------------------------------------------------------------------


def to_json(message: Message) -> dict[str, Any]:
    """A message as proto JSON with the proto's field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def memory_json(memory: memory_pb2.Memory) -> dict[str, Any]:
    out = to_json(memory)
    out.pop("embedding", None)
    return out


def memory_filter(value: dict[str, Any] | None) -> memory_pb2.MemoryFilter | None:
    if value is None:
        return None
    try:
        return json_format.ParseDict(value, memory_pb2.MemoryFilter())
    except json_format.ParseError as err:
        raise BadArgument("filter", str(err)) from None


def operation_json(op: operations_pb2.Operation) -> dict[str, Any]:
    """An operation as an agent reads it: name, done, state, and its result
    or error once done."""
    out = to_json(op)
    metadata = out.pop("metadata", {}) or {}
    metadata.pop("@type", None)
    out["state"] = metadata.get("state", "STATE_UNSPECIFIED")
    out["metadata"] = metadata
    out.setdefault("done", False)
    if "response" in out:
        out["response"].pop("@type", None)
    return out


# --- the tools ---------------------------------------------------------------------------

_MEMORY_ID = Field(min_length=1, max_length=200, description="The memory's id.")


class SearchMemoriesArgs(Arguments):
    query: str = Field(
        min_length=1,
        description="What to look for, in plain words. Matched by meaning by default.",
    )
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description="How many results, 1 to 100.")
    min_score: float = Field(
        0.0, ge=0.0, description="Only results scoring at least this (0: no floor)."
    )
    filter: dict[str, Any] | None = Field(None, description=FILTER_HELP)
    mode: Literal["semantic", "keyword", "hybrid"] | None = Field(
        None,
        description="semantic (by meaning), keyword (by words, BM25) or hybrid (both fused); "
        "unset: the server's default.",
    )
    include_invalidated: bool = Field(
        False, description="Also superseded or invalidated memories (history)."
    )


async def search_memories(rpc: Rpc, a: SearchMemoriesArgs) -> Answer:
    request = memory_pb2.SearchMemoriesRequest(
        query=a.query,
        top_k=a.top_k,
        min_score=a.min_score,
        include_invalidated=a.include_invalidated,
        mode=a.mode.upper() if a.mode else None,
    )
    if (f := memory_filter(a.filter)) is not None:
        request.filter.CopyFrom(f)
    response = await rpc(rpc.memory.SearchMemories, request)
    results = [{"score": r.score, "memory": memory_json(r.memory)} for r in response.results]
    return Answer(f"{len(results)} memories found", {"results": results})


class AddMemoryArgs(Arguments):
    content: str = Field(min_length=1, description="The memory's text: one fact or note.")
    tags: list[str] = Field(default_factory=list, description="Labels to filter by later.")
    metadata: dict[str, Any] | None = Field(
        None, description="Optional JSON object stored with the memory (filterable by key)."
    )
    agent_id: str = Field("", description="Optional: the agent that writes it.")
    thread_id: str = Field("", description="Optional: the conversation or thread it is from.")
    source: str = Field("", description="Optional: where it came from.")
    ttl_seconds: int | None = Field(
        None, ge=1, description="Optional: forget the memory after this many seconds."
    )
    dedupe: bool = Field(
        False, description="true: if a near-identical memory exists, return it instead."
    )
    request_id: str = Field("", max_length=100, description=REQUEST_ID_HELP)


async def add_memory(rpc: Rpc, a: AddMemoryArgs) -> Answer:
    memory = memory_pb2.Memory(
        content=a.content, tags=a.tags, agent_id=a.agent_id, thread_id=a.thread_id, source=a.source
    )
    if a.metadata is not None:
        memory.metadata.update(a.metadata)
    request = memory_pb2.CreateMemoryRequest(
        memory=memory, dedupe=a.dedupe, request_id=a.request_id
    )
    if a.ttl_seconds is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=a.ttl_seconds))
    response = await rpc(rpc.memory.CreateMemory, request)
    what = "an existing memory (deduplicated)" if response.deduplicated else "memory stored"
    return Answer(
        f"{what}: {response.memory.id}",
        {"memory": memory_json(response.memory), "deduplicated": response.deduplicated},
    )


class MessageArg(Arguments):
    role: str = Field(min_length=1, description="user, assistant, system or tool.")
    content: str = Field(min_length=1, description="What was said.")
    name: str = Field("", description="Optional: the speaker's name.")


class AddMessagesArgs(Arguments):
    messages: list[MessageArg] = Field(
        min_length=1, max_length=100, description="The conversation turns, oldest first (1-100)."
    )
    infer: bool = Field(
        False,
        description="false: store each user message verbatim. true: the server's extractor "
        "turns the conversation into facts and adds, updates or supersedes memories.",
    )
    thread_id: str = Field("", description="Optional: the conversation's id.")
    agent_id: str = Field("", description="Optional: the agent in the conversation.")
    source: str = Field("", description="Optional: where it came from.")
    tags: list[str] = Field(default_factory=list, description="Labels for every memory written.")
    metadata: dict[str, Any] | None = Field(
        None, description="Optional JSON object copied to every memory written."
    )
    request_id: str = Field("", max_length=100, description=REQUEST_ID_HELP)


def add_messages(wait_s: float) -> Callable[[Rpc, AddMessagesArgs], Awaitable[Answer]]:
    async def run(rpc: Rpc, a: AddMessagesArgs) -> Answer:
        request = memory_pb2.AddMessagesRequest(
            messages=[
                memory_pb2.Message(role=m.role, content=m.content, name=m.name) for m in a.messages
            ],
            infer=a.infer,
            thread_id=a.thread_id,
            agent_id=a.agent_id,
            source=a.source,
            tags=a.tags,
            request_id=a.request_id,
        )
        if a.metadata is not None:
            request.metadata.update(a.metadata)
        op = await rpc(rpc.memory.AddMessages, request)
        if not op.done and wait_s > 0:
            wait = operations_pb2.WaitOperationRequest(
                name=op.name,
                timeout=duration_pb2.Duration(seconds=int(wait_s), nanos=int(wait_s % 1 * 1e9)),
            )
            # The messages are stored: a failed wait (rate limited, say) must
            # not read as a failed add_messages, which an agent would repeat.
            with contextlib.suppress(grpc.RpcError):
                op = await rpc(rpc.operations.WaitOperation, wait, CALL_TIMEOUT_S + wait_s)
        return _operation_answer(op)

    return run


def _operation_answer(op: operations_pb2.Operation) -> Answer:
    data = operation_json(op)
    if not op.done:
        summary = f"operation {op.name} is {data['state']}; ask get_operation later"
    elif op.HasField("error"):
        summary = f"operation {op.name} failed: {op.error.message}"
    else:
        summary = f"operation {op.name} done"
    return Answer(summary, data)


class GetMemoryArgs(Arguments):
    id: str = _MEMORY_ID


async def get_memory(rpc: Rpc, a: GetMemoryArgs) -> Answer:
    memory = await rpc(rpc.memory.GetMemory, memory_pb2.GetMemoryRequest(id=a.id))
    return Answer(f"memory {memory.id}", {"memory": memory_json(memory)})


class ListMemoriesArgs(Arguments):
    filter: dict[str, Any] | None = Field(None, description=FILTER_HELP)
    page_size: int = Field(20, ge=1, le=1000, description="Memories per page, 1 to 1000.")
    page_token: str = Field(
        "", description="The next_page_token of the previous page; empty for the first."
    )
    include_invalidated: bool = Field(
        False, description="Also superseded or invalidated memories (history)."
    )


async def list_memories(rpc: Rpc, a: ListMemoriesArgs) -> Answer:
    request = memory_pb2.ListMemoriesRequest(
        page_size=a.page_size, page_token=a.page_token, include_invalidated=a.include_invalidated
    )
    if (f := memory_filter(a.filter)) is not None:
        request.filter.CopyFrom(f)
    response = await rpc(rpc.memory.ListMemories, request)
    memories = [memory_json(m) for m in response.memories]
    more = "; more with next_page_token" if response.next_page_token else ""
    return Answer(
        f"{len(memories)} memories, newest first{more}",
        {"memories": memories, "next_page_token": response.next_page_token},
    )


class UpdateMemoryArgs(Arguments):
    id: str = _MEMORY_ID
    content: str | None = Field(None, min_length=1, description="New text (unset: unchanged).")
    tags: list[str] | None = Field(
        None, description="New tags, replacing the old (unset: unchanged)."
    )
    metadata: dict[str, Any] | None = Field(
        None, description="New metadata, replacing the old (unset: unchanged)."
    )


async def update_memory(rpc: Rpc, a: UpdateMemoryArgs) -> Answer:
    memory = memory_pb2.Memory(id=a.id)
    paths = []
    if a.content is not None:
        memory.content = a.content
        paths.append("content")
    if a.tags is not None:
        memory.tags.extend(a.tags)
        paths.append("tags")
    if a.metadata is not None:
        memory.metadata.update(a.metadata)
        paths.append("metadata")
    request = memory_pb2.UpdateMemoryRequest(
        memory=memory, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    updated = await rpc(rpc.memory.UpdateMemory, request)
    return Answer(
        f"memory {updated.id} updated (revision {updated.revision})",
        {"memory": memory_json(updated)},
    )


class DeleteMemoryArgs(Arguments):
    id: str = _MEMORY_ID


async def delete_memory(rpc: Rpc, a: DeleteMemoryArgs) -> Answer:
    await rpc(rpc.memory.DeleteMemory, memory_pb2.DeleteMemoryRequest(id=a.id))
    return Answer(f"memory {a.id} deleted", {"deleted": a.id})


class GetOperationArgs(Arguments):
    name: str = Field(
        min_length=1, max_length=200, description="The operation's name, as add_messages gave it."
    )


async def get_operation(rpc: Rpc, a: GetOperationArgs) -> Answer:
    op = await rpc(rpc.operations.GetOperation, operations_pb2.GetOperationRequest(name=a.name))
    return _operation_answer(op)


def memory_tools(add_messages_wait_s: float) -> Sequence[Tool]:
    """The memory tools, in the order they are listed."""
    return (
        Tool(
            "search_memories",
            "Search this project's memories (of the end user, when the connection names one) "
            "for a query; the best matches first, each with its score. Use it before answering "
            "to recall what is known about the user or the task.",
            SearchMemoriesArgs,
            Scope.MEMORY_READ,
            search_memories,
            read_only=True,
        ),
        Tool(
            "add_memory",
            "Store one memory (a fact, preference or note worth recalling later). Answers the "
            "stored memory with its id.",
            AddMemoryArgs,
            Scope.MEMORY_ADD,
            add_memory,
        ),
        Tool(
            "add_messages",
            "Hand over conversation turns; the server stores them and writes memories from "
            f"them (verbatim, or extracted facts with infer). Waits up to "
            f"{add_messages_wait_s:g} s for the result (the decisions: memories added, updated, "
            "superseded); otherwise answers the operation's name and state, to check later "
            "with get_operation.",
            AddMessagesArgs,
            Scope.MEMORY_ADD,
            add_messages(add_messages_wait_s),
        ),
        Tool(
            "get_memory",
            "Read one memory by id.",
            GetMemoryArgs,
            Scope.MEMORY_READ,
            get_memory,
            read_only=True,
        ),
        Tool(
            "list_memories",
            "List memories, newest first, optionally filtered; paginated.",
            ListMemoriesArgs,
            Scope.MEMORY_READ,
            list_memories,
            read_only=True,
        ),
        Tool(
            "update_memory",
            "Change a memory's content, tags or metadata (only the arguments given); the "
            "previous version is kept as a revision.",
            UpdateMemoryArgs,
            Scope.MEMORY_UPDATE,
            update_memory,
        ),
        Tool(
            "delete_memory",
            "Delete one memory by id, for good.",
            DeleteMemoryArgs,
            Scope.MEMORY_DELETE,
            delete_memory,
            destructive=True,
        ),
        Tool(
            "get_operation",
            "The state of a long-running operation (from add_messages), and its result or "
            "error once done.",
            GetOperationArgs,
            Scope.MEMORY_READ,
            get_operation,
            read_only=True,
        ),
    )
