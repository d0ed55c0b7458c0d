"""A short-lived in-process cache of projects (settings, limits, quotas).

Memory calls and the rate limiter read a project on every call; this keeps
that a dict look-up. Changes made on this replica are seen at once (`forget`);
those made on another replica within `ttl_s`.
"""

from __future__ import annotations

from memoryd.domain.clock import Clock
from memoryd.domain.control import ControlStore, Environment, Project
from memoryd.domain.tenancy import EnvironmentKind


class ProjectCache:
    def __init__(self, store: ControlStore, clock: Clock, ttl_s: float = 5.0) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl_s
        self._items: dict[tuple[str, str], tuple[float, Project | None]] = {}

    async def get_project(self, org_id: str, project_id: str) -> Project | None:
        key = (org_id, project_id)
        now = self._clock.monotonic()
        cached = self._items.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        project = await self._store.get_project(org_id, project_id)
        if len(self._items) > 10_000:
            self._items.clear()
        self._items[key] = (now + self._ttl, project)
        return project

    async def list_environments_of_kind(
        self, org_id: str, kind: EnvironmentKind
    ) -> list[Environment]:
        return await self._store.list_environments_of_kind(org_id, kind)

    def forget(self, org_id: str, project_id: str) -> None:
        self._items.pop((org_id, project_id), None)
