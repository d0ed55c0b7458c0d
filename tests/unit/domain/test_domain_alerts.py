"""The alert rules that need no server: which levels raise and re-arm a
quota alert (hysteresis), what makes a rate-limiting episode and ends it
(ManualClock), that the monitor never raises into its caller when the store
fails, and which webhooks receive an alert and what it is sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from test_domain_webhooks import ENV, OTHER_ENV, T0, webhook

from memoryd.domain.alerts import AlertKey, AlertMonitor, Resource
from memoryd.domain.changes import ChangeEvent, EventType, NewEvent
from memoryd.domain.clock import ManualClock
from memoryd.domain.errors import Unavailable
from memoryd.domain.memory import Filter, Match
from memoryd.domain.tenancy import Tenant
from memoryd.domain.webhooks.matching import payload, receives


class FakeAlertStore:
    """Raised states in a dict, like the SQL table; `down` fails every call."""

    def __init__(self) -> None:
        self.raised: dict[AlertKey, bool] = {}
        self.events: list[NewEvent] = []
        self.down = False

    async def raise_alert(self, key: AlertKey, event: NewEvent) -> ChangeEvent | None:
        if self.down:
            raise Unavailable("down", reason="DATABASE_UNAVAILABLE")
        if self.raised.get(key):
            return None
        self.raised[key] = True
        self.events.append(event)
        return ChangeEvent(**event.__dict__, seq=len(self.events))

    async def rearm_alert(self, key: AlertKey, now: datetime) -> None:
        if self.down:
            raise Unavailable("down", reason="DATABASE_UNAVAILABLE")
        self.raised[key] = False


def _levels(store: FakeAlertStore) -> list[tuple[str, int, int]]:
    return [
        (e.details["resource"], e.details["threshold_percent"], e.details["used"])
        for e in store.events
    ]


async def test_a_wobbling_count_alerts_once_until_it_falls_past_the_margin() -> None:
    store = FakeAlertStore()
    monitor = AlertMonitor(store, ManualClock(T0), rearm_percent=5.0)
    for used in (70, 80, 79, 80, 76, 81, 99, 100, 100, 96, 100):  # of 100
        monitor.quota(ENV, Resource.MEMORIES, used, 100)
    await monitor.drain()
    assert _levels(store) == [("memories", 80, 80), ("memories", 100, 100)]
    for used in (74, 80, 94, 100):  # 74 < 75 re-arms 80; 94 < 95 re-arms 100
        monitor.quota(ENV, Resource.MEMORIES, used, 100)
    await monitor.drain()
    assert _levels(store)[2:] == [("memories", 80, 80), ("memories", 100, 100)]


async def test_a_count_counted_up_by_one_replica_raises_but_never_rearms() -> None:
    store = FakeAlertStore()
    monitor = AlertMonitor(store, ManualClock(T0))
    monitor.quota(ENV, Resource.MEMORIES, 8, 10, exact=False)  # may raise
    monitor.quota(ENV, Resource.MEMORIES, 5, 10, exact=False)  # stale: other replicas wrote
    monitor.quota(ENV, Resource.MEMORIES, 8, 10, exact=False)
    await monitor.drain()
    assert _levels(store) == [("memories", 80, 8)]
    monitor.quota(ENV, Resource.MEMORIES, 5, 10)  # read from the store: re-armed
    monitor.quota(ENV, Resource.MEMORIES, 8, 10, exact=False)
    await monitor.drain()
    assert _levels(store) == [("memories", 80, 8), ("memories", 80, 8)]


async def test_states_are_per_environment_and_resource() -> None:
    store = FakeAlertStore()
    monitor = AlertMonitor(store, ManualClock(T0))
    monitor.quota(ENV, Resource.MEMORIES, 8, 10)
    monitor.quota(OTHER_ENV, Resource.MEMORIES, 8, 10)
    monitor.quota(Tenant("org_a", "prj_a", "env_a", "alice"), Resource.MEMORIES, 9, 10)
    monitor.quota(ENV, Resource.LLM_TOKENS, 800, 1000)
    monitor.quota(ENV, Resource.MEMORIES, 5, 0)  # no quota: nothing
    await monitor.drain()
    assert [(e.tenant, e.details["resource"]) for e in store.events] == [
        (ENV, "memories"),
        (OTHER_ENV, "memories"),
        (ENV, "llm_tokens"),
    ]
    assert all(e.memory_id == "" and e.type is EventType.QUOTA_REACHED for e in store.events)


async def test_a_store_failure_never_reaches_the_caller_and_is_tried_again() -> None:
    store = FakeAlertStore()
    monitor = AlertMonitor(store, ManualClock(T0))
    store.down = True
    monitor.quota(ENV, Resource.MEMORIES, 8, 10)  # does not raise
    await monitor.drain()
    assert store.events == []
    store.down = False
    monitor.quota(ENV, Resource.MEMORIES, 8, 10)  # the next report tries again
    await monitor.drain()
    assert _levels(store) == [("memories", 80, 8)]


async def test_sustained_rate_limiting_is_one_alert_per_episode() -> None:
    clock = ManualClock(T0)
    store = FakeAlertStore()
    monitor = AlertMonitor(store, clock, rate_limited_s=10.0, quiet_s=30.0)

    def refused(after: float) -> None:
        clock.advance(after)
        monitor.rate_limited(ENV)

    refused(0)
    refused(9)
    await monitor.drain()
    assert store.events == []  # 9 s: not sustained yet
    refused(1)  # 10 s
    refused(29)  # same episode: the gap is under 30 s
    await monitor.drain()
    assert len(store.events) == 1
    assert store.events[0].details["refused_for_seconds"] == 10.0
    refused(30)  # a quiet spell: a new episode, armed again
    refused(5)
    refused(5)
    await monitor.drain()
    assert len(store.events) == 2
    refused(31)  # a new episode, too short
    await monitor.drain()
    assert len(store.events) == 2


def _alert(kind: EventType = EventType.QUOTA_REACHED, end_user: str = "") -> ChangeEvent:
    return ChangeEvent(
        type=kind,
        tenant=Tenant(ENV.org_id, ENV.project_id, ENV.environment_id, end_user),
        memory_id="",
        time=T0,
        details={"resource": "memories", "threshold_percent": 80, "used": 8, "limit": 10},
        seq=5,
    )


def test_alerts_go_only_to_webhooks_that_name_them_and_reach_every_end_user() -> None:
    alert = _alert()
    assert not receives(webhook(), alert)  # no types: memory events only
    assert not receives(webhook(types=frozenset({EventType.CREATED})), alert)
    assert not receives(webhook(types=frozenset({EventType.RATE_LIMITED})), alert)
    named = frozenset({EventType.QUOTA_REACHED})
    assert receives(webhook(types=named), alert)
    # filters are about memories: they do not hold an alert back
    only_planner = Filter(must=(Match("agent_id", "planner"),))
    assert receives(webhook(types=named, flt=only_planner), alert)
    assert not receives(
        webhook(Tenant(ENV.org_id, ENV.project_id, ENV.environment_id, "alice"), types=named), alert
    )
    assert not receives(webhook(OTHER_ENV, types=named), alert)
    assert not receives(webhook(types=named, start_seq=5), alert)


def test_an_alerts_body_says_what_was_reached_where() -> None:
    body = json.loads(payload(_alert()))
    assert body["type"] == "alert.quota_reached"
    assert body["data"] == {
        "resource": "memories",
        "threshold_percent": 80,
        "used": 8,
        "limit": 10,
        "project_id": ENV.project_id,
        "environment_id": ENV.environment_id,
        "time": "2026-03-01T12:00:00Z",
    }
    assert json.loads(payload(_alert(EventType.RATE_LIMITED)))["type"] == "alert.rate_limited"
    assert datetime.fromisoformat(body["timestamp"]) == T0.astimezone(UTC)
