"""Domain errors → `google.rpc.Status` with rich details, via grpcio-status.

Details: `ErrorInfo` (reason, domain `memoryd`) always; `BadRequest` field
violations for INVALID_ARGUMENT; `QuotaFailure` and `RetryInfo` for
RESOURCE_EXHAUSTED; `RetryInfo` for UNAVAILABLE when the backend gives a
hint. Unknown exceptions become INTERNAL with a generic message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from memoryd.domain.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

ERROR_DOMAIN = "memoryd"

Metadata = Sequence[tuple[str, str | bytes]]


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


# The one owner of error sizes. An error travels in trailing metadata (its
# message twice: grpc-message, and in grpc-status-details-bin as base64),
# which clients refuse past 16 KiB by default: whatever the domain collects,
# what goes on the wire is capped here. The domain may report every
# violation it finds and echo client strings whole.
MAX_MESSAGE = 1024
MAX_DETAIL = 256  # each field name and description of a violation, each logged excerpt
MAX_VIOLATIONS = 9  # past this, the first 8 and one saying how many more
# Failures listed (compactly, by code and reason) in the status of an import
# that stopped early.
MAX_STOPPED_IMPORT_ERRORS = 10


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    """`text`, at most `limit` characters (ending with `…` when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def capped(violations: Sequence[FieldViolation]) -> list[FieldViolation]:
    """At most MAX_VIOLATIONS violations: past that, the first ones and a
    last one (on the first's field) saying how many more there were."""
    if len(violations) <= MAX_VIOLATIONS:
        return list(violations)
    kept = MAX_VIOLATIONS - 1
    more = FieldViolation(
        violations[0].field, f"and {len(violations) - kept} more violations, not listed"
    )
    return [*violations[:kept], more]


def status_proto(err: DomainError, extra: Sequence[object] = ()) -> status_pb2.Status:
    """The `google.rpc.Status` of a domain error (also used per batch item),
    with `extra` protobuf messages appended to its details.

    Sizes are capped here (message, each field and description, number of
    violations) so that an error always fits in a client's trailer limit."""
    details = [_pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN))]
    if isinstance(err, InvalidArgument) and err.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=clip(v.field), description=clip(v.description)
                        )
                        for v in capped(err.violations)
                    ]
                )
            )
        )
    if isinstance(err, ResourceExhausted) and err.violations:
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject, description=v.description
                        )
                        for v in err.violations
                    ]
                )
            )
        )
    if isinstance(err, ResourceExhausted | Unavailable) and err.retry_after is not None:
        details.append(_pack(_retry_info(err.retry_after)))
    details.extend(_pack(message) for message in extra)
    return status_pb2.Status(
        code=getattr(code_pb2, err.code), message=clip(err.message, MAX_MESSAGE), details=details
    )


def _retry_info(retry_after: float) -> error_details_pb2.RetryInfo:
    seconds = max(retry_after, 0.0)
    whole = math.floor(seconds)
    return error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
    )


def to_grpc_status(
    err: DomainError, trailers: Metadata = (), details: Sequence[object] = ()
) -> grpc.Status:
    """The status to abort a call with; `trailers` are merged in, since
    `abort_with_status` drops trailing metadata set earlier. `details`
    (protobuf messages) are appended to the status details."""
    status = rpc_status.to_status(status_proto(err, details))
    extra = list(trailers)
    if isinstance(err, ResourceExhausted):
        extra.extend(err.trailers.items())
        if err.retry_after is None:
            # A quota, not a rate: retrying cannot help, and a negative
            # pushback tells gRPC's retry policy not to.
            extra.append(("grpc-retry-pushback-ms", "-1"))
    if not extra:
        return status
    return _Status(status.code, status.details, (*extra, *status.trailing_metadata))


def internal_status(request_id: str, trailers: Metadata = ()) -> grpc.Status:
    proto = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error; it was logged with request id {request_id}",
        details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN))],
    )
    status = rpc_status.to_status(proto)
    return _Status(status.code, status.details, tuple(trailers) + tuple(status.trailing_metadata))


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Metadata) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata)
