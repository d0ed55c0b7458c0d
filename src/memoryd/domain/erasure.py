"""EraseEndUser: every place memoryd keeps one end user's data, erased, then
proved empty, with a receipt.

An erasure is an operation (kind `erase_end_user`) run by the job runner
like AddMessages. Each store that keeps end-user data is an `Erasable`
(built in `memoryd.app`, one adapter per store): the job asks each in turn
to count, then erase, what it holds of the tenant's end user, checkpointing
each store's counts before it erases and its end after, so a re-run after a
crash (kill -9) skips the finished stores and neither loses nor double
counts. Then the vector engine vacuums deleted points when it can, every
store is asked what is left (must be 0), and the receipt is stored as the
operation's result and written to the audit log (counts and a digest, never
content).

The receipt's digest is SHA-256 over the canonical JSON (`canonical`) of
its fields; the end user appears only as `end_user_hash`, the SHA-256 of
"org/project/environment/end user", so the receipt and its audit event do
not keep the erased identifier in clear.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from memoryd.domain.clock import Clock
from memoryd.domain.control import ControlStore
from memoryd.domain.errors import InvalidArgument, NotFound
from memoryd.domain.keys import shown
from memoryd.domain.operations import (
    JobControl,
    JobOutcome,
    Operation,
    OperationStore,
    OpState,
    new_operation_id,
)
from memoryd.domain.tenancy import Caller, KeyKind, Scope, Tenant
from memoryd.domain.watch.hub import Window

KIND = "erase_end_user"

# As the x-end-user-id header allows.
MAX_END_USER_CHARS = 128

# The counts of a receipt, in order (a store reports the ones it holds).
COUNTS = (
    "memories",
    "revisions",
    "chunks",
    "conversation_messages",
    "operations",
    "change_events",
    "webhook_deliveries",
    "cache_entries",
    "documents",
    "export_files",
)


class Erasable(Protocol):
    """One store's share of an end user's data.

    Every call takes a tenant naming one end user (`Tenant.end_user_id`
    set) and touches only that end user of that environment. `erase` is
    idempotent: a second call erases nothing and answers zeros.
    Raises `Unavailable` when the store does not answer (the job is tried
    again later from its checkpoint)."""

    @property
    def name(self) -> str:
        """The store's name in the checkpoint (stable across versions)."""
        ...

    async def count(self, tenant: Tenant) -> Mapping[str, int]:
        """What the store holds of the end user, by receipt count name."""
        ...

    async def erase(self, tenant: Tenant) -> Mapping[str, int]:
        """Erases it all; answers what it erased, by receipt count name."""
        ...

    async def remaining(self, tenant: Tenant) -> int:
        """How many items of the end user are left (verification)."""
        ...


# Runs the engine's physical removal of deleted points: True when it ran,
# False when it had nothing to do.
Vacuum = Callable[[], Awaitable[bool]]


class HoldCheck(Protocol):
    """Refuses (FailedPrecondition, LEGAL_HOLD) when a legal hold covers
    the tenant's end user or its environment (`memoryd.domain.holds`)."""

    async def check(self, tenant: Tenant, what: str = "the erasure") -> None: ...


class NoHolds:
    async def check(self, tenant: Tenant, what: str = "the erasure") -> None:
        return None


def end_user_hash(tenant: Tenant) -> str:
    """The receipt's name of the end user: SHA-256 of
    org/project/environment/end user, hex."""
    raw = f"{tenant.org_id}/{tenant.project_id}/{tenant.environment_id}/{tenant.end_user_id}"
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class Receipt:
    """What an erasure did, as the operation's response and audit event."""

    org_id: str
    project_id: str
    environment_id: str
    end_user_hash: str
    counts: Mapping[str, int]
    start_time: datetime
    finish_time: datetime
    verified: bool
    # when the engine's vacuum ran; None: it did not run
    vacuum_time: datetime | None
    # what the engine offers: "ran", "nothing to vacuum", or why not
    vacuum: str
    digest: str = ""

    def canonical(self) -> bytes:
        """The digested form: compact JSON, keys sorted, times RFC 3339 UTC
        with microseconds, every count named in COUNTS present."""
        body = {
            "org_id": self.org_id,
            "project_id": self.project_id,
            "environment_id": self.environment_id,
            "end_user_hash": self.end_user_hash,
            "counts": {k: int(self.counts.get(k, 0)) for k in COUNTS},
            "start_time": _iso(self.start_time),
            "finish_time": _iso(self.finish_time),
            "verified": self.verified,
            "vacuum_time": _iso(self.vacuum_time) if self.vacuum_time else "",
            "vacuum": self.vacuum,
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    def sealed(self) -> Receipt:
        return Receipt(**{**self.__dict__, "digest": hashlib.sha256(self.canonical()).hexdigest()})

    def to_json(self) -> str:
        data = json.loads(self.canonical())
        data["digest"] = self.digest
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Receipt:
        d = json.loads(text)
        return Receipt(
            org_id=d["org_id"],
            project_id=d["project_id"],
            environment_id=d["environment_id"],
            end_user_hash=d["end_user_hash"],
            counts=dict(d["counts"]),
            start_time=datetime.fromisoformat(d["start_time"]),
            finish_time=datetime.fromisoformat(d["finish_time"]),
            verified=bool(d["verified"]),
            vacuum_time=datetime.fromisoformat(d["vacuum_time"]) if d["vacuum_time"] else None,
            vacuum=d["vacuum"],
            digest=d["digest"],
        )


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="microseconds")


class Auditing(Protocol):
    async def record_server_action(
        self,
        org_id: str,
        action: str,
        *,
        target: str = "",
        project_id: str = "",
        environment_id: str = "",
        details: dict[str, str] | None = None,
    ) -> None: ...


class ErasureService:
    """Accepts EraseEndUser calls: checks who may erase whom, refuses under
    a legal hold, stores the operation."""

    def __init__(
        self,
        ops: OperationStore,
        control: ControlStore,
        clock: Clock,
        holds: HoldCheck,
        on_stored: Callable[[], None] = lambda: None,
    ) -> None:
        self._ops = ops
        self._control = control
        self._clock = clock
        self._holds = holds
        self._on_stored = on_stored

    async def erase(
        self,
        caller: Caller,
        end_user_id: str,
        project_id: str,
        environment_id: str,
        request_id: str,
    ) -> Operation:
        """A data key erases the end user of its `x-end-user-id` (memory:delete);
        an org key (admin:write) names the project, environment and end user."""
        p = caller.principal
        if p.kind is KeyKind.ORG:
            caller.admin(Scope.ADMIN_WRITE)
            tenant = await self._named(p.org_id, project_id, environment_id, end_user_id)
        else:
            p.require(Scope.MEMORY_DELETE)
            tenant = p.tenant()
            _check_data_key(tenant, end_user_id, project_id, environment_id)
        if len(request_id) > 100:
            raise InvalidArgument.field("request_id", "is at most 100 characters")
        await self._holds.check(tenant)
        now = self._clock.now()
        op = Operation(
            id=new_operation_id(),
            kind=KIND,
            tenant=tenant,
            key_id=p.key_id,
            scopes=p.scopes,
            state=OpState.PENDING,
            payload="{}",
            create_time=now,
            update_time=now,
            request_id=request_id,
            info={"progress_percent": 0},
        )
        stored = await self._ops.create_operation(op, [])
        if stored.id == op.id:
            self._on_stored()
        return stored

    async def _named(
        self, org_id: str, project_id: str, environment_id: str, end_user_id: str
    ) -> Tenant:
        missing = [
            f for f, v in (("project_id", project_id), ("environment_id", environment_id)) if not v
        ]
        if missing or not end_user_id:
            raise InvalidArgument.field(
                missing[0] if missing else "end_user_id",
                "is required with an org key: name the project, environment and end user",
            )
        if len(end_user_id) > MAX_END_USER_CHARS or not end_user_id.isprintable():
            raise InvalidArgument.field(
                "end_user_id", f"must be 1 to {MAX_END_USER_CHARS} printable characters"
            )
        env = await self._control.get_environment(org_id, environment_id)
        if env is None or env.project_id != project_id:
            raise NotFound(
                f"environment {shown(environment_id)} of project {shown(project_id)} not found"
            )
        return Tenant(org_id, project_id, environment_id, end_user_id)


def _check_data_key(tenant: Tenant, end_user_id: str, project_id: str, environment_id: str) -> None:
    if not tenant.end_user_id:
        raise InvalidArgument.field(
            "end_user_id",
            "a data key erases the end user of its x-end-user-id header; send the header",
        )
    if end_user_id and end_user_id != tenant.end_user_id:
        raise InvalidArgument.field(
            "end_user_id", "must be empty or equal to the x-end-user-id header"
        )
    if (project_id and project_id != tenant.project_id) or (
        environment_id and environment_id != tenant.environment_id
    ):
        raise InvalidArgument.field(
            "environment_id", "a data key erases in its own environment only; leave it empty"
        )


@dataclass
class _Progress:
    """The checkpoint in the operation's info."""

    start_time: str = ""
    # per store: {"counted": {...}} before its erase, plus "done": true after
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)

    def info(self, total: int) -> dict[str, Any]:
        done = sum(1 for s in self.stores.values() if s.get("done"))
        return {
            "start_time": self.start_time,
            "stores": self.stores,
            "progress_percent": int(90 * done / total) if total else 90,
        }


class EraseJob:
    """Runs erase_end_user operations (`JobHandler`)."""

    def __init__(
        self,
        stores: Sequence[Erasable],
        clock: Clock,
        holds: HoldCheck,
        auditor: Auditing,
        vacuum: Vacuum | None = None,
        no_vacuum_reason: str = "",
    ) -> None:
        self._stores = list(stores)
        self._clock = clock
        self._holds = holds
        self._audit = auditor
        self._vacuum = vacuum
        self._no_vacuum = no_vacuum_reason

    async def run(self, job: JobControl) -> JobOutcome:
        op = job.operation
        tenant = op.tenant
        if not tenant.end_user_id:  # never erase an environment's shared data this way
            raise InvalidArgument.field("end_user_id", "an erasure names one end user")
        # re-checked here: a hold set after the call was accepted still wins
        await self._holds.check(tenant)
        saved = op.info.get("stores")
        progress = _Progress(
            start_time=str(op.info.get("start_time") or self._clock.now().isoformat()),
            stores={k: dict(v) for k, v in saved.items()} if isinstance(saved, dict) else {},
        )
        n = len(self._stores)
        for store in self._stores:
            state = progress.stores.setdefault(store.name, {})
            if state.get("done"):
                continue
            if "counted" not in state:
                state["counted"] = dict(await store.count(tenant))
                await job.checkpoint(progress.info(n), "")
            erased = await store.erase(tenant)
            # a re-run after a partial erase finds less than it counted first;
            # what arrived meanwhile is more than counted: the larger is what went
            state["counts"] = {
                k: max(int(state["counted"].get(k, 0)), int(erased.get(k, 0)))
                for k in set(state["counted"]) | set(erased)
            }
            state["done"] = True
            await job.checkpoint(progress.info(n), "")
        # a write racing the erasure (a job of the end user that was already
        # running) is caught here and erased in a second pass
        left = {s.name: await s.remaining(tenant) for s in self._stores}
        for store in self._stores:
            if left[store.name]:
                counts = progress.stores[store.name]["counts"]
                for k, v in (await store.erase(tenant)).items():
                    counts[k] = int(counts.get(k, 0)) + int(v)
                left[store.name] = await store.remaining(tenant)
        await job.checkpoint(progress.info(n), "")
        vacuum_time, vacuum = await self._run_vacuum()
        counts = {k: 0 for k in COUNTS}
        for state in progress.stores.values():
            for k, v in state.get("counts", {}).items():
                counts[k] = counts.get(k, 0) + int(v)
        receipt = Receipt(
            org_id=tenant.org_id,
            project_id=tenant.project_id,
            environment_id=tenant.environment_id,
            end_user_hash=end_user_hash(tenant),
            counts=counts,
            start_time=datetime.fromisoformat(progress.start_time),
            finish_time=self._clock.now(),
            verified=not any(left.values()),
            vacuum_time=vacuum_time,
            vacuum=vacuum,
        ).sealed()
        details = {k: str(v) for k, v in counts.items()}
        details |= {
            "verified": str(receipt.verified).lower(),
            "digest": receipt.digest,
            "operation": op.name,
            "requested_by": op.key_id,
        }
        if not receipt.verified:
            details["left"] = ",".join(f"{k}={v}" for k, v in left.items() if v)
        await self._audit.record_server_action(
            tenant.org_id,
            "end_user.erase",
            target=receipt.end_user_hash,
            project_id=tenant.project_id,
            environment_id=tenant.environment_id,
            details=details,
        )
        info = progress.info(n) | {"progress_percent": 100, "left": left}
        return JobOutcome(OpState.SUCCEEDED, info, receipt.to_json())

    async def _run_vacuum(self) -> tuple[datetime | None, str]:
        if self._vacuum is None:
            return None, self._no_vacuum or "the vector engine offers no vacuum call"
        ran = await self._vacuum()
        return self._clock.now(), "ran" if ran else "ran (nothing to vacuum)"


class WatchWindow:
    """This process's window of recent change events (WatchMemories reads
    it before the log): its copies of the end user's events. Other
    replicas' windows drop them as newer events push them out."""

    name = "watch_window"

    def __init__(self, window: Window) -> None:
        self._window = window

    async def count(self, tenant: Tenant) -> Mapping[str, int]:
        return {"cache_entries": self._window.forget(tenant, count_only=True)}

    async def erase(self, tenant: Tenant) -> Mapping[str, int]:
        return {"cache_entries": self._window.forget(tenant)}

    async def remaining(self, tenant: Tenant) -> int:
        return self._window.forget(tenant, count_only=True)
