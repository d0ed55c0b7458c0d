"""`MemorydError`: a failed call with its `google.rpc` details decoded.

memoryd answers errors with a `google.rpc.Status` in the trailer
`grpc-status-details-bin` (AIP-193): `ErrorInfo` (a machine-readable reason)
always, `BadRequest` field violations for INVALID_ARGUMENT, `QuotaFailure`
and `RetryInfo` for RESOURCE_EXHAUSTED. `MemorydError.from_rpc_error` turns
any `grpc.RpcError` (sync or asyncio) into one typed exception.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (`google.rpc.BadRequest.FieldViolation`)."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One exceeded quota (`google.rpc.QuotaFailure.Violation`)."""

    subject: str
    description: str


class MemorydError(Exception):
    """A call that ended with a non-OK status.

    Attributes:
        code: the gRPC status code.
        message: the server's message (says what was wrong and what to do).
        reason: `ErrorInfo.reason`, stable and machine-readable (e.g.
            `API_KEY_REVOKED`, `SCOPE_MISSING`); empty when the server sent none.
        domain: `ErrorInfo.domain` (`memoryd` for memoryd's own errors).
        error_metadata: `ErrorInfo.metadata`.
        field_violations: from `BadRequest` (INVALID_ARGUMENT).
        quota_violations: from `QuotaFailure` (RESOURCE_EXHAUSTED).
        retry_delay: seconds to wait before retrying, from `RetryInfo`, else
            from the `grpc-retry-pushback-ms` trailer; None when not given.
        request_id: the call's `x-request-id` (quote it when reporting).
        trailers: the text trailing metadata (`x-ratelimit-*`, …).
        status: the raw `google.rpc.Status`, when the server sent one.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        error_metadata: dict[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        quota_violations: tuple[QuotaViolation, ...] = (),
        retry_delay: float | None = None,
        request_id: str = "",
        trailers: dict[str, str] | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.error_metadata = dict(error_metadata or {})
        self.field_violations = field_violations
        self.quota_violations = quota_violations
        self.retry_delay = retry_delay
        self.request_id = request_id
        self.trailers = dict(trailers or {})
        self.status = status

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason:
            text += f" [{self.reason}]"
        for v in self.field_violations:
            text += f"; {v.field}: {v.description}"
        for q in self.quota_violations:
            text += f"; quota {q.subject}: {q.description}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> MemorydError:
        """Decodes a failed call (a `grpc.RpcError` that is a `grpc.Call`,
        as both the sync and the asyncio stack raise)."""
        code = _call_attr(err, "code", grpc.StatusCode.UNKNOWN)
        message = _call_attr(err, "details", "") or ""
        raw = _call_attr(err, "trailing_metadata", None) or ()
        pairs = [(str(k), v) for k, v in raw]
        trailers = {k: v for k, v in pairs if isinstance(v, str)}
        status = _rich_status(err, pairs)
        reason = domain = ""
        error_metadata: dict[str, str] = {}
        fields: list[FieldViolation] = []
        quotas: list[QuotaViolation] = []
        retry_delay: float | None = None
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, error_metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = error_details_pb2.QuotaFailure()
                detail.Unpack(quota)
                quotas.extend(QuotaViolation(v.subject, v.description) for v in quota.violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info_retry = error_details_pb2.RetryInfo()
                detail.Unpack(info_retry)
                retry_delay = info_retry.retry_delay.ToTimedelta().total_seconds()
        if retry_delay is None:
            retry_delay = _pushback_s(trailers.get("grpc-retry-pushback-ms", ""))
        return cls(
            code,
            message,
            reason=reason,
            domain=domain,
            error_metadata=error_metadata,
            field_violations=tuple(fields),
            quota_violations=tuple(quotas),
            retry_delay=retry_delay,
            request_id=trailers.get("x-request-id", ""),
            trailers=trailers,
            status=status,
        )


def _call_attr(err: grpc.RpcError, name: str, default: Any) -> Any:
    method = getattr(err, name, None)
    if method is None:
        return default
    value = method()
    return default if value is None else value


def _rich_status(
    err: grpc.RpcError, pairs: Iterable[tuple[str, str | bytes]]
) -> status_pb2.Status | None:
    try:
        return rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        # Code or message differ from the Status proto (a proxy rewrote the
        # message, say): the details are still worth reading.
        for key, value in pairs:
            if key == _DETAILS_KEY and isinstance(value, bytes):
                return status_pb2.Status.FromString(value)
        return None


def _pushback_s(value: str) -> float | None:
    try:
        ms = int(value)
    except ValueError:
        return None
    return ms / 1000 if ms >= 0 else None
