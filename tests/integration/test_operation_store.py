"""Operations in the control store and the job runner over them, on SQLite
and PostgreSQL: tenancy of every read, the request-id rule, claims under a
lease (one runner per job, a crashed runner's job taken over after the
lease), the per-project cap, retries and the end of a job only while the
lease holds. Time is a ManualClock: no test waits for a lease to run out."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from memoryd.domain.clock import ManualClock
from memoryd.domain.control import (
    Environment,
    Organization,
    Project,
    ProjectSettings,
    Quotas,
    RateLimits,
)
from memoryd.domain.errors import InvalidArgument, Unavailable
from memoryd.domain.operations import (
    JobControl,
    JobOutcome,
    Operation,
    OperationQuery,
    OpState,
    StoredMessage,
    new_operation_id,
)
from memoryd.domain.tenancy import EnvironmentKind, Tenant
from memoryd.jobs import JobRunner
from memoryd.storage.sql import SqlControlStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


_n = iter(range(10**6))


async def _environment(store: SqlControlStore, org_id: str = "") -> Tenant:
    """A new project with one environment (and a new org unless given)."""
    i = next(_n)
    if not org_id:
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


def _op(tenant: Tenant, when: datetime = T0, **kw: Any) -> Operation:
    return Operation(
        id=kw.pop("id", new_operation_id()),
        kind=kw.pop("kind", "add_messages"),
        tenant=tenant,
        key_id="key_1",
        scopes=frozenset({"memory:add"}),
        state=OpState.PENDING,
        payload="{}",
        create_time=when,
        update_time=when,
        **kw,
    )


def _messages(n: int = 2) -> list[StoredMessage]:
    return [StoredMessage(i, "user", f"message {i}", "", T0) for i in range(n)]


# --- tenancy -------------------------------------------------------------------------


async def test_an_operation_is_read_only_by_its_own_tenant_and_end_user(
    store: SqlControlStore,
) -> None:
    a = await _environment(store)
    b = await _environment(store)
    sibling = await _environment(store, org_id=a.org_id)  # another project, same org
    alice = Tenant(a.org_id, a.project_id, a.environment_id, "alice")
    op = await store.create_operation(_op(alice), _messages())

    assert (await store.get_operation(alice, op.id)) is not None
    assert (await store.get_operation(a.across_end_users(), op.id)) is not None
    for other in (
        a,  # the same environment without an end user
        Tenant(a.org_id, a.project_id, a.environment_id, "bob"),
        b,
        Tenant(b.org_id, b.project_id, b.environment_id, "alice"),
        Tenant(sibling.org_id, sibling.project_id, sibling.environment_id, "alice"),
        # a forged tenant naming a's environment under another project or org
        Tenant(a.org_id, sibling.project_id, a.environment_id, "alice"),
        Tenant(b.org_id, a.project_id, a.environment_id, "alice"),
    ):
        assert await store.get_operation(other, op.id) is None
        assert await store.list_operations(other, OperationQuery(), 10, None) == []
        assert await store.request_cancel(other, op.id, T0) is None
        assert await store.delete_operation(other, op.id) is False
        assert await store.thread_messages(other, "t", T0 + timedelta(days=1), "", 10) == []
    assert (await store.get_operation(alice, op.id)) is not None  # untouched


async def test_a_request_id_names_one_operation_per_tenant_and_end_user(
    store: SqlControlStore,
) -> None:
    a = await _environment(store)
    first = await store.create_operation(_op(a, request_id="r1"), _messages())
    again = await store.create_operation(_op(a, request_id="r1"), _messages(3))
    assert again.id == first.id
    assert len(await store.messages(first.id)) == 2  # the retry stored nothing
    for other in (
        Tenant(a.org_id, a.project_id, a.environment_id, "bob"),
        await _environment(store),
    ):
        assert (await store.create_operation(_op(other, request_id="r1"), [])).id != first.id
    await store.release_request_id(a, "add_messages", "r1")
    assert (await store.create_operation(_op(a, request_id="r1"), [])).id != first.id


async def test_listing_is_newest_first_and_filters_done(store: SqlControlStore) -> None:
    a = await _environment(store)
    ops = [
        await store.create_operation(_op(a, when=T0 + timedelta(seconds=i)), []) for i in range(3)
    ]
    listed = await store.list_operations(a, OperationQuery(), 10, None)
    assert [o.id for o in listed] == [o.id for o in reversed(ops)]
    page = await store.list_operations(a, OperationQuery(), 10, (ops[2].create_time, ops[2].id))
    assert [o.id for o in page] == [ops[1].id, ops[0].id]
    assert await store.list_operations(a, OperationQuery(done=True), 10, None) == []
    assert len(await store.list_operations(a, OperationQuery(done=False), 10, None)) == 3


async def test_thread_context_is_the_newest_earlier_messages_of_the_thread(
    store: SqlControlStore,
) -> None:
    a = await _environment(store)
    first = await store.create_operation(_op(a, thread_id="t"), _messages(3))
    await store.create_operation(_op(a, thread_id="other"), _messages(2))
    later = await store.create_operation(_op(a, T0 + timedelta(seconds=1), thread_id="t"), [])
    context = await store.thread_messages(a, "t", later.create_time, later.id, 2)
    assert [m.content for m in context] == ["message 1", "message 2"]
    assert await store.thread_messages(a, "t", first.create_time, first.id, 10) == []


async def test_deleting_the_environment_deletes_its_operations_and_messages(
    store: SqlControlStore,
) -> None:
    a = await _environment(store)
    op = await store.create_operation(_op(a), _messages())
    await store.delete_environment(a.org_id, a.environment_id)
    assert await store.get_operation(a, op.id) is None
    assert await store.messages(op.id) == []


async def test_a_pending_operation_is_cancelled_at_once(store: SqlControlStore) -> None:
    a = await _environment(store)
    op = await store.create_operation(_op(a), [])
    cancelled = await store.request_cancel(a, op.id, T0)
    assert cancelled is not None and cancelled.state is OpState.CANCELLED
    assert await store.claim("r", T0, 30, [], ["add_messages"]) is None


# --- claims and leases -----------------------------------------------------------------


async def test_a_job_is_claimed_once_and_taken_over_after_its_lease(
    store: SqlControlStore,
) -> None:
    a = await _environment(store)
    op = await store.create_operation(_op(a), [])
    claim = await store.claim("r1", T0, 30, [], ["add_messages"])
    assert claim is not None and claim.operation.id == op.id
    assert claim.operation.attempts == 1
    assert await store.claim("r2", T0 + timedelta(seconds=29), 30, [], ["add_messages"]) is None
    # r1 crashed: after the lease, r2 takes it over, and r1 can no longer end it
    late = await store.claim("r2", T0 + timedelta(seconds=31), 30, [], ["add_messages"])
    assert late is not None and late.operation.attempts == 2
    assert await store.heartbeat(claim, T0 + timedelta(seconds=32), 30) is None
    assert not await store.finish(claim, OpState.SUCCEEDED, T0, {})
    assert await store.finish(late, OpState.SUCCEEDED, T0 + timedelta(seconds=40), {"x": 1})
    done = await store.get_operation(a, op.id)
    assert done is not None and done.state is OpState.SUCCEEDED and done.info == {"x": 1}


async def test_concurrent_claims_never_take_the_same_job(store: SqlControlStore) -> None:
    a = await _environment(store)
    for _ in range(6):
        await store.create_operation(_op(a), [])
    claims = await asyncio.gather(
        *(store.claim(f"r{i}", T0, 30, [], ["add_messages"]) for i in range(10))
    )
    taken = [c.operation.id for c in claims if c is not None]
    assert len(taken) == len(set(taken))
    assert len(taken) <= 6


async def test_a_claim_skips_capped_projects_and_unknown_kinds(store: SqlControlStore) -> None:
    a = await _environment(store)
    b = await _environment(store)
    await store.create_operation(_op(a), [])
    await store.create_operation(_op(a, kind="ingest"), [])
    op_b = await store.create_operation(_op(b, T0 + timedelta(seconds=1)), [])
    claim = await store.claim("r", T0 + timedelta(seconds=2), 30, [a.project_id], ["add_messages"])
    assert claim is not None and claim.operation.id == op_b.id
    assert (
        await store.claim("r", T0 + timedelta(seconds=2), 30, [a.project_id], ["add_messages"])
        is None
    )


async def test_a_job_given_back_waits_for_its_retry_time(store: SqlControlStore) -> None:
    from memoryd.domain.operations import OpError

    a = await _environment(store)
    await store.create_operation(_op(a), [])
    claim = await store.claim("r", T0, 30, [], ["add_messages"])
    assert claim is not None
    error = OpError("UNAVAILABLE", "MODEL_UNAVAILABLE", "the model did not answer")
    assert await store.retry_later(claim, T0 + timedelta(seconds=10), T0, error)
    assert await store.claim("r", T0 + timedelta(seconds=9), 30, [], ["add_messages"]) is None
    again = await store.claim("r", T0 + timedelta(seconds=10), 30, [], ["add_messages"])
    assert again is not None and again.operation.attempts == 2


async def test_finished_operations_are_swept_after_their_retention(store: SqlControlStore) -> None:
    a = await _environment(store)
    op = await store.create_operation(_op(a), _messages())
    claim = await store.claim("r", T0, 30, [], ["add_messages"])
    assert claim is not None
    await store.finish(claim, OpState.SUCCEEDED, T0, {})
    assert await store.sweep_operations(T0, 100) == 0
    assert await store.sweep_operations(T0 + timedelta(seconds=1), 100) == 1
    assert await store.get_operation(a, op.id) is None
    assert await store.messages(op.id) == []


# --- the runner ------------------------------------------------------------------------


class _Handler:
    """Scripted job: each run takes the next outcome (an exception is raised)."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.runs: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    async def run(self, job: JobControl) -> JobOutcome:
        self.runs.append(job.operation.id)
        await self.release.wait()
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return JobOutcome(OpState.SUCCEEDED, {"n": len(self.runs)}, result=outcome)


def _runner(store: SqlControlStore, handler: Any, clock: ManualClock, **kw: Any) -> JobRunner:
    handlers: Mapping[str, Any] = {"add_messages": handler}
    return JobRunner(store, handlers, clock, owner=kw.pop("owner", "r1"), **kw)


async def test_the_runner_runs_a_job_and_records_its_result(store: SqlControlStore) -> None:
    clock = ManualClock(T0)
    a = await _environment(store)
    op = await store.create_operation(_op(a), [])
    done: list[str] = []
    runner = _runner(store, _Handler(["ok"]), clock, on_done=done.append)
    assert await runner.run_once() == 1
    await runner.drain()
    stored = await store.get_operation(a, op.id)
    assert stored is not None and stored.state is OpState.SUCCEEDED and stored.result == "ok"
    assert done == [op.id]
    assert (runner.counts["started"], runner.counts["succeeded"]) == (1, 1)


async def test_unavailable_is_retried_and_fails_visibly_after_the_last_attempt(
    store: SqlControlStore,
) -> None:
    clock = ManualClock(T0)
    a = await _environment(store)
    op = await store.create_operation(_op(a), [])
    handler = _Handler([Unavailable("the model did not answer")] * 2)
    runner = _runner(store, handler, clock, max_attempts=2)
    await runner.run_once()
    await runner.drain()
    pending = await store.get_operation(a, op.id)
    assert pending is not None and pending.state is OpState.PENDING
    assert await runner.run_once() == 0  # backing off
    clock.advance(3)
    assert await runner.run_once() == 1
    await runner.drain()
    failed = await store.get_operation(a, op.id)
    assert failed is not None and failed.state is OpState.FAILED
    assert failed.error is not None and failed.error.code == "UNAVAILABLE"
    assert "gave up after 2 attempts" in failed.error.message
    assert dict(runner.counts) == {"started": 2, "retried": 1, "failed": 1}


async def test_a_domain_error_fails_the_operation_with_its_reason(store: SqlControlStore) -> None:
    clock = ManualClock(T0)
    a = await _environment(store)
    op = await store.create_operation(_op(a), [])
    runner = _runner(
        store, _Handler([InvalidArgument("bad reply", reason="EXTRACTION_FAILED")]), clock
    )
    await runner.run_once()
    await runner.drain()
    failed = await store.get_operation(a, op.id)
    assert failed is not None and failed.error is not None
    assert (failed.error.code, failed.error.reason) == ("INVALID_ARGUMENT", "EXTRACTION_FAILED")


async def test_one_project_cannot_take_every_worker(store: SqlControlStore) -> None:
    clock = ManualClock(T0)
    flood = await _environment(store)
    quiet = await _environment(store)
    for i in range(20):
        await store.create_operation(_op(flood, T0 + timedelta(microseconds=i)), [])
    late = await store.create_operation(_op(quiet, T0 + timedelta(seconds=1)), [])
    clock.advance(2)
    handler = _Handler(["ok"] * 21)
    handler.release.clear()  # every job holds its worker
    runner = _runner(store, handler, clock, workers=4, per_project=2)
    assert await runner.run_once() == 3  # 2 of the flood (its cap), 1 of the quiet project
    assert late.id in handler.runs
    handler.release.set()
    await runner.drain()
