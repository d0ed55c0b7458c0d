"""Long-running operations: what a job is, as stored, and the store's port.

An operation is accepted by a call (AddMessages today; ingest and erasure
later), stored durably in the control store *before* the call answers, and
run by a job runner in any server process (`memoryd.jobs`). It belongs to
one tenant (organization, project, environment, and the end user of the
call, "" when none) from its first line: every read of the store takes the
tenant and confines itself to it, so another tenant's operation is
NOT_FOUND exactly like a missing one.

Its `payload` and `result` are JSON text the operation's kind owns
(`memoryd.domain.conversations` for add_messages): the store and the runner
never look inside.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from memoryd.domain.tenancy import Tenant

OPERATION_NAME_PREFIX = "operations/"


class OpState(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def done(self) -> bool:
        return self in (OpState.SUCCEEDED, OpState.FAILED, OpState.CANCELLED)


@dataclass(frozen=True)
class OpError:
    """Why an operation failed: the gRPC code name, the reason, a message
    for people (never a secret)."""

    code: str
    reason: str
    message: str


@dataclass(frozen=True)
class Operation:
    """One operation as stored.

    `key_id` and `scopes` are those of the key that asked for it: the job
    acts with them (a decision the key could not make by hand is
    downgraded). `info` is the kind's progress and accounting (JSON object:
    progress, tokens, extractor, prompt versions...)."""

    id: str
    kind: str
    tenant: Tenant
    key_id: str
    scopes: frozenset[str]
    state: OpState
    payload: str
    create_time: datetime
    update_time: datetime
    request_id: str = ""
    fingerprint: str = ""
    thread_id: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)
    result: str = ""
    error: OpError | None = None
    attempts: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    cancel_requested: bool = False

    @property
    def name(self) -> str:
        return OPERATION_NAME_PREFIX + self.id

    @property
    def done(self) -> bool:
        return self.state.done


@dataclass(frozen=True)
class StoredMessage:
    """A message of a conversation, kept with its operation (the thread's
    context for later operations, and what an erasure must reach)."""

    index: int
    role: str
    content: str
    name: str
    create_time: datetime


@dataclass(frozen=True)
class Claim:
    """A job a runner took: the operation, and the lease it holds on it."""

    operation: Operation
    owner: str
    lease_until: datetime


@dataclass(frozen=True)
class OperationQuery:
    """Filters of ListOperations: done or not, kind."""

    done: bool | None = None
    kind: str = ""


def new_operation_id() -> str:
    """A random, URL-safe operation id (128 bits)."""
    return secrets.token_hex(16)


class OperationStore(Protocol):
    """Operations and their messages in the control store.

    Reads (`get`, `list`) take the tenant of the call and see only its
    operations: the same organization, project and environment, and the
    end users `Tenant.sees` allows. The runner's calls (`claim`,
    `heartbeat`, `finish`, ...) work by operation id and lease owner.
    Raises `Unavailable` when the database does not answer.
    """

    async def create_operation(self, op: Operation, messages: Sequence[StoredMessage]) -> Operation:
        """Stores `op` and its messages in one transaction. When `op` has a
        request id already used by an operation of the same tenant (end
        user included) and kind, stores nothing and answers that one."""
        ...

    async def release_request_id(self, tenant: Tenant, kind: str, request_id: str) -> None:
        """Frees `request_id` of the tenant's operation of `kind` (its
        idempotency window is over): a new operation may take it."""
        ...

    async def get_operation(self, tenant: Tenant, op_id: str) -> Operation | None: ...

    async def list_operations(
        self,
        tenant: Tenant,
        query: OperationQuery,
        limit: int,
        before: tuple[datetime, str] | None,
    ) -> list[Operation]:
        """Newest first, strictly older than `before` (create_time, id)."""
        ...

    async def delete_operation(self, tenant: Tenant, op_id: str) -> bool: ...

    async def request_cancel(self, tenant: Tenant, op_id: str, now: datetime) -> Operation | None:
        """Marks the operation for cancelling; a PENDING one is CANCELLED at
        once. Answers it as it is then (None when the tenant has none)."""
        ...

    async def messages(self, op_id: str) -> list[StoredMessage]: ...

    async def thread_messages(
        self, tenant: Tenant, thread_id: str, before: datetime, exclude_op: str, limit: int
    ) -> list[StoredMessage]:
        """The newest `limit` messages of the tenant's thread from other
        operations created before `before`, oldest first."""
        ...

    # --- the runner ---------------------------------------------------------

    async def claim(
        self,
        owner: str,
        now: datetime,
        lease_s: float,
        skip_projects: Sequence[str],
        kinds: Sequence[str],
    ) -> Claim | None:
        """Takes the oldest runnable operation (PENDING and due, or RUNNING
        with an expired lease) of a project not in `skip_projects`, under a
        lease for `owner`, counting an attempt. On PostgreSQL with
        `FOR UPDATE SKIP LOCKED`, so replicas never take the same one."""
        ...

    async def heartbeat(self, claim: Claim, now: datetime, lease_s: float) -> Claim | None:
        """Extends the lease; None when it was lost (taken over, or the
        operation is gone). Also reports a cancel request through the
        returned operation."""
        ...

    async def save_progress(self, claim: Claim, info: Mapping[str, Any], result: str) -> bool:
        """Checkpoints `info` and `result` while running (False: lease lost)."""
        ...

    async def finish(
        self,
        claim: Claim,
        state: OpState,
        now: datetime,
        info: Mapping[str, Any],
        result: str = "",
        error: OpError | None = None,
    ) -> bool:
        """Ends the operation (False: the lease was lost, nothing written)."""
        ...

    async def retry_later(
        self, claim: Claim, not_before: datetime, now: datetime, error: OpError
    ) -> bool:
        """Gives the job back as PENDING, due at `not_before`."""
        ...

    async def sweep_operations(self, finished_before: datetime, limit: int) -> int:
        """Deletes up to `limit` operations that finished before the time,
        with their messages; answers how many."""
        ...


# --- running an operation ------------------------------------------------------------


@dataclass
class JobOutcome:
    """How a job ended an operation."""

    state: OpState
    info: Mapping[str, Any]
    result: str = ""
    error: OpError | None = None


class JobControl(Protocol):
    """What a job sees of the runner that runs it."""

    @property
    def operation(self) -> Operation:
        """The operation, as claimed (its `result` holds the last checkpoint)."""
        ...

    async def checkpoint(self, info: Mapping[str, Any], result: str) -> None:
        """Saves progress; a re-run after a crash starts from it."""
        ...


class JobHandler(Protocol):
    """Runs the operations of one kind. Raises `Unavailable` to be tried
    again later, any other `DomainError` to fail the operation."""

    async def run(self, job: JobControl) -> JobOutcome: ...
