"""Webhooks in the control store, on SQLite and PostgreSQL, with the real
change log: every read confined to the caller's tenant and end users; the
fan-out (deliveries and the cursor's move in one transaction, never twice
for one event, also with two dispatchers at once); claims under a lease;
attempts, the failure run that disables a webhook; rotation keys; the
sweep; and an environment's deletion taking its webhooks along. Time is a
ManualClock: no test waits for a lease to run out."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from memoryd.domain.changes import EventType, NewEvent
from memoryd.domain.clock import ManualClock
from memoryd.domain.control import (
    Environment,
    Organization,
    Project,
    ProjectSettings,
    Quotas,
    RateLimits,
)
from memoryd.domain.errors import FailedPrecondition
from memoryd.domain.memory import Filter, Match
from memoryd.domain.tenancy import EnvironmentKind, Tenant
from memoryd.domain.webhooks import (
    Attempt,
    DeliveryClaim,
    DeliveryState,
    Disabled,
    Dispatcher,
    Outcome,
    RetryPolicy,
    Webhook,
)
from memoryd.domain.webhooks.signing import new_secret
from memoryd.storage.sql import SqlControlStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_n = itertools.count()


async def _environment(store: SqlControlStore) -> Tenant:
    i = next(_n)
    org_id = f"org_{i:06d}"
    await store.create_org(Organization(org_id, f"org{i}", T0))
    project = Project(
        id=f"prj_{i:06d}",
        org_id=org_id,
        name=f"p{i}",
        display_name="",
        settings=ProjectSettings(),
        rate_limits=RateLimits(),
        quotas=Quotas(),
        create_time=T0,
        update_time=T0,
    )
    env = Environment(f"env_{i:06d}", org_id, project.id, "production", EnvironmentKind.LIVE, T0)
    await store.create_project(project, [env])
    return Tenant(org_id, project.id, env.id)


async def _webhook(
    store: SqlControlStore,
    tenant: Tenant,
    *,
    end_user: str = "",
    when: datetime = T0,
    flt: Filter | None = None,
    start_seq: int | None = None,
) -> tuple[Webhook, str]:
    w = Webhook(
        id=f"whk_{next(_n):06d}",
        tenant=replace(tenant, end_user_id=end_user),
        url="https://example.com/hook",
        event_types=frozenset(),
        filter=flt or Filter(),
        description="",
        enabled=True,
        create_time=when,
        update_time=when,
        created_by="key_1",
        start_seq=await store.last() if start_seq is None else start_seq,
    )
    secret = new_secret()
    await store.create_webhook(w, secret)
    return w, secret


def _event(tenant: Tenant, end_user: str = "", memory_id: str = "m", **memory: str) -> NewEvent:
    return NewEvent(
        type=EventType.CREATED,
        tenant=replace(tenant, end_user_id=end_user),
        memory_id=memory_id,
        time=T0,
        memory={"id": memory_id, "content": "x", "create_time": "2026-03-01T12:00:00Z", **memory},
    )


async def _record(
    store: SqlControlStore,
    claim: DeliveryClaim,
    attempt: Attempt,
    state: DeliveryState,
    due: datetime | None,
    disable_after: int,
) -> Disabled | None:
    """One outcome recorded on its own: the webhook it disabled, if any."""
    disabled = await store.record_attempts([Outcome(claim, attempt, state, due)], disable_after)
    assert len(disabled) <= 1
    return disabled[0] if disabled else None


def _dispatcher(store: SqlControlStore, clock: ManualClock, batch: int = 500) -> Dispatcher:
    return Dispatcher(store, store, clock, RetryPolicy(), batch=batch)


async def _all_deliveries(store: SqlControlStore, w: Webhook) -> list[str]:
    page = await store.list_deliveries(w.tenant.across_end_users(), w.id, None, 1000, None)
    assert page is not None
    return sorted(d.memory_id for d in page.items)


# --- a caller's webhooks ------------------------------------------------------------------


async def test_webhooks_are_confined_to_their_tenant_and_end_users(store: SqlControlStore) -> None:
    a = await _environment(store)
    b = await _environment(store)
    whole, _ = await _webhook(store, a)
    alice, _ = await _webhook(store, a, end_user="alice", when=T0 + timedelta(seconds=1))
    everyone = a.across_end_users()
    as_alice = replace(a, end_user_id="alice")
    as_bob = replace(a, end_user_id="bob")

    assert await store.get_webhook(everyone, whole.id) == whole
    assert await store.get_webhook(everyone, alice.id) == alice
    assert await store.get_webhook(as_alice, alice.id) == alice
    assert await store.get_webhook(as_alice, whole.id) is None
    assert await store.get_webhook(as_bob, alice.id) is None
    for outsider in (b.across_end_users(), replace(b, end_user_id="alice")):
        assert await store.get_webhook(outsider, whole.id) is None
        assert await store.get_webhook(outsider, alice.id) is None
        assert (await store.list_webhooks(outsider, 10, None)).items == []
        evil = replace(whole, url="https://evil.example")
        assert await store.save_webhook(outsider, evil) is None
        assert not await store.delete_webhook(outsider, whole.id)
        assert await store.rotate_webhook_secret(outsider, whole.id, new_secret(), None, T0) is None
        assert await store.list_deliveries(outsider, whole.id, None, 10, None) is None
    assert [w.id for w in (await store.list_webhooks(everyone, 10, None)).items] == [
        alice.id,
        whole.id,
    ]
    assert [w.id for w in (await store.list_webhooks(as_alice, 10, None)).items] == [alice.id]
    assert await store.count_webhooks(as_bob) == 2  # the environment's, whoever asks
    assert await store.get_webhook(everyone, whole.id) == whole  # untouched


async def test_list_pages_newest_first(store: SqlControlStore) -> None:
    a = await _environment(store)
    made = [(await _webhook(store, a, when=T0 + timedelta(seconds=i)))[0] for i in range(5)]
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_webhooks(a.across_end_users(), 2, after)
        seen += [w.id for w in page.items]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == [w.id for w in reversed(made)]


async def test_save_and_rotate(store: SqlControlStore) -> None:
    a = await _environment(store)
    w, _ = await _webhook(store, a)
    everyone = a.across_end_users()
    changed = replace(
        w,
        url="https://example.org/x",
        event_types=frozenset({EventType.DELETED}),
        filter=Filter(must=(Match("agent_id", "planner"),)),
        description="d",
        enabled=False,
        disable_time=T0,
        update_time=T0 + timedelta(seconds=1),
    )
    assert await store.save_webhook(everyone, changed) == changed
    rotated = await store.rotate_webhook_secret(
        everyone, w.id, new_secret(), T0 + timedelta(hours=1), T0
    )
    assert rotated is not None
    assert rotated.rotate_time == T0
    assert rotated.previous_secret_expire_time == T0 + timedelta(hours=1)


async def test_deleting_the_environment_deletes_its_webhooks_and_deliveries(
    store: SqlControlStore,
) -> None:
    a = await _environment(store)
    w, _ = await _webhook(store, a)
    await store.append([_event(a, memory_id="m1")])
    clock = ManualClock(T0)
    await _dispatcher(store, clock).step()
    assert await _all_deliveries(store, w) == ["m1"]
    await store.delete_environment(a.org_id, a.environment_id)
    assert await store.get_webhook(a.across_end_users(), w.id) is None
    assert await store.claim_deliveries("x", T0, 30, 10, []) == []


# --- the fan-out ----------------------------------------------------------------------------


async def test_the_fan_out_follows_tenant_end_user_filter_and_start(store: SqlControlStore) -> None:
    a = await _environment(store)
    b = await _environment(store)
    clock = ManualClock(T0)
    await store.append([_event(a, memory_id="before")])
    whole, _ = await _webhook(store, a)
    alice, _ = await _webhook(store, a, end_user="alice")
    planner, _ = await _webhook(store, a, flt=Filter(must=(Match("agent_id", "planner"),)))
    other, _ = await _webhook(store, b)
    await store.append(
        [
            _event(a, "alice", "a1"),
            _event(a, "bob", "b1", agent_id="planner"),
            _event(a, "", "n1"),
            _event(b, "alice", "x1"),
        ]
    )
    dispatcher = _dispatcher(store, clock, batch=2)
    passed = 0
    while n := await dispatcher.step():
        passed += n
    assert passed == 5  # "before" too: no webhook takes it
    assert await store.dispatch_position() == await store.last()
    assert await _all_deliveries(store, whole) == ["a1", "b1", "n1"]
    assert await _all_deliveries(store, alice) == ["a1"]
    assert await _all_deliveries(store, planner) == ["b1"]
    assert await _all_deliveries(store, other) == ["x1"]
    # nothing new: nothing more
    assert await dispatcher.step() == 0
    assert await _all_deliveries(store, whole) == ["a1", "b1", "n1"]


async def test_without_enabled_webhooks_the_cursor_skips_ahead(store: SqlControlStore) -> None:
    a = await _environment(store)
    w, _ = await _webhook(store, a)
    await store.save_webhook(a.across_end_users(), replace(w, enabled=False))
    await store.append([_event(a, memory_id=f"m{i}") for i in range(3)])
    assert await _dispatcher(store, ManualClock(T0)).step() == 0
    assert await store.dispatch_position() == await store.last()
    await store.save_webhook(a.across_end_users(), w)  # enabled again
    assert await _all_deliveries(store, w) == []  # the past is not replayed


async def test_two_dispatchers_at_once_fan_out_each_event_once(store: SqlControlStore) -> None:
    a = await _environment(store)
    w, _ = await _webhook(store, a)
    await store.append([_event(a, memory_id=f"m{i:03d}") for i in range(60)])
    clock = ManualClock(T0)
    first, second = _dispatcher(store, clock, batch=7), _dispatcher(store, clock, batch=5)

    async def drain(d: Dispatcher) -> None:
        passed = 1
        while passed:
            passed = await d.step()
            await asyncio.sleep(0)  # let the other one in

    await asyncio.gather(drain(first), drain(second))
    assert await _all_deliveries(store, w) == [f"m{i:03d}" for i in range(60)]


# --- claims, attempts, failures --------------------------------------------------------------


async def _queued(store: SqlControlStore, n: int = 1) -> tuple[Tenant, Webhook, str]:
    a = await _environment(store)
    w, secret = await _webhook(store, a)
    await store.append([_event(a, memory_id=f"m{i}") for i in range(n)])
    await _dispatcher(store, ManualClock(T0)).step()
    return a, w, secret


async def test_a_claim_holds_a_delivery_until_its_lease_runs_out(store: SqlControlStore) -> None:
    _, w, secret = await _queued(store)
    [claim] = await store.claim_deliveries("one", T0, 30, 10, [])
    assert claim.keys.current == secret and claim.keys.previous == ""
    assert claim.attempt == 1 and claim.webhook_id == w.id
    assert '"memory_id":"m0"' in claim.payload
    assert await store.claim_deliveries("two", T0 + timedelta(seconds=29), 30, 10, []) == []
    [taken] = await store.claim_deliveries("two", T0 + timedelta(seconds=31), 30, 10, [])
    assert taken.delivery_id == claim.delivery_id
    # the first owner lost it: its late attempt is not recorded
    late = Attempt(T0 + timedelta(seconds=32), 200, 5)
    assert await _record(store, claim, late, DeliveryState.SUCCEEDED, None, 20) is None
    ok = Attempt(T0 + timedelta(seconds=33), 200, 7)
    assert await _record(store, taken, ok, DeliveryState.SUCCEEDED, None, 20) is None
    page = await store.list_deliveries(w.tenant.across_end_users(), w.id, None, 10, None)
    assert page is not None
    [d] = page.items
    assert d.state is DeliveryState.SUCCEEDED
    assert d.attempts == (ok,)


async def test_claims_skip_capped_and_disabled_webhooks(store: SqlControlStore) -> None:
    a, w, _ = await _queued(store, 3)
    assert await store.claim_deliveries("one", T0, 30, 10, [w.id]) == []
    assert await store.claim_deliveries("one", T0, 30, 10, [], [a.environment_id]) == []
    claims = await store.claim_deliveries("one", T0, 30, 2, [])
    assert len(claims) == 2
    await store.release_deliveries(claims)
    await store.save_webhook(a.across_end_users(), replace(w, enabled=False))
    assert await store.claim_deliveries("one", T0, 30, 10, []) == []


async def test_a_retry_waits_and_counts_its_attempts(store: SqlControlStore) -> None:
    _, w, _ = await _queued(store)
    [claim] = await store.claim_deliveries("one", T0, 30, 10, [])
    failed = Attempt(T0, 500, 12, "answered HTTP 500")
    retry_at = T0 + timedelta(seconds=10)
    await _record(store, claim, failed, DeliveryState.PENDING, retry_at, 20)
    assert await store.claim_deliveries("one", T0 + timedelta(seconds=9), 30, 10, []) == []
    [again] = await store.claim_deliveries("one", retry_at, 30, 10, [])
    assert again.attempt == 2
    page = await store.list_deliveries(
        w.tenant.across_end_users(), w.id, DeliveryState.PENDING, 10, None
    )
    assert page is not None
    assert page.items[0].attempts == (failed,)
    assert page.items[0].next_attempt_time == retry_at


async def test_a_run_of_failed_deliveries_disables_the_webhook_once(
    store: SqlControlStore,
) -> None:
    a, w, _ = await _queued(store, 4)
    claims = await store.claim_deliveries("one", T0, 30, 10, [])
    gave_up = Attempt(T0, 503, 3, "answered HTTP 503")
    results = [await _record(store, c, gave_up, DeliveryState.FAILED, None, 3) for c in claims]
    assert results[:2] == [None, None]
    assert results[2] is not None and results[2].failures == 3
    assert results[3] is None  # already disabled
    stored = await store.get_webhook(a.across_end_users(), w.id)
    assert stored is not None
    assert not stored.enabled and stored.consecutive_failures == 4
    assert "deliveries in a row failed" in stored.disable_reason


async def test_a_success_resets_the_failure_run(store: SqlControlStore) -> None:
    a, w, _ = await _queued(store, 2)
    first, second = await store.claim_deliveries("one", T0, 30, 10, [])
    await _record(store, first, Attempt(T0, 500, 1, "x"), DeliveryState.FAILED, None, 5)
    await _record(store, second, Attempt(T0, 204, 1), DeliveryState.SUCCEEDED, None, 5)
    stored = await store.get_webhook(a.across_end_users(), w.id)
    assert stored is not None and stored.consecutive_failures == 0


async def test_the_previous_secret_signs_only_during_its_grace(store: SqlControlStore) -> None:
    a, w, old = await _queued(store, 1)
    new = new_secret()
    grace_end = T0 + timedelta(minutes=10)
    await store.rotate_webhook_secret(a.across_end_users(), w.id, new, grace_end, T0)
    [claim] = await store.claim_deliveries("one", T0, 30, 10, [])
    assert (claim.keys.current, claim.keys.previous) == (new, old)
    await store.release_deliveries([claim])
    [later] = await store.claim_deliveries("one", grace_end, 30, 10, [])
    assert (later.keys.current, later.keys.previous) == (new, "")


async def test_redeliver(store: SqlControlStore) -> None:
    a, w, _ = await _queued(store, 1)
    everyone = a.across_end_users()
    [claim] = await store.claim_deliveries("one", T0, 30, 10, [])
    with pytest.raises(FailedPrecondition):
        await store.redeliver(everyone, w.id, claim.delivery_id, T0, T0 + timedelta(hours=1))
    await _record(store, claim, Attempt(T0, 200, 1), DeliveryState.SUCCEEDED, None, 5)
    later = T0 + timedelta(minutes=5)
    d = await store.redeliver(everyone, w.id, claim.delivery_id, later, later + timedelta(hours=1))
    assert d is not None and d.state is DeliveryState.PENDING and d.next_attempt_time == later
    [again] = await store.claim_deliveries("one", later, 30, 10, [])
    assert again.delivery_id == claim.delivery_id and again.attempt == 2
    assert await store.redeliver(everyone, w.id, "msg_nope", later, later) is None
    other = await _environment(store)
    outsider = other.across_end_users()
    assert await store.redeliver(outsider, w.id, claim.delivery_id, later, later) is None


async def test_the_sweep_deletes_finished_deliveries_only(store: SqlControlStore) -> None:
    _, w, _ = await _queued(store, 2)
    done, waiting = await store.claim_deliveries("one", T0, 30, 10, [])
    await _record(store, done, Attempt(T0, 200, 1), DeliveryState.SUCCEEDED, None, 5)
    await store.release_deliveries([waiting])
    assert await store.sweep_deliveries(T0, 100) == 0
    assert await store.sweep_deliveries(T0 + timedelta(seconds=1), 100) == 1
    assert len(await _all_deliveries(store, w)) == 1


async def test_a_batch_of_outcomes_is_recorded_in_order_and_drops_lost_leases(
    store: SqlControlStore,
) -> None:
    a, w, _ = await _queued(store, 5)
    claims = await store.claim_deliveries("one", T0, 30, 10, [])
    assert len(claims) == 5
    lost = claims[4]
    await store.release_deliveries([lost])
    [retaken] = await store.claim_deliveries("two", T0, 30, 10, [])
    assert retaken.delivery_id == lost.delivery_id
    no = Attempt(T0, 500, 2, "answered HTTP 500")
    yes = Attempt(T0, 200, 2)
    outcomes = [
        Outcome(claims[0], no, DeliveryState.FAILED),
        Outcome(claims[1], no, DeliveryState.FAILED),
        Outcome(claims[2], yes, DeliveryState.SUCCEEDED),
        Outcome(claims[3], no, DeliveryState.FAILED),
        Outcome(lost, yes, DeliveryState.SUCCEEDED),  # not held any more: dropped
    ]
    assert await store.record_attempts(outcomes, 3) == []
    stored = await store.get_webhook(a.across_end_users(), w.id)
    assert stored is not None and stored.consecutive_failures == 1 and stored.enabled
    page = await store.list_deliveries(a.across_end_users(), w.id, None, 10, None)
    assert page is not None
    states = {d.id: (d.state, len(d.attempts)) for d in page.items}
    assert states[lost.delivery_id] == (DeliveryState.PENDING, 0)  # "two" holds it
    done = sorted(s.value for s, n in states.values() if n == 1)
    assert done == ["FAILED", "FAILED", "FAILED", "SUCCEEDED"]
    # the holder's outcome counts: two more failures reach the threshold of 3, once
    more = await store.claim_deliveries("three", T0 + timedelta(seconds=10), 30, 10, [])
    assert more == []  # "two" still holds the last one
    disabled = await store.record_attempts([Outcome(retaken, no, DeliveryState.FAILED)], 2)
    assert [d.webhook_id for d in disabled] == [w.id] and disabled[0].failures == 2
