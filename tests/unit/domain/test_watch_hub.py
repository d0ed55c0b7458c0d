"""The hub's window of the recent change log (over a log in memory): it
holds exactly what the log holds for the positions it covers, whether the
events come from this process's appends (at once, or after a gap is read)
or from the log (another replica's); it starts again after events removed
meanwhile; the oldest leave it; a tenant reads only its own from it; the
cap on streams and the shutdown."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memoryd.domain.changes import ChangeEvent, EventType, LogHead, Trimmed
from memoryd.domain.errors import ResourceExhausted, Unavailable
from memoryd.domain.tenancy import Tenant
from memoryd.domain.watch.hub import WatchHub

T0 = datetime(2026, 3, 1, tzinfo=UTC)
A = Tenant("o", "p", "env_a")
A_ANA = Tenant("o", "p", "env_a", "ana")
B = Tenant("o", "p", "env_b")


def _memory(memory_id: str, tenant: Tenant) -> dict[str, object]:
    return {
        "id": memory_id,
        "content": memory_id,
        "create_time": "2026-03-01T00:00:00.000000Z",
        "end_user_id": tenant.end_user_id,
    }


class MemoryLog:
    """The log's reads the hub makes, over a list (positions dense)."""

    def __init__(self) -> None:
        self.events: list[ChangeEvent] = []
        self.head = 0
        self.reads = 0

    def add(self, tenant: Tenant, n: int = 1) -> list[ChangeEvent]:
        out = []
        for _ in range(n):
            self.head += 1
            mid = f"m{self.head}"
            e = ChangeEvent(EventType.CREATED, tenant, mid, T0, _memory(mid, tenant), seq=self.head)
            self.events.append(e)
            out.append(e)
        return out

    async def log_head(self) -> LogHead:
        return LogHead(self.head, 0, "secret")

    async def read_all(self, after: int, limit: int) -> list[ChangeEvent]:
        self.reads += 1
        return [e for e in self.events if e.seq > after][:limit]

    # not used by the hub
    async def append(self, events: object) -> list[ChangeEvent]:
        raise NotImplementedError

    async def read(self, tenant: Tenant, after: int, limit: int) -> list[ChangeEvent]:
        raise NotImplementedError

    async def read_checked(
        self, tenant: Tenant, after: int, limit: int
    ) -> tuple[list[ChangeEvent], Trimmed | None]:
        raise NotImplementedError

    async def oldest(self) -> int | None:
        raise NotImplementedError

    async def last(self) -> int:
        return self.head

    async def trim(self, before: datetime) -> int:
        raise NotImplementedError

    async def trimmed(self, tenant: Tenant) -> Trimmed | None:
        raise NotImplementedError

    async def first_at(self, tenant: Tenant, time: datetime) -> int | None:
        raise NotImplementedError


def ids(found: tuple[list[object], int] | None) -> tuple[list[str], int]:
    assert found is not None
    entries, upto = found
    return [e.event.memory_id for e in entries], upto  # type: ignore[attr-defined]


async def started(log: MemoryLog, **kw: int) -> WatchHub:
    hub = WatchHub(log, poll_interval_s=3600, max_watchers=kw.pop("max_watchers", 10), **kw)
    return hub


async def test_the_window_starts_at_the_head_and_takes_this_processs_appends() -> None:
    log = MemoryLog()
    log.add(A, 3)
    hub = await started(log)
    w = hub.join("env_a")
    await hub.fill()
    assert w.recent(A, 3, 10) == ([], 3)
    assert w.recent(A, 2, 10) is None  # before the window: read the log
    w.clear()
    hub.appended(log.add(A, 2))
    assert w._wake.is_set()
    assert ids(w.recent(A, 3, 10)) == (["m4", "m5"], 5)
    assert ids(w.recent(A, 4, 10)) == (["m5"], 5)
    assert ids(w.recent(A, 3, 1)) == (["m4"], 4)  # a batch's end
    assert log.reads == 0  # nothing read from the log but its head
    w.leave()


async def test_a_gap_is_read_from_the_log_before_this_processs_appends_enter() -> None:
    log = MemoryLog()
    hub = await started(log)
    w = hub.join("env_a")
    await hub.fill()
    other_replica = log.add(B, 2)  # 1, 2: not told to this hub
    mine = log.add(A, 1)  # 3
    hub.appended(mine)
    assert ids(w.recent(A, 0, 10)) == ([], 0)  # not yet: 1 and 2 are missing
    await hub.fill()
    assert ids(w.recent(A, 0, 10)) == (["m3"], 3)
    assert ids(w.recent(B, 0, 10)) == (["m1", "m2"], 3)
    assert other_replica[0].seq == 1
    w.leave()


async def test_another_replicas_appends_come_with_the_poll_and_wake_their_watchers() -> None:
    log = MemoryLog()
    hub = await started(log)
    wa, wb = hub.join("env_a"), hub.join("env_b")
    await hub.fill()
    wa.clear()
    wb.clear()
    log.add(B, 1)
    await hub.fill()
    assert wb._wake.is_set() and not wa._wake.is_set()
    assert ids(wb.recent(B, 0, 10)) == (["m1"], 1)
    wa.leave()
    wb.leave()


async def test_events_removed_meanwhile_restart_the_window() -> None:
    log = MemoryLog()
    hub = await started(log)
    w = hub.join("env_a")
    await hub.fill()
    log.add(A, 3)
    del log.events[:2]  # 1 and 2 trimmed (or their environment deleted) before the read
    await hub.fill()
    assert w.recent(A, 0, 10) is None  # 0 is before the gap: the log (and its trims) decide
    assert ids(w.recent(A, 2, 10)) == (["m3"], 3)
    log.add(A, 1)
    log.events.pop()  # gone as well: the window starts again after it
    await hub.fill()
    assert w.recent(A, 3, 10) is None
    assert ids(w.recent(A, 4, 10)) == ([], 4)
    w.leave()


async def test_the_oldest_events_leave_the_window() -> None:
    log = MemoryLog()
    hub = await started(log, window_events=3)
    w = hub.join("env_a")
    await hub.fill()
    hub.appended(log.add(A, 5))
    assert w.recent(A, 1, 10) is None
    assert ids(w.recent(A, 2, 10)) == (["m3", "m4", "m5"], 5)
    w.leave()


async def test_a_tenant_reads_only_what_it_may_see_but_moves_past_the_rest() -> None:
    log = MemoryLog()
    hub = await started(log)
    w = hub.join("env_a")
    await hub.fill()
    hub.appended([*log.add(A), *log.add(A_ANA), *log.add(B)])
    assert ids(w.recent(A, 0, 10)) == (["m1"], 3)
    assert ids(w.recent(A_ANA, 0, 10)) == (["m2"], 3)
    assert ids(w.recent(A.across_end_users(), 0, 10)) == (["m1", "m2"], 3)
    assert ids(w.recent(Tenant("o", "other", "env_a"), 0, 10)) == ([], 3)
    w.leave()


async def test_the_window_is_dropped_when_nobody_watches() -> None:
    log = MemoryLog()
    hub = await started(log)
    w = hub.join("env_a")
    await hub.fill()
    w.leave()
    assert hub.watching == 0 and hub.window.top is None
    hub.appended(log.add(A))  # nobody to serve: not kept
    w = hub.join("env_a")
    await hub.fill()
    assert w.recent(A, 0, 10) is None and ids(w.recent(A, 1, 10)) == ([], 1)
    w.leave()


async def test_the_cap_and_the_shutdown() -> None:
    hub = await started(MemoryLog(), max_watchers=2)
    one, two = hub.join("e"), hub.join("e")
    with pytest.raises(ResourceExhausted):
        hub.join("e")
    one.leave()
    one.leave()  # twice: counted once
    three = hub.join("e")
    assert hub.watching == 2 and hub.joined == 3
    await hub.close()
    assert two.closed and three._wake.is_set()
    with pytest.raises(Unavailable):
        hub.join("e")


async def test_a_changed_key_ends_its_streams_and_missed_news_ends_all() -> None:
    hub = await started(MemoryLog())
    mine, theirs = hub.join("e", "key_1"), hub.join("e", "key_2")
    hub.key_changed("key_1")
    reason = mine.end_reason()
    assert reason is not None and reason.reason == "API_KEY_CHANGED"
    assert mine._wake.is_set() and theirs.end_reason() is None
    hub.keys_unknown()
    assert theirs.end_reason() is not None
    await hub.close()
    closed = theirs.end_reason()
    assert closed is not None and closed.reason == "SHUTTING_DOWN"
