"""The call pipeline every method runs through, except health and reflection.

Handlers are registered with raw-bytes requests, so that the pipeline, not
gRPC, decides when a body is decoded. For each call, in order: request id
(taken from `x-request-id` or made), the size of the body against the
method's limit (refused undecoded), authentication (`x-api-key` or
`authorization: Bearer`, exactly one, → `Principal`), decoding (a large body
in a worker thread; an undecodable one is INVALID_ARGUMENT), admission (the
rate limiter, when one is configured, charged by the request's work), then
the servicer. A client stream (ImportMemories) goes through the same steps
per message as it is read, is charged as it goes, and is closed when idle.

Domain errors raised anywhere become a rich `google.rpc.Status`; anything
else becomes INTERNAL, logged with the request id. A call cancelled by the
client or by its deadline is counted as CANCELLED / DEADLINE_EXCEEDED.
Trailing metadata always carries `x-request-id` and whatever admission added
(`x-ratelimit-*`).

The state of the call is in a contextvar (`current_call()`), read by the
servicers; the domain gets it as an explicit `Caller` argument.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from memoryd.api.errors import internal_status, to_grpc_status
from memoryd.auth.authenticator import Authenticator
from memoryd.domain.clock import Clock, SystemClock
from memoryd.domain.errors import (
    DeadlineExceeded,
    DomainError,
    FieldViolation,
    InvalidArgument,
    Unauthenticated,
)
from memoryd.domain.tenancy import Caller, Principal

log = logging.getLogger("memoryd.call")

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
MAX_REQUEST_ID = 100
# Bodies larger than this are decoded in a worker thread (and servicers
# convert them there too), so the event loop keeps serving other calls. The
# protobuf parser itself holds the GIL: the size limits bound that part.
OFFLOAD_DECODE_BYTES = 64 * 1024
# A client whose deadline passes cancels the call itself, which reaches the
# server a little before the server's own copy of the deadline (computed when
# the request arrived, so later by the request's transit time): a call
# cancelled this close to its deadline is counted as DEADLINE_EXCEEDED.
DEADLINE_SLACK_S = 0.5
# At most one log line per client address per this many seconds about
# undecodable requests (a flood of them must not flood the log).
MALFORMED_LOG_INTERVAL_S = 10.0


@dataclass
class CallState:
    method: str
    request_id: str
    peer: str
    principal: Principal | None = None
    trailers: list[tuple[str, str]] = field(default_factory=list)
    code: str = "OK"
    reason: str = ""
    request_bytes: int = 0  # size of the (unary) request body
    # Extra `google.rpc.Status` details (protobuf messages) for the call's
    # error status, should it fail: an import's summary of what was stored.
    error_details: list[Any] = field(default_factory=list)

    def caller(self) -> Caller:
        assert self.principal is not None, "the call was not authenticated"
        return Caller(self.principal, self.request_id, self.peer)


_CALL: contextvars.ContextVar[CallState] = contextvars.ContextVar("memoryd_call")


def current_call() -> CallState:
    return _CALL.get()


def current_caller() -> Caller:
    return _CALL.get().caller()


class Admission(Protocol):
    """Decides whether an authenticated call may run (the rate limiter).

    Returns trailing metadata to attach; raises ResourceExhausted (with its
    own trailers) to refuse, or Unavailable."""

    async def admit(
        self, principal: Principal, method: str, cost: int
    ) -> Sequence[tuple[str, str]]: ...

    def refused(self, principal: Principal, method: str) -> None:
        """Notes a refused call (for usage metering)."""
        ...


class UsageRecorder(Protocol):
    """Counts authenticated calls (and rate-limit refusals) for usage reports."""

    async def record_call(self, principal: Principal, method: str, rate_limited: bool) -> None: ...


class CallObserver(Protocol):
    """Sees the end of every call: for logs, metrics and usage."""

    def call_finished(self, call: CallState, duration_s: float) -> None: ...


# How many units of rate limit a call costs, from its request.
CostFn = Callable[[Any], int]


class StreamMeter(Protocol):
    """The running rate-limit cost of one client stream: `prepaid` units are
    charged before the first message, then `add(message)` answers the units
    due for that message."""

    prepaid: int

    def add(self, message: Any) -> int: ...


@dataclass(frozen=True)
class RequestLimits:
    """The largest request body (or client-stream message), in bytes, per
    method; checked before anything is decoded."""

    default: int = 256 * 1024
    per_method: Mapping[str, int] = field(default_factory=dict)

    def of(self, method: str) -> int:
        return self.per_method.get(method, self.default)


class PeerLogLimiter:
    """Allows one log line per peer per `interval_s` (injected clock), and
    says how many were held back since. Bounded: forgets old peers."""

    MAX_PEERS = 10_000

    def __init__(self, clock: Clock, interval_s: float) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, peer: str) -> int | None:
        """None to stay silent; else how many lines were held back before this one."""
        now = self._clock.monotonic()
        last = self._last.get(peer)
        if last is not None and now - last < self._interval_s:
            self._held[peer] = self._held.get(peer, 0) + 1
            return None
        if len(self._last) >= self.MAX_PEERS:
            self._forget_before(now - self._interval_s)
        self._last[peer] = now
        return self._held.pop(peer, 0)

    def _forget_before(self, cutoff: float) -> None:
        old = [p for p, t in self._last.items() if t < cutoff]
        for p in old if old else list(self._last):
            self._last.pop(p, None)
            self._held.pop(p, None)


class _Capture:
    """Stands in for a server to capture what a generated
    `add_*Servicer_to_server` function registers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        return None

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.services[service] = handlers


class CallInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        authenticator: Authenticator,
        *,
        admission: Admission | None = None,
        observers: Sequence[CallObserver] = (),
        costs: dict[str, CostFn] | None = None,
        stream_costs: dict[str, Callable[[], StreamMeter]] | None = None,
        usage: UsageRecorder | None = None,
        limits: RequestLimits | None = None,
        stream_idle_timeout_s: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        self._auth = authenticator
        self._admission = admission
        self._observers = list(observers)
        self._costs = costs or {}
        self._stream_costs = stream_costs or {}
        self._usage = usage
        self._limits = limits or RequestLimits()
        self._idle_timeout_s = stream_idle_timeout_s
        self._malformed_log = PeerLogLimiter(clock or SystemClock(), MALFORMED_LOG_INTERVAL_S)
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def register(
        self, add_to_server: Callable[[Any, Any], None], servicer: Any, server: aio.Server
    ) -> None:
        """Registers `servicer` on `server` with every method already wrapped
        in the pipeline. Same behaviour as installing this as an interceptor,
        without the per-call interceptor dispatch (a measurable share of a
        cheap call's cost in grpc.aio)."""
        capture = _Capture()
        add_to_server(servicer, capture)
        for service, handlers in capture.services.items():
            wrapped = {
                name: self._wrap(handler, f"/{service}/{name}")
                for name, handler in handlers.items()
            }
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, wrapped),)
            )
            server.add_registered_method_handlers(service, wrapped)  # type: ignore[attr-defined]

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        wrapped = self._wrap(handler, method)
        self._handlers[method] = wrapped
        return wrapped

    # --- the pipeline -------------------------------------------------------------

    def _start(
        self, context: aio.ServicerContext[Any, Any], method: str
    ) -> tuple[CallState, _Headers]:
        headers = _read_headers(context)
        rid = headers.request_id
        if not rid or len(rid) > MAX_REQUEST_ID or not rid.isprintable():
            rid = uuid.uuid4().hex
        call = CallState(method=method, request_id=rid, peer=_peer_host(context.peer()))
        _CALL.set(call)
        return call, headers

    def _check_size(self, call: CallState, size: int) -> None:
        """Refuses a body over the method's limit, before it is decoded."""
        limit = self._limits.of(call.method)
        if size > limit:
            name = call.method.rsplit("/", 1)[-1]
            description = f"is {size} bytes; a {name} request may be at most {limit} bytes"
            raise InvalidArgument(
                f"request: {description}",
                [FieldViolation("request", description)],
                reason="REQUEST_TOO_LARGE",
            )

    async def _authenticate(self, call: CallState, headers: _Headers) -> None:
        if len(headers.credentials) > 1:
            # Refused before any verification: which one would be meant?
            raise Unauthenticated(
                "more than one API key in the call: send exactly one, in x-api-key "
                "or in authorization: Bearer, not both and not twice",
                reason="API_KEY_AMBIGUOUS",
            )
        raw = headers.credentials[0] if headers.credentials else ""
        call.principal = await self._auth.authenticate(
            raw, end_user_id=headers.end_user_id, peer=call.peer
        )

    async def _decode(self, call: CallState, deserializer: Any, raw: bytes) -> Any:
        """The request message of `raw`; INVALID_ARGUMENT (MALFORMED_REQUEST)
        if it does not decode. Large bodies are decoded in a worker thread."""
        if deserializer is None:
            return raw
        try:
            if len(raw) > OFFLOAD_DECODE_BYTES:
                return await asyncio.to_thread(_parse, deserializer, raw)
            return _parse(deserializer, raw)
        except (DecodeError, ValueError, RecursionError) as err:
            self._log_malformed(call, err)
            raise InvalidArgument(
                f"the request body is not a valid message of {call.method}: {_clip(err)}",
                reason="MALFORMED_REQUEST",
            ) from None

    def _log_malformed(self, call: CallState, err: Exception) -> None:
        held = self._malformed_log.allow(call.peer)
        if held is None:
            return
        log.warning(
            "undecodable request to %s from %s (request id %s): %s%s",
            call.method,
            call.peer,
            call.request_id,
            _clip(err),
            f" ({held} more from this address not logged)" if held else "",
        )

    async def _admit(self, call: CallState, cost: int) -> None:
        if self._admission is None:
            return
        assert call.principal is not None
        try:
            trailers = await self._admission.admit(call.principal, call.method, max(cost, 1))
        except DomainError:
            call.trailers.clear()  # a refusal carries its own
            self._admission.refused(call.principal, call.method)
            raise
        call.trailers[:] = trailers  # the latest decision is the one that counts

    async def _request(
        self, context: aio.ServicerContext[Any, Any], method: str, deserializer: Any, raw: bytes
    ) -> tuple[CallState, Any]:
        """Size, authentication, decoding and admission of a unary request."""
        call, headers = self._start(context, method)
        call.request_bytes = len(raw)
        self._check_size(call, len(raw))
        await self._authenticate(call, headers)
        request = await self._decode(call, deserializer, raw)
        cost_fn = self._costs.get(method)
        await self._admit(call, cost_fn(request) if cost_fn is not None else 1)
        return call, request

    async def _stream(
        self, context: aio.ServicerContext[Any, Any], method: str, deserializer: Any, raws: Any
    ) -> tuple[CallState, AsyncIterator[Any]]:
        """Authentication and the first charge of a client stream, and the
        stream of its decoded messages (each checked, decoded and charged
        when read)."""
        call, headers = self._start(context, method)
        await self._authenticate(call, headers)
        factory = self._stream_costs.get(method)
        meter = factory() if factory is not None else None
        await self._admit(call, meter.prepaid if meter is not None else 1)
        return call, self._read(call, deserializer, raws, meter)

    async def _read(
        self, call: CallState, deserializer: Any, raws: Any, meter: StreamMeter | None
    ) -> AsyncIterator[Any]:
        """The messages of a client stream. Raises a DomainError to stop it:
        a message too large or undecodable, a refused charge, or no message
        for the idle timeout."""
        messages = aiter(raws)
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout_s):
                    raw = await anext(messages)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no message on the stream for {self._idle_timeout_s:g} s: it was closed; "
                    "send messages without long pauses",
                    reason="STREAM_IDLE_TIMEOUT",
                ) from None
            self._check_size(call, len(raw))
            message = await self._decode(call, deserializer, raw)
            if meter is not None:
                due = meter.add(message)
                if due:
                    await self._admit(call, due)
            yield message

    async def _fail(
        self, context: aio.ServicerContext[Any, Any], call: CallState, exc: Exception
    ) -> None:
        trailers = [("x-request-id", call.request_id), *call.trailers]
        if isinstance(exc, DomainError):
            call.code = exc.code
            call.reason = exc.reason
            await context.abort_with_status(  # type: ignore[attr-defined]
                to_grpc_status(exc, trailers, call.error_details)
            )
        call.code = "INTERNAL"
        log.error(
            "unhandled error in %s (request id %s)", call.method, call.request_id, exc_info=exc
        )
        await context.abort_with_status(  # type: ignore[attr-defined]
            internal_status(call.request_id, trailers)
        )

    def _succeed(self, context: aio.ServicerContext[Any, Any], call: CallState) -> None:
        context.set_trailing_metadata((("x-request-id", call.request_id), *call.trailers))

    async def _finish(self, call: CallState | None, started: float) -> None:
        if call is None:
            return
        if self._usage is not None and call.principal is not None:
            await self._usage.record_call(
                call.principal, call.method, rate_limited=call.reason == "RATE_LIMITED"
            )
        duration = time.perf_counter() - started
        for observer in self._observers:
            observer.call_finished(call, duration)

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # Requests reach the pipeline as raw bytes: it checks their size and
        # authenticates before anything is decoded.
        decode = handler.request_deserializer
        kwargs: dict[str, Any] = {
            "request_deserializer": None,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_response(handler.unary_unary, method, decode, request_stream=False),
                **kwargs,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(handler.unary_stream, method, decode), **kwargs
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary_response(handler.stream_unary, method, decode, request_stream=True),
                **kwargs,
            )
        return handler  # stream-stream: none in the v1 contract

    def _unary_response(
        self, behavior: Any, method: str, decode: Any, *, request_stream: bool
    ) -> Any:
        """Unary-unary and stream-unary: one response, returned."""

        async def run(raw: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            call: CallState | None = None
            try:
                if request_stream:
                    call, request = await self._stream(context, method, decode, raw)
                else:
                    call, request = await self._request(context, method, decode, raw)
                response = await behavior(request, context)
                self._succeed(context, call)
                return response
            except aio.AbortError:
                raise
            except Exception as exc:
                call = call or _CALL.get(None) or _anonymous(method, context)
                await self._fail(context, call, exc)
            except BaseException:
                _cancelled(call or _CALL.get(None), context)
                raise
            finally:
                await self._finish(call or _CALL.get(None), started)

        return run

    def _unary_stream(self, behavior: Any, method: str, decode: Any) -> Any:
        async def run(raw: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            started = time.perf_counter()
            call: CallState | None = None
            try:
                call, request = await self._request(context, method, decode, raw)
                async for item in behavior(request, context):
                    yield item
                self._succeed(context, call)
            except aio.AbortError:
                raise
            except Exception as exc:
                call = call or _CALL.get(None) or _anonymous(method, context)
                await self._fail(context, call, exc)
            except BaseException:
                _cancelled(call or _CALL.get(None), context)
                raise
            finally:
                await self._finish(call or _CALL.get(None), started)

        return run


def _parse(deserializer: Callable[[bytes], Any], raw: bytes) -> Any:
    """Decodes one request body (runs on the loop or in a worker thread)."""
    return deserializer(raw)


def _clip(err: BaseException, limit: int = 200) -> str:
    text = str(err)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cancelled(call: CallState | None, context: aio.ServicerContext[Any, Any]) -> None:
    """Notes why a call ended without an answer (asyncio.CancelledError or
    GeneratorExit are not Exceptions): its deadline passed, or the client
    (or the server's shutdown) cancelled it."""
    if call is None:
        return
    remaining = context.time_remaining()  # None: the call had no deadline
    expired = remaining is not None and remaining <= DEADLINE_SLACK_S
    call.code = "DEADLINE_EXCEEDED" if expired else "CANCELLED"


@dataclass(frozen=True)
class _Headers:
    """The request headers the pipeline reads, from one scan of the metadata
    (binary headers are skipped)."""

    request_id: str = ""
    end_user_id: str = ""
    # every API key presented: x-api-key values and bearer tokens, non-empty
    credentials: tuple[str, ...] = ()


def _read_headers(context: aio.ServicerContext[Any, Any]) -> _Headers:
    request_id = end_user_id = ""
    credentials: list[str] = []
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        if key == "x-api-key":
            if value:
                credentials.append(value)
        elif key == "authorization":
            token = _bearer(value)
            if token:
                credentials.append(token)
        elif key == "x-request-id":
            request_id = value
        elif key == "x-end-user-id":
            end_user_id = value
    return _Headers(request_id, end_user_id, tuple(credentials))


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` → `127.0.0.1` (the port changes per connection)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, _port = rest.rpartition(":")
        return host.strip("[]") or rest
    return peer


def _anonymous(method: str, context: aio.ServicerContext[Any, Any]) -> CallState:
    return CallState(method=method, request_id=uuid.uuid4().hex, peer=_peer_host(context.peer()))
