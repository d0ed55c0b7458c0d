"""AddMessages on the wire: the request to the domain's `AddMessages`, and an
add_messages operation's metadata and response as protobuf."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from memoryd.api import convert
from memoryd.domain.conversations.extraction import ChatMessage, Event
from memoryd.domain.conversations.model import AddMessages, parse_result
from memoryd.domain.errors import Violations
from memoryd.domain.memories import MemoryService
from memoryd.domain.memory import MemoryRecord
from memoryd.domain.operations import Operation, OpState
from memoryd.v1 import memory_pb2

_STATES = {
    OpState.PENDING: memory_pb2.AddMessagesMetadata.PENDING,
    OpState.RUNNING: memory_pb2.AddMessagesMetadata.RUNNING,
    OpState.SUCCEEDED: memory_pb2.AddMessagesMetadata.SUCCEEDED,
    OpState.FAILED: memory_pb2.AddMessagesMetadata.FAILED,
    OpState.CANCELLED: memory_pb2.AddMessagesMetadata.CANCELLED,
}
_EVENTS = {e: memory_pb2.MemoryDecision.Event.Value(e.value) for e in Event}


def add_messages(req: memory_pb2.AddMessagesRequest) -> AddMessages:
    v = Violations()
    metadata: dict[str, Any] = {}
    if req.HasField("metadata"):
        try:
            metadata = json_format.MessageToDict(req.metadata)
        except ValueError:
            v.add("metadata", "numbers must be finite (no NaN or infinity)")
    v.raise_if_any()
    messages = tuple(
        ChatMessage(
            role=m.role,
            content=m.content,
            name=m.name,
            create_time=convert.opt_ts(m, "create_time", f"messages[{i}].create_time"),
        )
        for i, m in enumerate(req.messages)
    )
    return AddMessages(
        messages=messages,
        agent_id=req.agent_id,
        thread_id=req.thread_id,
        source=req.source,
        metadata=metadata,
        tags=tuple(req.tags),
        infer=req.infer,
        request_id=req.request_id,
    )


class AddMessagesView:
    """Describes add_messages operations (`operations.Describe`): the
    decisions' memories are read back (as they are now) from the
    operation's own tenant."""

    def __init__(self, memories: MemoryService, to_memory: Any) -> None:
        self._memories = memories
        self._to_memory = to_memory

    async def __call__(
        self, op: Operation
    ) -> tuple[memory_pb2.AddMessagesMetadata, memory_pb2.AddMessagesResponse | None]:
        info = op.info
        meta = memory_pb2.AddMessagesMetadata(
            state=_STATES[op.state],
            progress_percent=int(info.get("progress_percent", 0)),
            create_time=convert.ts(op.create_time),
            start_time=convert.ts(op.start_time),
            end_time=convert.ts(op.end_time),
            llm_input_tokens=int(info.get("llm_input_tokens", 0)),
            llm_output_tokens=int(info.get("llm_output_tokens", 0)),
            attempts=op.attempts,
            extractor=str(info.get("extractor", "")),
            prompt_versions=[str(v) for v in info.get("prompt_versions", ())],
            message_count=int(info.get("message_count", 0)),
            thread_id=op.thread_id,
        )
        if op.state is not OpState.SUCCEEDED:
            return meta, None
        _, applied = parse_result(op.result)
        ids = [a.memory_id for a in applied if a.memory_id]
        records: dict[str, MemoryRecord] = {
            r.id: r for r in await self._memories.records(op.tenant, ids)
        }
        response = memory_pb2.AddMessagesResponse()
        for a in applied:
            d = response.decisions.add(
                event=_EVENTS[a.event],
                previous_memory_id=a.previous_memory_id,
                reason=a.reason,
                fact=a.fact,
            )
            if a.memory_id in records:
                d.memory.CopyFrom(self._to_memory(records[a.memory_id]))
            elif a.memory_id:
                d.memory.id = a.memory_id  # deleted since
        return meta, response
