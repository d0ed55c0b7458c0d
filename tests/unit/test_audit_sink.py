"""The audit sink (`AuditSink` port): every event reaches it, the refused
ones with their reason, and the JSON-lines file adapter writes one whole
line per event even when events are written concurrently."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from memoryd.domain.audit import Auditor
from memoryd.domain.clock import ManualClock
from memoryd.domain.control import AuditEvent
from memoryd.domain.errors import NotFound
from memoryd.domain.tenancy import Caller, KeyKind, Principal
from memoryd.storage.audit_file import JsonLinesAuditFile


class _Store:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def append_audit(self, event: AuditEvent) -> None:
        self.events.append(event)


class _Sink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def append(self, event: AuditEvent) -> None:
        self.events.append(event)


def _caller(rid: str) -> Caller:
    principal = Principal("k1", KeyKind.DATA, "org_1", frozenset({"memory:*"}), "prj_1", "env_1")
    return Caller(principal, rid, "127.0.0.1")


async def test_the_sink_gets_every_event_the_store_gets_refusals_included() -> None:
    store, sink = _Store(), _Sink()
    auditor = Auditor(store, ManualClock(), sink)  # type: ignore[arg-type]
    async with auditor.action(_caller("r1"), "memory.delete", target="m1"):
        pass
    with pytest.raises(NotFound):
        async with auditor.action(_caller("r2"), "memory.delete", target="m2"):
            raise NotFound("memory 'm2' not found")
    assert sink.events == store.events
    assert [(e.request_id, e.outcome) for e in sink.events] == [
        ("r1", "OK"),
        ("r2", "NOT_FOUND"),
    ]
    assert sink.events[1].details["reason"] == "NOT_FOUND"


async def test_the_file_holds_one_whole_json_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    auditor = Auditor(_Store(), ManualClock(), JsonLinesAuditFile(path))  # type: ignore[arg-type]

    async def act(i: int) -> None:
        async with auditor.action(_caller(f"r{i}"), "memory.update", target="x" * 2000):
            pass

    await asyncio.gather(*(act(i) for i in range(20)))
    lines = path.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    assert sorted(e["request_id"] for e in events) == sorted(f"r{i}" for i in range(20))
    assert all(e["action"] == "memory.update" and e["outcome"] == "OK" for e in events)
    assert {e["time"] for e in events} == {"2026-01-01T00:00:00+00:00"}  # ISO 8601
