"""Domain errors. Each carries its gRPC status code name and a machine-readable
reason; `memoryd.api.errors` turns them into a `google.rpc.Status`.

Messages say what was wrong and what to do. They never contain a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One exceeded quota or limit (google.rpc.QuotaFailure.Violation)."""

    subject: str
    description: str


class DomainError(Exception):
    """Base of every error a client may see. `code` is a grpc.StatusCode name."""

    code: str = "INTERNAL"
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(DomainError):
    code = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.violations = list(violations or [])

    @classmethod
    def field(cls, name: str, description: str) -> InvalidArgument:
        return cls(f"{name}: {description}", [FieldViolation(name, description)])


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"
    reason = "API_KEY_INVALID"


class PermissionDenied(DomainError):
    code = "PERMISSION_DENIED"
    reason = "SCOPE_MISSING"


class NotFound(DomainError):
    code = "NOT_FOUND"
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = "ALREADY_EXISTS"
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class Unavailable(DomainError):
    """A backend cannot answer now; the same call may succeed later.
    `retry_after` (seconds), when set, is sent as a RetryInfo hint."""

    code = "UNAVAILABLE"
    reason = "BACKEND_UNAVAILABLE"

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class Unimplemented(DomainError):
    """The server does not serve this method (not configured)."""

    code = "UNIMPLEMENTED"
    reason = "UNIMPLEMENTED"


class OutOfRange(DomainError):
    """A position is outside what is kept (a change-log position older than
    its retention)."""

    code = "OUT_OF_RANGE"
    reason = "OUT_OF_RANGE"


class DeadlineExceeded(DomainError):
    """The server's own time limit ran out (e.g. a client stream left idle)."""

    code = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"


class ResourceExhausted(DomainError):
    """A quota or rate limit was exceeded. `retry_after` (seconds) is set for
    rate limits, `violations` name the quota or limit."""

    code = "RESOURCE_EXHAUSTED"
    reason = "QUOTA_EXCEEDED"

    def __init__(
        self,
        message: str,
        violations: list[QuotaViolation] | None = None,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        trailers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.violations = list(violations or [])
        self.retry_after = retry_after
        self.trailers = dict(trailers or {})


@dataclass
class Violations:
    """Collects field violations, then raises them all at once."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, name: str, description: str) -> None:
        self.items.append(FieldViolation(name, description))

    def raise_if_any(self, message: str = "the request has invalid fields") -> None:
        if self.items:
            detail = "; ".join(f"{v.field}: {v.description}" for v in self.items)
            raise InvalidArgument(f"{message}: {detail}", self.items)
