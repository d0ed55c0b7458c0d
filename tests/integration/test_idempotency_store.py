"""Idempotency keys (`memoryd.domain.idempotency`) on the control store, run
against SQLite (a tmp file) and PostgreSQL (a fresh database; the test FAILS
when PostgreSQL is unreachable): the store's calls, and `Idempotency` on
them, with two stores on one database standing for two replicas.

Time moves only by a ManualClock; a waiter's polls sleep through a fake that
moves it, so no test waits on the wall clock."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import pytest

from memoryd.domain.clock import ManualClock
from memoryd.domain.errors import InvalidArgument, Unavailable
from memoryd.domain.idempotency import (
    MAX_WAIT_S,
    Idempotency,
    IdempotencyKey,
    Sleep,
)
from memoryd.storage.sql import SqlControlStore

KEY = IdempotencyKey(
    org_id="org_1",
    project_id="prj_1",
    environment_id="env_1",
    end_user_id="",
    method="/memoryd.v1.MemoryService/CreateMemory",
    request_id="req-1",
)
FP = hashlib.sha256(b"the request").digest()
OTHER_FP = hashlib.sha256(b"another request").digest()


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[tuple[SqlControlStore, SqlControlStore]]:
    """Two stores on one database: two replicas' view of the keys."""
    a, b = SqlControlStore(database_url), SqlControlStore(database_url)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await b.close()
        await a.close()


@pytest.fixture
def store(stores: tuple[SqlControlStore, SqlControlStore]) -> SqlControlStore:
    return stores[0]


class Work:
    """A request's work: counts its runs, answers `response`."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.runs = 0

    async def __call__(self) -> bytes:
        self.runs += 1
        return self.response


def clock_sleep(clock: ManualClock) -> Sleep:
    """A waiter's sleep that moves `clock` instead of waiting."""

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    return sleep


# --- the store's calls -------------------------------------------------------------------


async def test_a_claim_is_pending_until_completed_then_holds_the_response(
    store: SqlControlStore,
) -> None:
    clock = ManualClock()
    assert await store.read_idempotency_key(KEY) is None
    assert await store.claim_idempotency_key(KEY, FP, "c1", clock.now())
    assert not await store.claim_idempotency_key(KEY, FP, "c2", clock.now())
    pending = await store.read_idempotency_key(KEY)
    assert pending is not None
    assert (pending.fingerprint, pending.claim, pending.response) == (FP, "c1", None)
    assert pending.claim_time == clock.now()
    # a large response (stored compressed, off the loop) comes back whole
    response = bytes(range(256)) * 4096
    assert not await store.complete_idempotency_key(KEY, "c2", response)  # not its claim
    assert await store.complete_idempotency_key(KEY, "c1", response)
    done = await store.read_idempotency_key(KEY)
    assert done is not None and done.response == response
    # a completed key is no longer released by its claim
    await store.release_idempotency_key(KEY, "c1")
    assert await store.read_idempotency_key(KEY) == done


async def test_a_take_over_succeeds_once_and_only_from_the_claim_it_names(
    store: SqlControlStore,
) -> None:
    clock = ManualClock()
    await store.claim_idempotency_key(KEY, FP, "dead", clock.now())
    clock.advance(90)
    assert not await store.take_over_idempotency_key(KEY, "other", FP, "new", clock.now())
    assert await store.take_over_idempotency_key(KEY, "dead", FP, "new", clock.now())
    assert not await store.take_over_idempotency_key(KEY, "dead", FP, "late", clock.now())
    row = await store.read_idempotency_key(KEY)
    assert row is not None and (row.claim, row.claim_time) == ("new", clock.now())
    # the old claim, finishing late, neither completes nor releases the new one
    assert not await store.complete_idempotency_key(KEY, "dead", b"late")
    await store.release_idempotency_key(KEY, "dead")
    assert await store.read_idempotency_key(KEY) == row


# --- Idempotency on the store ------------------------------------------------------------


async def test_a_retry_answers_the_first_response_and_does_not_run_again(
    stores: tuple[SqlControlStore, SqlControlStore],
) -> None:
    clock = ManualClock()
    replica_a, replica_b = (Idempotency(s, clock) for s in stores)
    first, retry = Work(b"first"), Work(b"second")
    assert await replica_a.run(KEY, FP, first) == b"first"
    clock.advance(3600)
    assert await replica_b.run(KEY, FP, retry) == b"first"
    assert (first.runs, retry.runs) == (1, 0)


async def test_no_key_just_runs_the_work(store: SqlControlStore) -> None:
    idem = Idempotency(store, ManualClock())
    work = Work(b"r")
    assert await idem.run(None, FP, work) == b"r"
    assert await idem.run(None, FP, work) == b"r"
    assert work.runs == 2


async def test_a_request_id_reused_for_another_request_is_refused_on_request_id(
    store: SqlControlStore,
) -> None:
    clock = ManualClock()
    idem = Idempotency(store, clock, sleep=clock_sleep(clock))
    other = Work(b"other")
    # while the first is pending: refused at once, no waiting
    await store.claim_idempotency_key(KEY, FP, "running", clock.now())
    start = clock.monotonic()
    with pytest.raises(InvalidArgument) as pending:
        await idem.run(KEY, OTHER_FP, other)
    assert clock.monotonic() == start
    # and once it is done
    await store.complete_idempotency_key(KEY, "running", b"first")
    with pytest.raises(InvalidArgument) as done:
        await idem.run(KEY, OTHER_FP, other)
    for err in (pending.value, done.value):
        assert [v.field for v in err.violations] == ["request_id"]
        assert "different request" in err.violations[0].description
    assert other.runs == 0
    assert await idem.run(KEY, FP, other) == b"first"


async def test_a_concurrent_call_waits_for_the_pending_one_and_answers_its_response(
    stores: tuple[SqlControlStore, SqlControlStore],
) -> None:
    clock = ManualClock()
    started, go, first_done, waiting = (asyncio.Event() for _ in range(4))

    async def first_work() -> bytes:
        started.set()
        await go.wait()
        return b"first"

    async def waiter_sleep(seconds: float) -> None:
        clock.advance(seconds)
        waiting.set()
        await first_done.wait()

    replica_a = Idempotency(stores[0], clock)
    replica_b = Idempotency(stores[1], clock, sleep=waiter_sleep)
    second = Work(b"second")
    first_call = asyncio.create_task(replica_a.run(KEY, FP, first_work))
    await started.wait()  # the key is claimed before the work starts
    second_call = asyncio.create_task(replica_b.run(KEY, FP, second))
    await waiting.wait()  # it found the key pending, and polls
    go.set()
    assert await first_call == b"first"
    first_done.set()
    assert await second_call == b"first"
    assert second.runs == 0


async def test_a_waiter_gives_up_at_its_bound_with_a_retry_hint(store: SqlControlStore) -> None:
    clock = ManualClock()
    idem = Idempotency(store, clock, sleep=clock_sleep(clock))
    await store.claim_idempotency_key(KEY, FP, "running", clock.now())
    work = Work(b"r")
    start = clock.monotonic()
    with pytest.raises(Unavailable) as info:
        await idem.run(KEY, FP, work)
    assert info.value.reason == "REQUEST_IN_PROGRESS"
    assert info.value.retry_after
    assert clock.monotonic() - start <= MAX_WAIT_S
    # the call's own deadline bounds it further
    start = clock.monotonic()
    with pytest.raises(Unavailable):
        await idem.run(KEY, FP, work, max_wait_s=1.0)
    assert clock.monotonic() - start <= 1.0
    assert work.runs == 0


async def test_a_stale_pending_claim_is_taken_over_by_the_next_call(
    store: SqlControlStore,
) -> None:
    clock = ManualClock()
    idem = Idempotency(store, clock, stale_after=timedelta(seconds=60))
    # a server claimed the key and died before it finished
    await store.claim_idempotency_key(KEY, FP, "dead", clock.now())
    clock.advance(61)
    work = Work(b"again")
    assert await idem.run(KEY, FP, work) == b"again"
    assert work.runs == 1
    row = await store.read_idempotency_key(KEY)
    assert row is not None and row.claim != "dead" and row.response == b"again"
    # the dead server, back after all, cannot overwrite the stored response
    assert not await store.complete_idempotency_key(KEY, "dead", b"stale")
    assert await idem.run(KEY, FP, Work(b"third")) == b"again"


async def test_a_failed_call_releases_its_claim_and_the_retry_runs(
    store: SqlControlStore,
) -> None:
    idem = Idempotency(store, ManualClock())

    async def failing() -> bytes:
        raise InvalidArgument.field("memory.content", "is required")

    with pytest.raises(InvalidArgument):
        await idem.run(KEY, FP, failing)
    assert await store.read_idempotency_key(KEY) is None
    retry = Work(b"ok")
    assert await idem.run(KEY, FP, retry) == b"ok"
    assert retry.runs == 1


async def test_a_cancelled_call_releases_its_claim(store: SqlControlStore) -> None:
    idem = Idempotency(store, ManualClock())
    started = asyncio.Event()

    async def hanging() -> bytes:
        started.set()
        await asyncio.Event().wait()
        return b""

    call = asyncio.create_task(idem.run(KEY, FP, hanging))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await store.read_idempotency_key(KEY) is None


async def test_keys_expire_after_24_hours_and_the_sweep_deletes_them(
    store: SqlControlStore,
) -> None:
    clock = ManualClock()
    idem = Idempotency(store, clock, sweep_batch=2)
    keys = [replace(KEY, request_id=f"req-{i}") for i in range(5)]
    for key in keys:
        await idem.run(key, FP, Work(b"first"))
    clock.advance(23 * 3600)
    assert await idem.sweep() == 0
    assert await idem.run(keys[0], FP, Work(b"second")) == b"first"
    clock.advance(3601)
    # expired, not yet swept: as if absent, even for another request
    fresh = Work(b"fresh")
    assert await idem.run(keys[0], OTHER_FP, fresh) == b"fresh"
    assert fresh.runs == 1
    assert await idem.sweep() == 4  # in batches of 2; keys[0] was claimed anew
    for key in keys[1:]:
        assert await store.read_idempotency_key(key) is None
    assert await idem.run(keys[0], OTHER_FP, Work(b"x")) == b"fresh"


@pytest.mark.parametrize(
    "other",
    [
        replace(KEY, org_id="org_2"),
        replace(KEY, project_id="prj_2"),
        replace(KEY, environment_id="env_2"),
        replace(KEY, end_user_id="alice"),
        replace(KEY, method="/memoryd.v1.MemoryService/BatchCreateMemories"),
    ],
    ids=["org", "project", "environment", "end user", "method"],
)
async def test_keys_of_other_tenants_end_users_and_methods_never_collide(
    store: SqlControlStore, other: IdempotencyKey
) -> None:
    idem = Idempotency(store, ManualClock())
    assert await idem.run(KEY, FP, Work(b"mine")) == b"mine"
    # same request id, even another request: its own key, its own response
    theirs = Work(b"theirs")
    assert await idem.run(other, OTHER_FP, theirs) == b"theirs"
    assert theirs.runs == 1
    assert await idem.run(KEY, FP, Work(b"x")) == b"mine"
    assert await idem.run(other, OTHER_FP, Work(b"x")) == b"theirs"


async def test_of_many_simultaneous_calls_exactly_one_runs_the_work(
    stores: tuple[SqlControlStore, SqlControlStore],
) -> None:
    clock = ManualClock()
    gate = asyncio.Event()
    runs = 0

    async def work() -> bytes:
        nonlocal runs
        runs += 1
        await gate.wait()
        return b"once"

    async def sleep(seconds: float) -> None:
        gate.set()  # every other call is waiting: let the one that runs finish
        await asyncio.sleep(0.001)

    replicas = [Idempotency(s, clock, sleep=sleep) for s in stores]
    results = await asyncio.gather(*(replicas[i % 2].run(KEY, FP, work) for i in range(8)))
    assert results == [b"once"] * 8
    assert runs == 1
