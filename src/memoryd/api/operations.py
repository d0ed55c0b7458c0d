"""google.longrunning.Operations for memoryd's own operations, and the
protobuf form of an operation.

An operation's `metadata` and `response` are packed per kind (add_messages:
`AddMessagesMetadata`, `AddMessagesResponse`); a failed operation carries
the `google.rpc.Status` of its error (code, message, ErrorInfo reason), a
cancelled one the status CANCELLED (AIP-151).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.longrunning import operations_grpc_pb2, operations_pb2
from google.protobuf import any_pb2, empty_pb2, message_factory
from google.rpc import code_pb2, error_details_pb2, status_pb2

from memoryd.api import convert
from memoryd.api.call import current_caller
from memoryd.api.errors import ERROR_DOMAIN, MAX_MESSAGE, clip
from memoryd.domain.clock import Clock
from memoryd.domain.operation_service import MAX_WAIT_S, OperationService
from memoryd.domain.operations import Operation, OpState

# The parts of an operation that depend on its kind: (metadata, response).
Describe = Callable[[Operation], Awaitable[tuple[Any, Any | None]]]

_SERVICE = operations_pb2.DESCRIPTOR.services_by_name["Operations"]
SERVICE_NAME = _SERVICE.full_name


def add_to_server(servicer: OperationsServicer, server: Any) -> None:
    """Registers `servicer` the way this grpcio's generated code does
    (`add_registered_method_handlers`), which the call pipeline captures;
    googleapis-common-protos' generated function still registers a generic
    handler only."""
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, m.name),
            request_deserializer=message_factory.GetMessageClass(m.input_type).FromString,
            response_serializer=message_factory.GetMessageClass(m.output_type).SerializeToString,
        )
        for m in _SERVICE.methods
    }
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class OperationsServicer(operations_grpc_pb2.OperationsServicer):  # type: ignore[misc]
    def __init__(
        self, operations: OperationService, describe: Mapping[str, Describe], clock: Clock
    ) -> None:
        self._ops = operations
        self._describe = dict(describe)
        self._clock = clock

    async def to_pb(self, op: Operation) -> operations_pb2.Operation:
        return await operation_pb(op, self._describe[op.kind])

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Any
    ) -> operations_pb2.Operation:
        return await self.to_pb(await self._ops.get(current_caller(), request.name))

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Any
    ) -> operations_pb2.ListOperationsResponse:
        page = await self._ops.list(
            current_caller(), request.filter, request.page_size, request.page_token
        )
        return operations_pb2.ListOperationsResponse(
            operations=[await self.to_pb(op) for op in page.operations],
            next_page_token=page.next_page_token,
        )

    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Any
    ) -> operations_pb2.Operation:
        timeout = MAX_WAIT_S
        if request.HasField("timeout"):
            timeout = convert.from_duration(request.timeout, "timeout").total_seconds()
        remaining = context.time_remaining()
        if remaining is not None:
            # answer before the client's deadline, with the operation as it is
            timeout = min(timeout, max(remaining - 0.05, 0.0))
        op = await self._ops.wait(current_caller(), request.name, timeout)
        return await self.to_pb(op)

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._ops.cancel(current_caller(), request.name, self._clock.now())
        return empty_pb2.Empty()

    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._ops.delete(current_caller(), request.name)
        return empty_pb2.Empty()


async def operation_pb(op: Operation, describe: Describe) -> operations_pb2.Operation:
    out = operations_pb2.Operation(name=op.name, done=op.done)
    metadata, response = await describe(op)
    out.metadata.Pack(metadata)
    if op.state is OpState.SUCCEEDED and response is not None:
        out.response.Pack(response)
    elif op.state is OpState.CANCELLED:
        out.error.CopyFrom(
            _status(code_pb2.CANCELLED, "the operation was cancelled", "OPERATION_CANCELLED")
        )
    elif op.state is OpState.FAILED and op.error is not None:
        code = getattr(code_pb2, op.error.code, code_pb2.INTERNAL)
        out.error.CopyFrom(_status(code, op.error.message, op.error.reason))
    return out


def _status(code: int, message: str, reason: str) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    return status_pb2.Status(code=code, message=clip(message, MAX_MESSAGE), details=[info])
