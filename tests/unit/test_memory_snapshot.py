"""A change event's memory is the API form of the memory: read as JSON
into `memoryd.v1.Memory` it is exactly what the API answers for it, and it
reads back into the same record (what filters apply to)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import json_format

from memoryd.api.memory import memory
from memoryd.domain.memories.snapshot import memory_from_json, memory_json
from memoryd.domain.memory import MemoryRecord, Origin
from memoryd.domain.tenancy import Tenant
from memoryd.v1 import memory_pb2

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
TENANT = Tenant("org_1", "prj_1", "env_1", "ana")

PLAIN = MemoryRecord(
    id="0b8c7f0e-6a53-4c87-9d0f-3f1f54a0c2a1",
    tenant=Tenant("org_1", "prj_1", "env_1"),
    content="plain",
    metadata={},
    agent_id="",
    thread_id="",
    source="",
    tags=(),
    create_time=T0,
    update_time=T0,
    expire_time=None,
    revision=1,
    valid_time=T0,
)
FULL = MemoryRecord(
    id="1b8c7f0e-6a53-4c87-9d0f-3f1f54a0c2a1",
    tenant=TENANT,
    content="everything set",
    metadata={"lang": "en", "n": 3, "x": 1.5, "deep": {"ok": True, "list": [1, "a", None]}},
    agent_id="agent",
    thread_id="thread",
    source="chat",
    tags=("a", "b"),
    create_time=T0,
    update_time=T0 + timedelta(seconds=5),
    expire_time=T0 + timedelta(days=1),
    revision=4,
    vector=(0.1, 0.2),
    valid_time=T0 - timedelta(hours=1),
    invalid_time=T0 + timedelta(hours=1),
    superseded_by="2b8c7f0e-6a53-4c87-9d0f-3f1f54a0c2a1",
    origin=Origin(
        operation_id="op_1",
        message_indexes=(0, 2),
        thread_id="thread",
        extractor="llm",
        extractor_version="m-1",
        prompt_versions=("decision:2",),
        writer_key_id="key_1",
    ),
)


def test_the_json_is_the_api_form_of_the_memory() -> None:
    for record in (PLAIN, FULL):
        parsed = json_format.ParseDict(memory_json(record), memory_pb2.Memory())
        if not record.metadata:  # the JSON says {}, the API leaves it unset
            parsed.ClearField("metadata")
        assert parsed == memory(record)


def test_the_json_reads_back_into_the_record() -> None:
    for record in (PLAIN, FULL):
        back = memory_from_json(memory_json(record), record.tenant)
        assert back == record.__class__(**{**vars(record), "vector": None})
