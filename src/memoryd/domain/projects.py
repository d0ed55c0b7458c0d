"""Projects and environments of an organization.

Only org keys administer, and only their own organization: a project or
environment of another organization answers NOT_FOUND. A new project starts
with a `production` environment of kind live.

Deleting a project or an environment is a soft delete: at once it answers
NOT_FOUND to every admin call naming it and its keys stop working (evicted
on every replica), but its data stays restorable (Undelete) for the
retention window (MEMORYD_DELETION_RETENTION_DAYS, or the project's
`deletion_retention_days`). When the window has passed, `purge_due` (the
sweeper) erases its keys, memories, knowledge chunks and export files, and
then its rows, audited (`environment.purge` / `project.purge`). `force`
purges at once. A legal hold refuses the delete, and a purge of a scope
held meanwhile waits (skipped and counted) until the hold is released.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from memoryd.domain import paging
from memoryd.domain.audit import Auditor
from memoryd.domain.clock import Clock
from memoryd.domain.control import (
    ControlStore,
    Environment,
    KeyQuery,
    Project,
    ProjectSettings,
    Quotas,
    RateLimits,
)
from memoryd.domain.errors import FailedPrecondition, NotFound, Violations
from memoryd.domain.holds import HoldGuard
from memoryd.domain.ids import new_environment_id, new_project_id
from memoryd.domain.keys import shown
from memoryd.domain.ports import KeyInvalidator
from memoryd.domain.tenancy import Caller, EnvironmentKind, Principal, Scope
from memoryd.domain.text import UNPRINTABLE_RULE, has_unprintable

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
NAME_RULE = "must be 1 to 63 lowercase letters, digits or '-', starting with a letter"
MAX_DISPLAY_NAME = 200
MAX_TTL = timedelta(days=3650)
MAX_DELETION_RETENTION_DAYS = 3650

log = logging.getLogger(__name__)

# Erases what a project (or one of its environments) keeps outside its rows
# (vectors, files, data keys); answers the counts of the purge's receipt by
# store, "left" being what a second pass still found (0: verified).
MemoryScopeDeleter = Callable[[str, str, str | None], Awaitable[Mapping[str, int] | None]]

# The paths UpdateProject accepts, and the sub-fields of each group.
_GROUPS: dict[str, type] = {
    "settings": ProjectSettings,
    "rate_limits": RateLimits,
    "quotas": Quotas,
}
UPDATABLE_PATHS: frozenset[str] = frozenset(
    {"display_name", *_GROUPS}
    | {f"{g}.{f.name}" for g, cls in _GROUPS.items() for f in dataclasses.fields(cls)}
)


@dataclass(frozen=True)
class Ceilings:
    """The most an organization may grant itself as project overrides (server
    settings). Content and metadata sizes are the server's hard limits: an
    override may lower them, never raise them."""

    requests_per_second: float = 5000.0
    burst: int = 10_000
    max_memories_per_environment: int = 10_000_000
    max_content_bytes: int = 32_768
    max_metadata_bytes: int = 16_384
    # model tokens per project per day: no server cap on what an org may grant
    llm_tokens_per_day: int = 2**62

    def of(self, group: str, name: str) -> float | int:
        """The ceiling of the override `group.name` (e.g. rate_limits.key_burst)."""
        if group == "rate_limits":
            return self.requests_per_second if name.endswith("per_second") else self.burst
        return int(getattr(self, name))


@dataclass(frozen=True)
class ProjectList:
    projects: list[Project]
    next_page_token: str


@dataclass(frozen=True)
class EnvironmentList:
    environments: list[Environment]
    next_page_token: str


class ProjectManager:
    def __init__(
        self,
        store: ControlStore,
        auditor: Auditor,
        clock: Clock,
        invalidate_key: KeyInvalidator,
        delete_memories: MemoryScopeDeleter | None = None,
        on_change: Callable[[str, str], None] | None = None,
        ceilings: Ceilings = Ceilings(),
        holds: HoldGuard | None = None,
        retention_days: int = 30,
    ) -> None:
        self._retention_days = retention_days
        self.purges_held = 0  # purges skipped under a legal hold (a metric)
        self._store = store
        self._holds = holds
        self._ceilings = ceilings
        self._audit = auditor
        self._clock = clock
        self._invalidate_key = invalidate_key
        self._delete_memories = delete_memories
        self._on_change = on_change or (lambda org_id, project_id: None)

    # --- projects -----------------------------------------------------------------

    async def create_project(self, caller: Caller, draft: Project) -> Project:
        async with self._audit.action(caller, "project.create", target=draft.name) as ev:
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            v = Violations()
            _check_name(v, "project.name", draft.name)
            _check_project_values(v, draft, "project.", self._ceilings)
            v.raise_if_any()
            now = self._clock.now()
            project = replace(
                draft, id=new_project_id(), org_id=p.org_id, create_time=now, update_time=now
            )
            production = Environment(
                id=new_environment_id(),
                org_id=p.org_id,
                project_id=project.id,
                name="production",
                kind=EnvironmentKind.LIVE,
                create_time=now,
            )
            await self._store.create_project(project, [production])
            ev.target, ev.project_id = project.id, project.id
            return replace(project, environments=(production,))

    async def get_project(self, caller: Caller, project_id: str) -> Project:
        p = caller.admin(Scope.ADMIN_READ)
        return await self._project(p, project_id)

    async def list_projects(
        self, caller: Caller, page_size: int, page_token: str, show_deleted: bool = False
    ) -> ProjectList:
        p = caller.admin(Scope.ADMIN_READ)
        size = paging.page_size(page_size)
        fp = paging.fingerprint("projects", p.org_id, *(["deleted"] if show_deleted else []))
        after = paging.decode_keyset(page_token, fp)
        page = await self._store.list_projects(p.org_id, size, after, show_deleted)
        token = paging.encode_keyset(fp, page.next_after)
        return ProjectList(page.items, token)

    async def update_project(
        self, caller: Caller, changes: Project, paths: Sequence[str]
    ) -> Project:
        async with self._audit.action(
            caller, "project.update", target=changes.id, project_id=changes.id
        ):
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            v = Violations()
            if not paths:
                v.add(
                    "update_mask",
                    f"is required; allowed paths: {', '.join(sorted(UPDATABLE_PATHS))}",
                )
            for i, path in enumerate(paths):
                if path not in UPDATABLE_PATHS:
                    v.add(
                        f"update_mask.paths[{i}]",
                        f"{shown(path)} cannot be updated; allowed: "
                        f"{', '.join(sorted(UPDATABLE_PATHS))}",
                    )
            # Only what the mask names is checked (AIP-134): a client reads,
            # changes one field and sends the whole project back, and a value
            # it did not touch (say an override stored before the server's
            # maximum was lowered) must not fail the update.
            checked = Violations()
            _check_project_values(checked, changes, "project.", self._ceilings)
            v.items.extend(x for x in checked.items if _masked(x.field, paths))
            v.raise_if_any()
            current = await self._project(p, changes.id)
            updated = current
            for path in paths:
                updated = _apply_path(updated, changes, path)
            updated = replace(updated, update_time=self._clock.now())
            await self._store.update_project(updated)
            self._on_change(p.org_id, updated.id)
            return updated

    async def delete_project(self, caller: Caller, project_id: str, force: bool = False) -> None:
        async with self._audit.action(
            caller, "project.delete", target=project_id, project_id=project_id
        ) as ev:
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            project = await self._project(p, project_id)
            if self._holds is not None:
                await self._holds.check_scope(p.org_id, project_id, None)
            await self._soft_delete(p.org_id, project, None, force)
            ev.details["force"] = str(force).lower()

    async def undelete_project(self, caller: Caller, project_id: str) -> Project:
        async with self._audit.action(
            caller, "project.undelete", target=project_id, project_id=project_id
        ):
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            if not project_id or not await self._store.undelete(p.org_id, project_id, None):
                raise NotFound(f"deleted project {shown(project_id)} not found")
            self._on_change(p.org_id, project_id)
            await self._evict_keys(p.org_id, project_id, "")
            return await self._project(p, project_id)

    # --- environments -------------------------------------------------------------

    # --- environments -------------------------------------------------------------

    async def create_environment(
        self, caller: Caller, project_id: str, name: str, kind: EnvironmentKind | None
    ) -> Environment:
        async with self._audit.action(
            caller, "environment.create", target=name, project_id=project_id
        ) as ev:
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            v = Violations()
            _check_name(v, "environment.name", name)
            if kind is None:
                v.add("environment.kind", "is required: LIVE, TEST or DEV")
            v.raise_if_any()
            assert kind is not None
            await self._project(p, project_id)
            env = Environment(
                id=new_environment_id(),
                org_id=p.org_id,
                project_id=project_id,
                name=name,
                kind=kind,
                create_time=self._clock.now(),
            )
            await self._store.create_environment(env)
            ev.target, ev.environment_id = env.id, env.id
            return env

    async def list_environments(
        self,
        caller: Caller,
        project_id: str,
        page_size: int,
        page_token: str,
        show_deleted: bool = False,
    ) -> EnvironmentList:
        p = caller.admin(Scope.ADMIN_READ)
        size = paging.page_size(page_size)
        await self._project(p, project_id, show_deleted)
        fp = paging.fingerprint(
            "environments", p.org_id, project_id, *(["deleted"] if show_deleted else [])
        )
        after = paging.decode_keyset(page_token, fp)
        page = await self._store.list_environments(p.org_id, project_id, size, after, show_deleted)
        token = paging.encode_keyset(fp, page.next_after)
        return EnvironmentList(page.items, token)

    async def delete_environment(
        self, caller: Caller, environment_id: str, force: bool = False
    ) -> None:
        async with self._audit.action(
            caller, "environment.delete", target=environment_id, environment_id=environment_id
        ) as ev:
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            env = (
                await self._store.get_environment(p.org_id, environment_id)
                if environment_id
                else None
            )
            if env is None:
                raise NotFound(f"environment {shown(environment_id)} not found")
            ev.project_id = env.project_id
            if self._holds is not None:
                await self._holds.check_scope(p.org_id, env.project_id, env.id)
            project = await self._project(p, env.project_id)
            await self._soft_delete(p.org_id, project, env.id, force)
            ev.details["force"] = str(force).lower()

    async def undelete_environment(self, caller: Caller, environment_id: str) -> Environment:
        async with self._audit.action(
            caller, "environment.undelete", target=environment_id, environment_id=environment_id
        ) as ev:
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            env = (
                await self._store.get_environment(p.org_id, environment_id, show_deleted=True)
                if environment_id
                else None
            )
            if env is None or env.delete_time is None:
                raise NotFound(f"deleted environment {shown(environment_id)} not found")
            ev.project_id = env.project_id
            if await self._store.get_project(p.org_id, env.project_id) is None:
                raise FailedPrecondition(
                    f"the project {shown(env.project_id)} of this environment is deleted; "
                    "undelete the project first (UndeleteProject)",
                    reason="PROJECT_DELETED",
                )
            if not await self._store.undelete(p.org_id, env.project_id, env.id):
                raise NotFound(f"deleted environment {shown(environment_id)} not found")
            self._on_change(p.org_id, env.project_id)
            await self._evict_keys(p.org_id, env.project_id, env.id)
            return replace(env, delete_time=None, purge_time=None)

    # --- retention ------------------------------------------------------------------

    async def purge_due(self) -> int:
        """Purges the deleted projects and environments whose window has
        passed (the sweeper); answers how many were purged. One held by a
        legal hold is skipped, counted in `purges_held` and logged."""
        purged = 0
        for org_id, project_id, environment_id in await self._store.due_purges(
            self._clock.now(), 100
        ):
            if await self._purge(org_id, project_id, environment_id):
                purged += 1
        return purged

    async def _soft_delete(
        self, org_id: str, project: Project, environment_id: str | None, force: bool
    ) -> None:
        now = self._clock.now()
        days = project.settings.deletion_retention_days
        window = timedelta(days=self._retention_days if days is None else days)
        if force:  # due now: a purge cut short (kill -9) is finished by the next sweep
            window = timedelta(0)
        if not await self._store.mark_deleted(
            org_id, project.id, environment_id, now, now + window
        ):
            what = "environment" if environment_id else "project"
            raise NotFound(f"{what} {shown(environment_id or project.id)} not found")
        self._on_change(org_id, project.id)
        # The keys stop at once: authentication reads the deleted scope anew.
        await self._evict_keys(org_id, project.id, environment_id or "")
        if window <= timedelta(0):
            await self._purge(org_id, project.id, environment_id)

    async def _purge(self, org_id: str, project_id: str, environment_id: str | None) -> bool:
        """Erases a deleted project or environment: keys, memories, knowledge
        chunks, export files, then its rows; audited. False (nothing erased)
        while a legal hold covers it."""
        if self._holds is not None:
            try:
                await self._holds.check_scope(org_id, project_id, environment_id)
            except FailedPrecondition:
                self.purges_held += 1
                log.warning(
                    "purge of %s %s waits for a legal hold",
                    "environment" if environment_id else "project",
                    environment_id or project_id,
                )
                return False
        key_ids = await self._key_ids(org_id, project_id, environment_id or "")
        start = self._clock.now()
        # The vectors and files first, the rows last: a purge cut short is
        # still due, and the next sweep finishes it (every step is idempotent).
        counts: dict[str, int] = {}
        if self._delete_memories is not None:
            counts.update(await self._delete_memories(org_id, project_id, environment_id) or {})
        if environment_id is None:
            await self._store.delete_project(org_id, project_id)
        else:
            await self._store.delete_environment(org_id, environment_id)
        self._on_change(org_id, project_id)
        for key_id in key_ids:
            await self._invalidate_key(key_id)
        await self._audit.record_server_action(
            org_id,
            "environment.purge" if environment_id else "project.purge",
            target=environment_id or project_id,
            project_id=project_id,
            environment_id=environment_id or "",
            details=_receipt(
                org_id, project_id, environment_id, len(key_ids), counts, start, self._clock.now()
            ),
        )
        return True

    # --- helpers --------------------------------------------------------------------

    async def _project(self, p: Principal, project_id: str, show_deleted: bool = False) -> Project:
        project = (
            await self._store.get_project(p.org_id, project_id, show_deleted)
            if project_id
            else None
        )
        if project is None:
            raise NotFound(f"project {shown(project_id)} not found")
        return project

    async def _evict_keys(self, org_id: str, project_id: str, environment_id: str) -> None:
        for key_id in await self._key_ids(org_id, project_id, environment_id):
            await self._invalidate_key(key_id)

    async def _key_ids(self, org_id: str, project_id: str, environment_id: str) -> list[str]:
        out: list[str] = []
        after = None
        while True:
            page = await self._store.list_keys(
                KeyQuery(org_id, project_id, environment_id, show_revoked=True), 1000, after
            )
            out.extend(k.id for k in page.items)
            if page.next_after is None:
                return out
            after = page.next_after


def _receipt(
    org_id: str,
    project_id: str,
    environment_id: str | None,
    keys: int,
    counts: Mapping[str, int],
    start: datetime,
    finish: datetime,
) -> dict[str, str]:
    """The receipt of a purge (its audit event's details): what was erased
    per store, when, whether a second pass found nothing left, and a
    SHA-256 digest over the canonical JSON of all of it (sorted keys, no
    spaces; the digest itself left out)."""
    left = int(counts.get("left", 0))
    out = {
        "scope": "environment" if environment_id else "project",
        "org_id": org_id,
        "project_id": project_id,
        "environment_id": environment_id or "",
        "keys": str(keys),
        **{k: str(v) for k, v in sorted(counts.items()) if k != "left"},
        "verified": "true" if left == 0 else f"false ({left} left)",
        "start_time": start.isoformat(),
        "finish_time": finish.isoformat(),
    }
    canonical = json.dumps(out, sort_keys=True, separators=(",", ":"))
    out["digest"] = hashlib.sha256(canonical.encode()).hexdigest()
    return out


def _check_name(v: Violations, field: str, name: str) -> None:
    if not name:
        v.add(field, "is required")
    elif not NAME_RE.match(name):
        v.add(field, NAME_RULE)


def _masked(field: str, paths: Sequence[str]) -> bool:
    """Whether the violation of `field` (`project.<path>`) is of a field that
    the update mask names (itself, or its group)."""
    name = field.removeprefix("project.")
    return any(name == path or name.startswith(path + ".") for path in paths)


def _check_project_values(v: Violations, project: Project, prefix: str, ceilings: Ceilings) -> None:
    if len(project.display_name) > MAX_DISPLAY_NAME:
        v.add(f"{prefix}display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
    elif has_unprintable(project.display_name):
        v.add(f"{prefix}display_name", UNPRINTABLE_RULE)
    s = project.settings
    if not (0.0 <= s.dedupe_threshold <= 1.0) or math.isnan(s.dedupe_threshold):
        v.add(f"{prefix}settings.dedupe_threshold", "must be between 0 and 1")
    if s.default_ttl is not None and not (timedelta(0) < s.default_ttl <= MAX_TTL):
        v.add(f"{prefix}settings.default_ttl", "must be positive and at most 3650 days")
    days = s.deletion_retention_days
    if days is not None and not (0 <= days <= MAX_DELETION_RETENTION_DAYS):
        v.add(
            f"{prefix}settings.deletion_retention_days",
            f"must be between 0 (erase at once) and {MAX_DELETION_RETENTION_DAYS} days",
        )
    for group in ("rate_limits", "quotas"):
        values = getattr(project, group)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            ceiling = ceilings.of(group, f.name)
            if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
                v.add(f"{prefix}{group}.{f.name}", "must be 0 (server default) or positive")
            elif value > ceiling:
                v.add(
                    f"{prefix}{group}.{f.name}",
                    f"must be at most {_number(ceiling)}, this server's maximum",
                )


def _number(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _apply_path(current: Project, changes: Project, path: str) -> Project:
    if "." not in path:
        return replace(current, **{path: getattr(changes, path)})
    group, field = path.split(".", 1)
    merged = replace(getattr(current, group), **{field: getattr(getattr(changes, group), field)})
    return replace(current, **{group: merged})
