"""Idempotent creates: a request's `request_id` (AIP-155) through the
domain's `Idempotency`, keyed by the call's tenant, end user and method; the
response is stored as its serialized proto and parsed again on a replay.

An empty `request_id` is today's call: no key, no SQL.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from memoryd.api.call import current_call
from memoryd.api.steps import OFFLOAD_DECODE_BYTES
from memoryd.domain.idempotency import Idempotency, IdempotencyKey, validate_request_id
from memoryd.domain.tenancy import Scope
from memoryd.v1 import memory_pb2

R = TypeVar("R", bound=Message)
Request = memory_pb2.CreateMemoryRequest | memory_pb2.BatchCreateMemoriesRequest

# A waiter gives up this long before the call's deadline, so that its
# REQUEST_IN_PROGRESS answer reaches the client instead of DEADLINE_EXCEEDED.
_DEADLINE_MARGIN_S = 0.2


def _fingerprint(request: Message) -> bytes:
    # deterministic: map entries (metadata) in one order, whatever the client sent
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


class Idempotent:
    """Runs a create's work once per `request_id` (see the module)."""

    def __init__(self, idempotency: Idempotency) -> None:
        self._idempotency = idempotency

    async def run(
        self,
        request: Request,
        context: Any,
        response_type: type[R],
        work: Callable[[IdempotencyKey | None], Awaitable[R]],
    ) -> R:
        """`work(key)`'s response, or the stored response of the first call
        with this request's `request_id` (`key` is None without one: the
        work then runs as it is). The key is read only after the caller may
        create memories (a data key holding memory:add) and the id is valid."""
        if not request.request_id:
            return await work(None)
        call = current_call()
        principal = call.caller().principal
        principal.tenant()  # a data key
        principal.require(Scope.MEMORY_ADD)
        validate_request_id(request.request_id)
        key = IdempotencyKey(
            org_id=principal.org_id,
            project_id=principal.project_id,
            environment_id=principal.environment_id,
            end_user_id=principal.end_user_id,
            method=call.method,
            request_id=request.request_id,
        )
        if call.request_bytes > OFFLOAD_DECODE_BYTES:
            fingerprint = await asyncio.to_thread(_fingerprint, request)
        else:
            fingerprint = _fingerprint(request)
        ran: list[R] = []

        async def serialized() -> bytes:
            response = await work(key)
            ran.append(response)
            return response.SerializeToString()

        remaining = context.time_remaining()
        raw = await self._idempotency.run(
            key,
            fingerprint,
            serialized,
            max_wait_s=None if remaining is None else max(0.0, remaining - _DEADLINE_MARGIN_S),
        )
        # this call's own response as it is; a replay's parsed from the store
        return ran[0] if ran else response_type.FromString(raw)
