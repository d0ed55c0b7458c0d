"""AddMessages: checks a conversation and stores it as an operation, durably,
before the call answers; the job (`job.AddMessagesJob`) does the rest.

What is refused at once (nothing stored): a key without memory:add, a bad
message or field, a request id reused for another request, a project over
its daily model-token quota (only for operations that would use the
model). What is accepted is never lost: the operation and its messages are
in the control store in one transaction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime, timedelta

from memoryd.domain.clock import Clock
from memoryd.domain.control import Project
from memoryd.domain.conversations.model import (
    KIND,
    MAX_MESSAGES,
    MAX_REQUEST_ID_CHARS,
    ROLES,
    AddMessages,
    TokenLedger,
)
from memoryd.domain.errors import (
    InvalidArgument,
    QuotaViolation,
    ResourceExhausted,
    Violations,
)
from memoryd.domain.memories import MemoryService
from memoryd.domain.memories.validation import check_fields, check_metadata
from memoryd.domain.operations import (
    Operation,
    OperationStore,
    OpState,
    StoredMessage,
    new_operation_id,
)
from memoryd.domain.tenancy import Caller, Scope, Tenant

# A retry with the same request id within this window answers the first
# operation; after it, the id may name a new one.
IDEMPOTENCY_WINDOW = timedelta(hours=24)


class ConversationService:
    def __init__(
        self,
        operations: OperationStore,
        memories: MemoryService,
        clock: Clock,
        *,
        infer_uses_model: bool,
        ledger: TokenLedger | None = None,
        default_tokens_per_day: int = 0,
        on_stored: Callable[[], None] = lambda: None,
    ) -> None:
        """`infer_uses_model`: whether infer=true operations call a model
        (then the daily token quota applies to them); `on_stored` runs after
        an operation is stored (the local job runner looks for work)."""
        self._ops = operations
        self._memories = memories
        self._clock = clock
        self._infer_uses_model = infer_uses_model
        self._ledger = ledger
        self._default_tokens = default_tokens_per_day
        self._on_stored = on_stored

    async def add_messages(self, caller: Caller, request: AddMessages) -> Operation:
        tenant, project = await self._memories.authorize(caller, Scope.MEMORY_ADD)
        self._validate(request, project)
        if request.infer and self._infer_uses_model:
            await self._check_token_quota(tenant, project)
        now = self._clock.now()
        op = Operation(
            id=new_operation_id(),
            kind=KIND,
            tenant=tenant,
            key_id=caller.principal.key_id,
            scopes=caller.principal.scopes,
            state=OpState.PENDING,
            payload=_json(request.params()),
            create_time=now,
            update_time=now,
            request_id=request.request_id,
            fingerprint=request.fingerprint(),
            thread_id=request.thread_id,
            info={"message_count": len(request.messages), "progress_percent": 0},
        )
        messages = [
            StoredMessage(i, m.role, m.content, m.name, m.create_time or now)
            for i, m in enumerate(request.messages)
        ]
        stored = await self._ops.create_operation(op, messages)
        if stored.id != op.id:
            stored = await self._retried(op, stored, messages)
        if stored.id == op.id:
            self._on_stored()
        return stored

    async def _retried(
        self, op: Operation, first: Operation, messages: list[StoredMessage]
    ) -> Operation:
        """The operation a reused request id names: the first one, for a
        retry of the same request within the window; a new one once the
        window is over."""
        if first.create_time + IDEMPOTENCY_WINDOW <= op.create_time:
            await self._ops.release_request_id(op.tenant, KIND, op.request_id)
            return await self._ops.create_operation(op, messages)
        if first.fingerprint != op.fingerprint:
            raise InvalidArgument.field(
                "request_id",
                "was already used for a different AddMessages request; "
                "use a new request_id for a new request",
            )
        return first

    def _validate(self, request: AddMessages, project: Project) -> None:
        v = Violations()
        n = len(request.messages)
        if not 1 <= n <= MAX_MESSAGES:
            v.add("messages", f"holds {n} messages; 1 to {MAX_MESSAGES} per call")
        limits = self._memories.limits(project)
        for i, m in enumerate(request.messages):
            if m.role not in ROLES:
                v.add(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}")
            if not m.content.strip():
                v.add(f"messages[{i}].content", "is required and must not be blank")
            elif (size := len(m.content.encode())) > limits.content_bytes:
                v.add(
                    f"messages[{i}].content",
                    f"is {size} bytes; this project allows {limits.content_bytes} per memory",
                )
            if len(m.name) > 200:
                v.add(f"messages[{i}].name", "is longer than 200 characters")
        check_fields(v, "", request.agent_id, request.thread_id, request.source, request.tags)
        check_metadata(v, "metadata", request.metadata)
        if len(request.request_id) > MAX_REQUEST_ID_CHARS:
            v.add("request_id", f"is longer than {MAX_REQUEST_ID_CHARS} characters")
        elif request.request_id and not request.request_id.isprintable():
            v.add("request_id", "must be printable characters")
        v.raise_if_any("the AddMessages request has invalid fields")
        limits.check("", request.metadata)

    async def _check_token_quota(self, tenant: Tenant, project: Project) -> None:
        """Refuses a new operation while the project has used its model
        tokens of the day (UTC); running operations finish."""
        quota = project.quotas.llm_tokens_per_day or self._default_tokens
        if quota <= 0 or self._ledger is None:
            return
        today = self._clock.now().date()
        used = await self._ledger.project_tokens(tenant.org_id, tenant.project_id, today)
        if used >= quota:
            raise ResourceExhausted(
                f"this project used {used} model tokens today (UTC), its quota is {quota}; "
                "AddMessages with infer=true is refused until tomorrow (UTC) or a higher quota",
                [QuotaViolation("project.llm_tokens_per_day", f"llm_tokens_per_day={quota}")],
                reason="LLM_TOKEN_QUOTA_EXCEEDED",
                retry_after=_seconds_to_midnight(self._clock.now()),
            )


def _seconds_to_midnight(now: datetime) -> float:
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return float(math.ceil((tomorrow - now).total_seconds()))


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
