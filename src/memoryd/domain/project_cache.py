"""A short-lived in-process cache of projects (settings, limits, quotas).

Memory calls and the rate limiter read a project on every call; this keeps
that a dict look-up. Changes made on this replica are seen at once (`forget`);
those made on another replica within `ttl_s`.

While the control-plane database is unavailable, a project read at most
`stale_s` seconds ago is still served (its last known settings), so memory
calls keep working through a short database outage; past that the call
answers UNAVAILABLE. A failed refresh is retried at most once per `ttl_s`
per project, not on every call.
"""

from __future__ import annotations

from dataclasses import dataclass

from memoryd.domain.clock import Clock
from memoryd.domain.control import ControlStore, Environment, Project
from memoryd.domain.errors import Unavailable
from memoryd.domain.tenancy import EnvironmentKind


@dataclass(frozen=True)
class _Entry:
    project: Project | None
    read_at: float  # monotonic time of the last successful read
    refresh_at: float  # monotonic time from which the store is asked again


class ProjectCache:
    def __init__(
        self, store: ControlStore, clock: Clock, ttl_s: float = 5.0, stale_s: float = 0.0
    ) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl_s
        self._stale = stale_s
        self._items: dict[tuple[str, str], _Entry] = {}

    async def get_project(self, org_id: str, project_id: str) -> Project | None:
        key = (org_id, project_id)
        now = self._clock.monotonic()
        cached = self._items.get(key)
        if cached is not None and cached.refresh_at > now:
            return cached.project
        try:
            project = await self._store.get_project(org_id, project_id)
        except Unavailable:
            if cached is None or now - cached.read_at > self._stale:
                raise
            self._items[key] = _Entry(cached.project, cached.read_at, now + self._ttl)
            return cached.project
        if len(self._items) > 10_000:
            self._items.clear()
        self._items[key] = _Entry(project, now, now + self._ttl)
        return project

    async def list_environments_of_kind(
        self, org_id: str, kind: EnvironmentKind
    ) -> list[Environment]:
        return await self._store.list_environments_of_kind(org_id, kind)

    def forget(self, org_id: str, project_id: str) -> None:
        self._items.pop((org_id, project_id), None)
