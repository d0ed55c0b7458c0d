"""The erasure job's rules on fakes: per-store checkpoints make a re-run
after a crash skip finished stores and count each item once; a legal hold
set after the call was accepted stops the job; the receipt's digest covers
its fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from memoryd.domain.clock import ManualClock
from memoryd.domain.erasure import EraseJob, NoHolds, Receipt
from memoryd.domain.errors import FailedPrecondition
from memoryd.domain.operations import Operation, OpState
from memoryd.domain.tenancy import Tenant

ALICE = Tenant("org", "prj", "env", "alice")


class Crash(Exception):
    pass


@dataclass
class Items:
    """A store of `n` items that can crash after erasing `crash_after` of them."""

    name: str
    n: int
    crash_after: int | None = None
    erase_calls: int = 0

    async def count(self, tenant: Tenant) -> Mapping[str, int]:
        return {self.name: self.n}

    async def erase(self, tenant: Tenant) -> Mapping[str, int]:
        self.erase_calls += 1
        if self.crash_after is not None:
            self.n -= self.crash_after
            self.crash_after = None
            raise Crash
        erased, self.n = self.n, 0
        return {self.name: erased}

    async def remaining(self, tenant: Tenant) -> int:
        return self.n


@dataclass
class Job:
    operation: Operation
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    async def checkpoint(self, info: Mapping[str, Any], result: str) -> None:
        self.checkpoints.append(dict(info))
        self.operation = replace(self.operation, info=dict(info))


class Audit:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def record_server_action(self, org_id: str, action: str, **kw: Any) -> None:
        self.events.append({"action": action, **kw})


def _op() -> Operation:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return Operation(
        "op1", "erase_end_user", ALICE, "key", frozenset(), OpState.RUNNING, "{}", t, t
    )


async def test_a_rerun_after_a_crash_skips_finished_stores_and_counts_once() -> None:
    first = Items("memories", 10)
    second = Items("change_events", 7, crash_after=3)
    audit = Audit()

    async def vacuum() -> bool:
        return True

    job = EraseJob([first, second], ManualClock(), NoHolds(), audit, vacuum=vacuum)
    ctl = Job(_op())
    with pytest.raises(Crash):
        await job.run(ctl)
    # the crash lost nothing: the next attempt starts from the checkpoint
    outcome = await job.run(Job(ctl.operation))
    assert first.erase_calls == 1  # finished before the crash: not run again
    receipt = Receipt.from_json(outcome.result)
    assert receipt.counts["memories"] == 10
    assert receipt.counts["change_events"] == 7  # 3 before the crash, 4 after
    assert receipt.verified and receipt.vacuum == "ran" and receipt.vacuum_time
    assert receipt.digest == receipt.sealed().digest
    assert audit.events[0]["details"]["digest"] == receipt.digest
    assert "alice" not in str(audit.events)


async def test_a_hold_set_after_the_call_stops_the_job() -> None:
    class Held:
        async def check(self, tenant: Tenant, what: str = "") -> None:
            raise FailedPrecondition("held by hold_1", reason="LEGAL_HOLD")

    store = Items("memories", 5)
    job = EraseJob([store], ManualClock(), Held(), Audit())
    with pytest.raises(FailedPrecondition):
        await job.run(Job(_op()))
    assert store.n == 5


async def test_an_unverified_erasure_says_so() -> None:
    class Sticky(Items):
        async def remaining(self, tenant: Tenant) -> int:
            return 1

    job = EraseJob([Sticky("memories", 2)], ManualClock(), NoHolds(), Audit())
    receipt = Receipt.from_json((await job.run(Job(_op()))).result)
    assert not receipt.verified
    assert receipt.vacuum_time is None and "no vacuum" in receipt.vacuum


async def test_a_write_racing_the_erasure_is_erased_in_a_second_pass() -> None:
    class Racing(Items):
        raced = False

        async def remaining(self, tenant: Tenant) -> int:
            if not self.raced:  # a running job wrote one more after the erase
                self.raced, self.n = True, self.n + 1
            return self.n

    job = EraseJob([Racing("memories", 2)], ManualClock(), NoHolds(), Audit())
    receipt = Receipt.from_json((await job.run(Job(_op()))).result)
    assert receipt.verified and receipt.counts["memories"] == 3
