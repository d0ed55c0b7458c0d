"""The webhook rules that need no server: which events go to which webhook
(tenant, end user, start position, event types, the memory filter on the
memory's API form), what a delivery's body holds, the Standard Webhooks
signatures (checked with the `standardwebhooks` package, a third party's
implementation), and the retry policy's backoff."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from memoryd.domain.changes import ChangeEvent, EventType
from memoryd.domain.memory import Filter, Match, MatchAny, NumberRange, TimeRange
from memoryd.domain.tenancy import Tenant
from memoryd.domain.webhooks import RetryPolicy, SigningKeys, Webhook
from memoryd.domain.webhooks.matching import payload, plan, receives
from memoryd.domain.webhooks.signing import delivery_headers, new_secret, signature

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ENV = Tenant("org_a", "prj_a", "env_a")
OTHER_ENV = Tenant("org_a", "prj_a", "env_b")
OTHER_ORG = Tenant("org_b", "prj_a", "env_a")

MEMORY: dict[str, Any] = {
    "id": "m-1",
    "content": "likes tea",
    "agent_id": "planner",
    "thread_id": "t-9",
    "source": "chat",
    "tags": ["food", "drink"],
    "end_user_id": "alice",
    "metadata": {"score": 3.0, "vip": True, "city": "Lisbon", "items": [{"n": 1}, {"n": 7}]},
    "create_time": "2026-03-01T11:00:00Z",
    "update_time": "2026-03-01T11:30:00.250Z",
    "embedding": [0.1, 0.2],
}


def webhook(
    tenant: Tenant = ENV,
    *,
    types: frozenset[EventType] = frozenset(),
    flt: Filter | None = None,
    start_seq: int = 0,
) -> Webhook:
    return Webhook(
        id="whk_1",
        tenant=tenant,
        url="https://example.com/hook",
        event_types=types,
        filter=flt or Filter(),
        description="",
        enabled=True,
        create_time=T0,
        update_time=T0,
        created_by="key",
        start_seq=start_seq,
    )


def event(
    kind: EventType = EventType.CREATED,
    *,
    tenant: Tenant = ENV,
    end_user: str = "alice",
    memory: dict[str, Any] | None = MEMORY,
    seq: int = 5,
) -> ChangeEvent:
    t = Tenant(tenant.org_id, tenant.project_id, tenant.environment_id, end_user)
    return ChangeEvent(
        type=kind,
        tenant=t,
        memory_id="m-1",
        time=T0,
        memory=memory,
        operation_id="op-1",
        request_id="req-1",
        seq=seq,
    )


# --- the filter on the event's memory ----------------------------------------------------


@pytest.mark.parametrize(
    ("flt", "holds"),
    [
        (Filter(), True),
        (Filter(must=(Match("agent_id", "planner"),)), True),
        (Filter(must=(Match("agent_id", "other"),)), False),
        (Filter(must=(MatchAny("tags", ("x", "food")),)), True),
        (Filter(must=(Match("end_user_id", "alice"),)), True),
        (Filter(must=(Match("metadata.score", 3),)), True),  # 3 equals 3.0
        (Filter(must=(Match("metadata.vip", 1),)), False),  # a bool is no number
        (Filter(must=(NumberRange("metadata.score", gt=2.5, lte=3),)), True),
        (Filter(must=(TimeRange("create_time", start=T0 - timedelta(hours=1)),)), True),
        (Filter(must=(TimeRange("update_time", end=T0 - timedelta(minutes=30)),)), False),
        (Filter(should=(Match("source", "email"), Match("source", "chat"))), True),
        (Filter(must_not=(Match("thread_id", "t-9"),)), False),
    ],
)
def test_the_filter_on_the_events_memory(flt: Filter, holds: bool) -> None:
    """The filter means what ListMemories makes of it (the in-process
    matcher is held to the engine by tests/integration/test_filter_matching.py)."""
    assert receives(webhook(flt=flt), event()) is holds


def test_a_memory_that_is_not_a_memorys_api_form_passes_only_an_empty_filter() -> None:
    broken = {"content": "no id, no times"}
    assert receives(webhook(), event(memory=broken))
    assert not receives(webhook(flt=Filter(must=(Match("agent_id", ""),))), event(memory=broken))


# --- which webhooks an event goes to ---------------------------------------------------


def test_an_environment_wide_webhook_gets_every_end_users_events_of_its_environment() -> None:
    w = webhook()
    assert receives(w, event(end_user="alice"))
    assert receives(w, event(end_user=""))
    assert not receives(w, event(tenant=OTHER_ENV))
    assert not receives(w, event(tenant=OTHER_ORG))


def test_an_end_user_webhook_gets_only_its_end_users_events() -> None:
    w = webhook(Tenant("org_a", "prj_a", "env_a", "alice"))
    assert receives(w, event(end_user="alice"))
    assert not receives(w, event(end_user="bob"))
    assert not receives(w, event(end_user=""))


def test_types_filter_and_start_position() -> None:
    assert not receives(webhook(start_seq=5), event(seq=5))
    assert receives(webhook(start_seq=4), event(seq=5))
    only_deletes = webhook(types=frozenset({EventType.DELETED}))
    assert not receives(only_deletes, event(EventType.CREATED))
    assert receives(only_deletes, event(EventType.DELETED))
    planner = webhook(flt=Filter(must=(Match("agent_id", "planner"),)))
    assert receives(planner, event())
    other = {**MEMORY, "agent_id": "other"}
    assert not receives(planner, event(memory=other))
    # a deletion is filtered on the memory's last state; one without any passes
    assert not receives(planner, event(EventType.DELETED, memory=other))
    assert receives(planner, event(EventType.DELETED, memory=None))


def test_plan_makes_one_delivery_per_event_and_webhook_in_order() -> None:
    a = webhook()
    b = Webhook(**{**vars(webhook(Tenant("org_a", "prj_a", "env_a", "bob"))), "id": "whk_2"})
    c = Webhook(**{**vars(webhook(OTHER_ENV)), "id": "whk_3"})
    events = [event(seq=1, end_user="alice"), event(seq=2, end_user="bob")]
    ids = iter(f"msg_{i}" for i in range(10))
    out = plan(events, [a, b, c], T0, timedelta(hours=24), lambda: next(ids))
    assert [(d.event_seq, d.webhook_id) for d in out] == [(1, "whk_1"), (2, "whk_1"), (2, "whk_2")]
    assert all(d.expire_time == T0 + timedelta(hours=24) for d in out)
    assert out[1].payload == out[2].payload  # one body per event


# --- the body -------------------------------------------------------------------------------


def test_the_body_of_a_change_carries_the_memory_without_its_vector() -> None:
    body = json.loads(payload(event()))
    assert body["type"] == "memory.created"
    assert body["timestamp"] == "2026-03-01T12:00:00Z"
    data = body["data"]
    assert data["type"] == "CREATED"
    assert data["memory_id"] == "m-1"
    assert data["operation_id"] == "op-1" and data["request_id"] == "req-1"
    assert data["end_user_id"] == "alice"
    assert data["memory"]["content"] == "likes tea"
    assert "embedding" not in data["memory"]


@pytest.mark.parametrize("kind", [EventType.DELETED, EventType.PURGED, EventType.EXPIRED])
def test_the_body_of_a_deletion_has_the_id_only(kind: EventType) -> None:
    body = json.loads(payload(event(kind)))
    assert body["type"] == f"memory.{kind.value.lower()}"
    assert body["data"]["memory_id"] == "m-1"
    assert "memory" not in body["data"]
    assert "likes tea" not in payload(event(kind))


# --- signatures -------------------------------------------------------------------------------


def _verify(secret: str, headers: list[tuple[str, str]], body: bytes) -> Any:
    return StandardWebhook(secret).verify(body, dict(headers))


def test_signatures_verify_with_the_standard_webhooks_package() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = payload(event()).encode()
    now = int(datetime.now(UTC).timestamp())
    headers = delivery_headers(SigningKeys(secret), "msg_1", now, body)
    assert dict(headers)["content-type"] == "application/json"
    assert _verify(secret, headers, body)["data"]["memory_id"] == "m-1"
    with pytest.raises(WebhookVerificationError):
        _verify(new_secret(), headers, body)
    with pytest.raises(WebhookVerificationError):
        _verify(secret, headers, body.replace(b"tea", b"tee"))


def test_during_a_rotation_both_secrets_sign() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"a":1}'
    now = int(datetime.now(UTC).timestamp())
    headers = delivery_headers(SigningKeys(new, old), "msg_1", now, body)
    sigs = dict(headers)["webhook-signature"].split(" ")
    assert sigs == [signature(new, "msg_1", now, body), signature(old, "msg_1", now, body)]
    assert _verify(new, headers, body) == {"a": 1}
    assert _verify(old, headers, body) == {"a": 1}
    alone = delivery_headers(SigningKeys(new), "msg_1", now, body)
    with pytest.raises(WebhookVerificationError):
        _verify(old, alone, body)


def test_secrets_are_random_and_never_in_a_repr() -> None:
    a, b = new_secret(), new_secret()
    assert a != b
    assert len(StandardWebhook(a)._whsecret) == 32
    assert a not in repr(SigningKeys(a, b)) and b not in repr(SigningKeys(a, b))


# --- the retry policy ------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter_until_the_deliverys_expiry() -> None:
    policy = RetryPolicy(base_s=5, max_s=60, max_age=timedelta(hours=1))
    expire = T0 + timedelta(hours=1)
    top = lambda lo, hi: hi  # noqa: E731 - the jitter's upper end
    bottom = lambda lo, hi: lo  # noqa: E731
    waits = [(policy.next_attempt(n, T0, expire, top) or T0) - T0 for n in range(1, 7)]
    assert [w.total_seconds() for w in waits] == [5, 10, 20, 40, 60, 60]
    assert policy.next_attempt(3, T0, expire, bottom) == T0
    rng = random.Random(7)
    for n in range(1, 20):
        due = policy.next_attempt(n, T0, expire, rng.uniform)
        assert due is not None and T0 <= due <= T0 + timedelta(seconds=60)
    # a retry that would come after the expiry: give up
    assert policy.next_attempt(1, expire - timedelta(seconds=1), expire, top) is None
    assert policy.next_attempt(1, expire - timedelta(seconds=10), expire, top) is not None
