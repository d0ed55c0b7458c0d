"""The call pipeline every method of the three services runs through
(health and reflection stay outside it).

`Pipeline.__init__` builds the steps (api/steps.py) in the one place they
are built; `_unary` and `_client_stream` run them in order:

    request id → size check → authenticate → decode → admit
    → the servicer → answer → record

Handlers are registered with raw-bytes requests, so that the pipeline, not
gRPC, decides when a body is decoded: an oversize body is refused undecoded,
and a caller is authenticated before its body is decoded. A client stream
(ImportMemories) goes through the size check, decoding and admission per
message as it is read, is charged as it goes, and is closed when idle.

The pipeline wraps each handler once, at `register`: no grpc.aio
interceptor, whose per-call dispatch is a measurable share of a cheap call
(docs/performance.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
from grpc import aio

from memoryd.api.call import CallState, ongoing_call
from memoryd.api.steps import (
    Admission,
    Admit,
    Answer,
    Authenticate,
    CallObserver,
    CostFn,
    Decode,
    Record,
    RequestId,
    RequestLimits,
    SizeCheck,
    StreamMeter,
    UsageRecorder,
)
from memoryd.auth.authenticator import Authenticator
from memoryd.domain.clock import Clock, SystemClock
from memoryd.domain.errors import DeadlineExceeded

# a method handler: (request or request iterator, context) → response or response iterator
Behavior = Callable[..., Any]


class Pipeline:
    """Wraps the methods of servicers in the call's steps (see the module)."""

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        admission: Admission | None = None,
        observers: Sequence[CallObserver] = (),
        costs: Mapping[str, CostFn] | None = None,
        stream_costs: Mapping[str, Callable[[], StreamMeter]] | None = None,
        usage: UsageRecorder | None = None,
        limits: RequestLimits | None = None,
        stream_idle_timeout_s: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        # The steps, in the order every call runs them.
        self._request_id = RequestId()
        self._size = SizeCheck(limits or RequestLimits())
        self._authenticate = Authenticate(authenticator)
        self._decode = Decode(clock or SystemClock())
        self._admit = Admit(admission, costs or {}, stream_costs or {})
        # (the servicer)
        self._answer = Answer()
        self._record = Record(usage, observers)
        self._idle_timeout_s = stream_idle_timeout_s

    def register(
        self, add_to_server: Callable[[Any, Any], None], servicer: Any, server: aio.Server
    ) -> None:
        """Registers `servicer` on `server` with every method wrapped in the
        pipeline, once."""
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

    # --- the steps before the servicer ------------------------------------------------

    async def _unary(
        self, context: aio.ServicerContext[Any, Any], method: str, deserializer: Any, raw: bytes
    ) -> tuple[CallState, Any]:
        """A unary request, through every step before the servicer."""
        call, headers = self._request_id.begin(context, method)
        call.request_bytes = len(raw)
        self._size.check(call, len(raw))
        # The steady state waits for nothing: a cached key, a small body and
        # an in-process decision are taken without a coroutine each.
        if not self._authenticate.cached(call, headers):
            await self._authenticate.run(call, headers)
        if self._decode.offloads(raw):
            request = await self._decode.run(call, deserializer, raw)
        else:
            request = self._decode.now(call, deserializer, raw)
        cost = self._admit.cost(call, request)
        if not self._admit.charge_now(call, cost):
            await self._admit.charge(call, cost)
        return call, request

    async def _client_stream(
        self, context: aio.ServicerContext[Any, Any], method: str, deserializer: Any, raws: Any
    ) -> tuple[CallState, AsyncIterator[Any]]:
        """A client stream: authenticated and charged its prepaid units, then
        its messages, each checked, decoded and charged when read."""
        call, headers = self._request_id.begin(context, method)
        await self._authenticate.run(call, headers)
        meter = self._admit.meter(method)
        await self._admit.charge(call, meter.prepaid if meter is not None else 1)
        return call, self._messages(call, deserializer, raws, meter)

    async def _messages(
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
            self._size.check(call, len(raw))
            message = await self._decode.run(call, deserializer, raw)
            if meter is not None:
                due = meter.add(message)
                if due:
                    await self._admit.charge(call, due)
            yield message

    # --- the handlers -----------------------------------------------------------------

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
                self._one_response(handler.unary_unary, method, decode, request_stream=False),
                **kwargs,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._response_stream(handler.unary_stream, method, decode), **kwargs
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._one_response(handler.stream_unary, method, decode, request_stream=True),
                **kwargs,
            )
        raise ValueError(f"{method}: stream-stream methods are not supported")

    def _one_response(
        self, behavior: Behavior, method: str, decode: Any, *, request_stream: bool
    ) -> Behavior:
        """Unary-unary and stream-unary: one response, returned."""
        begin = self._client_stream if request_stream else self._unary

        async def run(raw: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            call: CallState | None = None
            try:
                call, request = await begin(context, method, decode, raw)
                response = await behavior(request, context)
                self._answer.success(context, call)
                return response
            except aio.AbortError:
                raise
            except Exception as exc:
                call = call or ongoing_call() or self._request_id.anonymous(method, context)
                await self._answer.failure(context, call, exc)
            except BaseException:
                self._answer.cancelled(call or ongoing_call(), context)
                raise
            finally:
                self._record.run(call or ongoing_call(), started)

        return run

    def _response_stream(self, behavior: Behavior, method: str, decode: Any) -> Behavior:
        """Unary-stream: responses yielded as the servicer yields them."""

        async def run(raw: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            started = time.perf_counter()
            call: CallState | None = None
            try:
                call, request = await self._unary(context, method, decode, raw)
                async for item in behavior(request, context):
                    yield item
                self._answer.success(context, call)
            except aio.AbortError:
                raise
            except Exception as exc:
                call = call or ongoing_call() or self._request_id.anonymous(method, context)
                await self._answer.failure(context, call, exc)
            except BaseException:
                self._answer.cancelled(call or ongoing_call(), context)
                raise
            finally:
                self._record.run(call or ongoing_call(), started)

        return run


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
