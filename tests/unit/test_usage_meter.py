"""LocalUsageMeter: the embedded-mode usage meter."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from memoryd.domain.clock import ManualClock
from memoryd.domain.control import UsageRecord
from memoryd.domain.errors import InvalidArgument
from memoryd.usage import LocalUsageMeter

SEARCH = "/memoryd.v1.MemoryService/SearchMemories"
CREATE = "/memoryd.v1.MemoryService/CreateMemory"
DAY = date(2026, 3, 14)


def _meter() -> tuple[LocalUsageMeter, ManualClock]:
    clock = ManualClock(datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC))
    return LocalUsageMeter(clock), clock


async def test_counts_calls_writes_and_refusals_per_environment_and_day() -> None:
    meter, clock = _meter()
    meter.record("org", "p1", "prod", method=SEARCH)
    meter.record("org", "p1", "prod", method=SEARCH)
    meter.record("org", "p1", "prod", method=CREATE)
    meter.record("org", "p1", "prod", memories_written=2, bytes_stored=300)
    meter.record("org", "p1", "prod", method=SEARCH, rate_limited=True)
    meter.record("org", "p1", "dev", method=SEARCH)
    meter.record("other", "p9", "prod", method=SEARCH)
    clock.advance(1)  # past midnight UTC
    meter.record("org", "p1", "prod", method=SEARCH)

    records = await meter.read("org", None, None, DAY, date(2026, 3, 15))

    assert records == [
        UsageRecord("p1", "dev", DAY, 1, {SEARCH: 1}, 0, 0, 0),
        UsageRecord("p1", "prod", DAY, 3, {CREATE: 1, SEARCH: 2}, 2, 300, 1),
        UsageRecord("p1", "prod", date(2026, 3, 15), 1, {SEARCH: 1}, 0, 0, 0),
    ]


async def test_read_filters_by_project_environment_and_dates() -> None:
    meter, _ = _meter()
    meter.record("org", "p1", "prod", method=SEARCH)
    meter.record("org", "p2", "prod", method=SEARCH)
    meter.record("org", "p2", "dev", method=SEARCH)

    assert [
        (r.project_id, r.environment_id) for r in await meter.read("org", "p2", None, DAY, DAY)
    ] == [
        ("p2", "dev"),
        ("p2", "prod"),
    ]
    assert len(await meter.read("org", None, "prod", DAY, DAY)) == 2
    assert await meter.read("org", None, None, date(2026, 3, 15), date(2026, 3, 20)) == []


async def test_bad_date_ranges_are_invalid_arguments() -> None:
    meter, _ = _meter()
    with pytest.raises(InvalidArgument):
        await meter.read("org", None, None, DAY, date(2026, 3, 1))
    with pytest.raises(InvalidArgument):
        await meter.read("org", None, None, date(2024, 1, 1), DAY)


async def test_old_days_are_forgotten_after_the_retention() -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    meter = LocalUsageMeter(clock, retention_days=3)
    meter.record("org", "p", "e", method=SEARCH)
    clock.advance(2 * 86_400)
    meter.record("org", "p", "e", method=SEARCH)
    assert len(await meter.read("org", None, None, date(2026, 1, 1), date(2026, 1, 3))) == 2

    clock.advance(2 * 86_400)
    meter.record("org", "p", "e", method=SEARCH)
    days = [r.date for r in await meter.read("org", None, None, date(2026, 1, 3), date(2026, 1, 5))]
    assert days == [date(2026, 1, 3), date(2026, 1, 5)]
    assert meter._counters.keys().isdisjoint({("org", "p", "e", date(2026, 1, 1))})
