"""Reading a refused call: its code and the `google.rpc.Status` details the
server attaches (ErrorInfo, BadRequest, QuotaFailure, RetryInfo).

Every decoder takes the `AioRpcError` of a call or a `google.rpc.Status`
(a batch item's or an import failure's error), and fails the test when the
detail it decodes is absent.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status

M = TypeVar("M", bound=Message)
Refusal = aio.AioRpcError | status_pb2.Status


async def raised(call: Awaitable[Any]) -> aio.AioRpcError:
    """The error `call` fails with (the test fails when it succeeds)."""
    with pytest.raises(aio.AioRpcError) as info:
        await call
    return info.value


async def refused(code: grpc.StatusCode, call: Awaitable[Any]) -> aio.AioRpcError:
    """The error `call` fails with; it must carry `code`."""
    err = await raised(call)
    assert err.code() == code, (err.code(), err.details())
    return err


def status_of(err: Refusal) -> status_pb2.Status:
    """The `google.rpc.Status` in the trailers of a refused call."""
    if isinstance(err, status_pb2.Status):
        return err
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status in the trailers of {err}"
    return status


def detail(err: Refusal, kind: type[M]) -> M:
    """The first detail of type `kind`."""
    status = status_of(err)
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            out = kind()
            packed.Unpack(out)
            return out
    raise AssertionError(f"no {kind.DESCRIPTOR.name} in {status}")


def has_detail(err: Refusal, kind: type[Message]) -> bool:
    return any(packed.Is(kind.DESCRIPTOR) for packed in status_of(err).details)


def error_info(err: Refusal) -> error_details_pb2.ErrorInfo:
    return detail(err, error_details_pb2.ErrorInfo)


def reason_of(err: Refusal) -> str:
    """The machine-readable reason (ErrorInfo.reason)."""
    return error_info(err).reason


def violations(err: Refusal) -> dict[str, str]:
    """The BadRequest field violations: field → description."""
    bad = detail(err, error_details_pb2.BadRequest)
    return {v.field: v.description for v in bad.field_violations}


def quota_violations(err: Refusal) -> dict[str, str]:
    """The QuotaFailure violations: subject → description."""
    failure = detail(err, error_details_pb2.QuotaFailure)
    return {v.subject: v.description for v in failure.violations}


def retry_delay(err: Refusal) -> float:
    """The RetryInfo delay, in seconds."""
    return detail(err, error_details_pb2.RetryInfo).retry_delay.ToTimedelta().total_seconds()
