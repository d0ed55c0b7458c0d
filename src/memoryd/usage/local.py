"""The in-process usage meter (embedded mode: one replica)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, timedelta

from memoryd.domain.clock import Clock
from memoryd.domain.control import UsageRecord
from memoryd.usage.counters import (
    DEFAULT_RETENTION_DAYS,
    CounterKey,
    add_to,
    check_range,
    increments,
    sort_key,
    to_record,
)


class LocalUsageMeter:
    """Usage counters in this process (embedded mode: one replica, lost on
    restart). Days older than `retention_days` are dropped as days pass."""

    def __init__(self, clock: Clock, *, retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
        self._clock = clock
        self._retention_days = retention_days
        self._counters: dict[CounterKey, Counter[str]] = {}
        self._pruned_through: date | None = None

    def record(
        self,
        org_id: str,
        project_id: str,
        environment_id: str,
        *,
        method: str | None = None,
        rate_limited: bool = False,
        memories_written: int = 0,
        bytes_stored: int = 0,
    ) -> None:
        delta = increments(method, rate_limited, memories_written, bytes_stored)
        if not delta:
            return
        today = self._clock.now().astimezone(UTC).date()
        if self._pruned_through != today:
            self._prune(today)
        key = (org_id, project_id, environment_id, today)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = Counter()
        add_to(counters, delta)

    async def read(
        self,
        org_id: str,
        project_id: str | None,
        environment_id: str | None,
        start: date,
        end: date,
    ) -> list[UsageRecord]:
        check_range(start, end, self._retention_days)
        records = [
            to_record(project, env, day, fields)
            for (org, project, env, day), fields in self._counters.items()
            if org == org_id
            and start <= day <= end
            and (project_id is None or project == project_id)
            and (environment_id is None or env == environment_id)
        ]
        return sorted(records, key=sort_key)

    async def close(self) -> None:
        return None

    def _prune(self, today: date) -> None:
        oldest = today - timedelta(days=self._retention_days)
        for key in [key for key in self._counters if key[3] < oldest]:
            del self._counters[key]
        self._pruned_through = today
