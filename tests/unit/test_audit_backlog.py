"""Audit events of calls made while the control store is unavailable (memory
calls go on from cached project settings) are held and stored when it answers
again: an outage leaves no gap in the audit log and no traceback per call."""

from __future__ import annotations

import logging

import pytest

from memoryd.domain import audit as audit_module
from memoryd.domain.audit import Auditor
from memoryd.domain.clock import ManualClock
from memoryd.domain.control import AuditEvent
from memoryd.domain.errors import Unavailable
from memoryd.domain.tenancy import Caller, KeyKind, Principal


class _Store:
    """The one method the auditor writes through, with a switchable outage."""

    def __init__(self) -> None:
        self.down = False
        self.events: list[AuditEvent] = []

    async def append_audit(self, event: AuditEvent) -> None:
        if self.down:
            raise Unavailable("the control-plane database is unreachable; retry shortly")
        self.events.append(event)


def _caller(rid: str) -> Caller:
    principal = Principal("k1", KeyKind.DATA, "org_1", frozenset({"memory:*"}), "prj_1", "env_1")
    return Caller(principal, rid, "127.0.0.1")


async def _act(auditor: Auditor, rid: str) -> None:
    async with auditor.action(_caller(rid), "memory.delete", target=f"m-{rid}"):
        pass


async def test_events_of_an_outage_are_held_then_stored_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _Store()
    auditor = Auditor(store, ManualClock())  # type: ignore[arg-type]
    await _act(auditor, "before")
    store.down = True
    with caplog.at_level(logging.WARNING, logger="memoryd.audit"):
        for i in range(3):
            await _act(auditor, f"during-{i}")
        assert auditor.held == 3
        store.down = False
        await _act(auditor, "after")
    assert [e.request_id for e in store.events] == [
        "before",
        "after",
        "during-0",
        "during-1",
        "during-2",
    ]
    assert auditor.held == 0
    records = [r for r in caplog.records if r.name == "memoryd.audit"]
    assert len(records) == 2  # held (once), then stored: not a line per event
    assert all(r.exc_info is None for r in records)


async def test_past_the_backlog_bound_the_oldest_are_dropped_and_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(audit_module, "MAX_BACKLOG", 2)
    store = _Store()
    auditor = Auditor(store, ManualClock())  # type: ignore[arg-type]
    store.down = True
    with caplog.at_level(logging.WARNING, logger="memoryd.audit"):
        for i in range(5):
            await _act(auditor, f"during-{i}")
        assert auditor.held == 2
        store.down = False
        await _act(auditor, "after")
    assert [e.request_id for e in store.events] == ["after", "during-3", "during-4"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "3 dropped" in caplog.records[-1].getMessage()
