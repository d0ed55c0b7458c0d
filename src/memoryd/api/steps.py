"""The steps of the call pipeline, each small and on its own. `Pipeline`
(api/pipeline.py) builds them in one place and runs them in order:

    RequestId → SizeCheck → Authenticate → Decode → Admit → the servicer
    → Answer (trailers, or the error's status) → Record

A step raises a `DomainError` to refuse the call; `Answer` turns it into the
call's status. Each step's docstring says what it reads and sets on the
`CallState`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import DecodeError
from grpc import aio

from memoryd.api.call import CallState, Headers, begin_call, peer_host, read_headers
from memoryd.api.errors import clip, internal_status, to_grpc_status
from memoryd.auth.authenticator import Authenticator
from memoryd.domain.clock import Clock
from memoryd.domain.errors import DomainError, FieldViolation, InvalidArgument, Unauthenticated
from memoryd.domain.tenancy import Principal

log = logging.getLogger("memoryd.call")

MAX_REQUEST_ID = 100
# Bodies larger than this are decoded in a worker thread (and servicers
# convert them there too), so the event loop keeps serving other calls. The
# protobuf parser itself holds the GIL: the size limits bound that part.
OFFLOAD_DECODE_BYTES = 64 * 1024
# A client whose deadline passes cancels the call itself, which reaches the
# server a little before the server's own copy of the deadline (computed when
# the request arrived, so later by the request's transit time): a call
# cancelled this close to its deadline is counted as DEADLINE_EXCEEDED: half
# a second, or a quarter of the call's timeout when longer (on a busy
# machine the transit, and so the gap, grows; measured as a flaky CI run).
DEADLINE_SLACK_S = 0.5
DEADLINE_SLACK_SHARE = 0.25
# At most one log line per client address per this many seconds about
# undecodable requests (a flood of them must not flood the log).
MALFORMED_LOG_INTERVAL_S = 10.0


class Admission(Protocol):
    """Decides whether an authenticated call may run (the rate limiter).

    Returns trailing metadata to attach; raises ResourceExhausted (with its
    own trailers) to refuse, or Unavailable."""

    async def admit(
        self, principal: Principal, method: str, cost: int
    ) -> Sequence[tuple[str, str]]: ...

    def admit_now(
        self, principal: Principal, method: str, cost: int
    ) -> Sequence[tuple[str, str]] | None:
        """`admit` when it needs no waiting (else None: await `admit`)."""
        ...


class UsageRecorder(Protocol):
    """Counts authenticated calls (and rate-limit refusals) for usage reports."""

    def record_call(self, principal: Principal, method: str, rate_limited: bool) -> None: ...


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


def new_request_id() -> str:
    """32 random hex digits. A request id names a call in logs and answers
    and guards nothing, so it comes from `random` (reseeded in each forked
    child), not the OS: about half of `secrets.token_hex`'s cost."""
    return f"{random.getrandbits(128):032x}"


class RequestId:
    """Begins the call: reads its headers (the one scan of the metadata),
    takes its request id from `x-request-id` (or makes one when absent or
    unfit to log) and makes the `CallState` the current call."""

    def begin(
        self, context: aio.ServicerContext[Any, Any], method: str
    ) -> tuple[CallState, Headers]:
        headers = read_headers(context)
        rid = headers.request_id
        if not rid or len(rid) > MAX_REQUEST_ID or not rid.isprintable():
            rid = new_request_id()
        call = CallState(
            method=method,
            request_id=rid,
            peer=peer_host(context.peer()),
            allow_cross_project=headers.cross_project,
            timeout_s=context.time_remaining(),
        )
        begin_call(call)
        return call, headers

    def anonymous(self, method: str, context: aio.ServicerContext[Any, Any]) -> CallState:
        """The state of a call that failed before it began (to answer it)."""
        return CallState(method=method, request_id=new_request_id(), peer=peer_host(context.peer()))


class SizeCheck:
    """Refuses a body (or a stream message) over the method's limit, before
    it is decoded: INVALID_ARGUMENT, reason REQUEST_TOO_LARGE."""

    def __init__(self, limits: RequestLimits) -> None:
        self._limits = limits

    def check(self, call: CallState, size: int) -> None:
        limit = self._limits.of(call.method)
        if size > limit:
            name = call.method.rsplit("/", 1)[-1]
            description = f"is {size} bytes; a {name} request may be at most {limit} bytes"
            raise InvalidArgument(
                f"request: {description}",
                [FieldViolation("request", description)],
                reason="REQUEST_TOO_LARGE",
            )


class Authenticate:
    """Sets `call.principal` from exactly one API key (`x-api-key` or
    `authorization: Bearer`) and `x-end-user-id`; raises Unauthenticated
    otherwise. Runs before the body is decoded."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    def cached(self, call: CallState, headers: Headers) -> bool:
        """Sets `call.principal` if the key was verified within its cache
        TTL (no waiting); False when `run` must verify it."""
        principal = self._auth.cached(
            self._credential(headers), end_user_id=headers.end_user_id, peer=call.peer
        )
        call.principal = principal
        return principal is not None

    async def run(self, call: CallState, headers: Headers) -> None:
        call.principal = await self._auth.authenticate(
            self._credential(headers), end_user_id=headers.end_user_id, peer=call.peer
        )

    @staticmethod
    def _credential(headers: Headers) -> str:
        if len(headers.credentials) > 1:
            # Refused before any verification: which one would be meant?
            raise Unauthenticated(
                "more than one API key in the call: send exactly one, in x-api-key "
                "or in authorization: Bearer, not both and not twice",
                reason="API_KEY_AMBIGUOUS",
            )
        return headers.credentials[0] if headers.credentials else ""


def _parse(deserializer: Callable[[bytes], Any], raw: bytes) -> Any:
    """Decodes one request body (runs on the loop or in a worker thread)."""
    return deserializer(raw)


class Decode:
    """The request message of a raw body: INVALID_ARGUMENT (reason
    MALFORMED_REQUEST) if it does not decode, logged at most once per peer
    per MALFORMED_LOG_INTERVAL_S. Large bodies are decoded in a worker thread."""

    def __init__(self, clock: Clock) -> None:
        self._malformed_log = PeerLogLimiter(clock, MALFORMED_LOG_INTERVAL_S)

    @staticmethod
    def offloads(raw: bytes) -> bool:
        """True when `raw` is decoded in a worker thread (`run`), not by `now`."""
        return len(raw) > OFFLOAD_DECODE_BYTES

    def now(self, call: CallState, deserializer: Any, raw: bytes) -> Any:
        """Decodes a body that `offloads` does not, on the loop."""
        if deserializer is None:
            return raw
        try:
            return _parse(deserializer, raw)
        except (DecodeError, ValueError, RecursionError) as err:
            raise self._malformed(call, err) from None

    async def run(self, call: CallState, deserializer: Any, raw: bytes) -> Any:
        if deserializer is None or not self.offloads(raw):
            return self.now(call, deserializer, raw)
        try:
            return await asyncio.to_thread(_parse, deserializer, raw)
        except (DecodeError, ValueError, RecursionError) as err:
            raise self._malformed(call, err) from None

    def _malformed(self, call: CallState, err: Exception) -> InvalidArgument:
        self._log_malformed(call, err)
        return InvalidArgument(
            f"the request body is not a valid message of {call.method}: {clip(str(err))}",
            reason="MALFORMED_REQUEST",
        )

    def _log_malformed(self, call: CallState, err: Exception) -> None:
        held = self._malformed_log.allow(call.peer)
        if held is None:
            return
        log.warning(
            "undecodable request to %s from %s (request id %s): %s%s",
            call.method,
            call.peer,
            call.request_id,
            clip(str(err)),
            f" ({held} more from this address not logged)" if held else "",
        )


class Admit:
    """Charges an authenticated call its cost with the rate limiter (when one
    is configured): a unary request by its `costs` entry (default 1), a
    client stream by its meter, message by message. The latest decision's
    trailers replace `call.trailers`; a refusal raises with its own."""

    def __init__(
        self,
        admission: Admission | None,
        costs: Mapping[str, CostFn],
        stream_costs: Mapping[str, Callable[[], StreamMeter]],
    ) -> None:
        self._admission = admission
        self._costs = costs
        self._stream_costs = stream_costs

    def cost(self, call: CallState, request: Any) -> int:
        """What a unary request costs (its `costs` entry, default 1)."""
        cost = self._costs.get(call.method)
        return cost(request) if cost is not None else 1

    def meter(self, method: str) -> StreamMeter | None:
        """A new meter for a client stream of `method`, if it has one."""
        factory = self._stream_costs.get(method)
        return factory() if factory is not None else None

    def charge_now(self, call: CallState, cost: int) -> bool:
        """`charge` when the admission decides without waiting; False when
        `charge` must be awaited instead."""
        if self._admission is None:
            return True
        assert call.principal is not None
        try:
            trailers = self._admission.admit_now(call.principal, call.method, max(cost, 1))
        except DomainError:
            call.trailers = []  # a refusal carries its own
            raise
        if trailers is None:
            return False
        call.trailers = trailers
        return True

    async def charge(self, call: CallState, cost: int) -> None:
        if self._admission is None:
            return
        assert call.principal is not None
        try:
            trailers = await self._admission.admit(call.principal, call.method, max(cost, 1))
        except DomainError:
            call.trailers = []  # a refusal carries its own
            raise
        call.trailers = trailers


class Answer:
    """Ends a call: its trailers on success, its error as a rich status (a
    DomainError) or INTERNAL (anything else, logged with the request id),
    or notes why it ended without an answer. Sets `call.code` and
    `call.reason`; trailers always carry `x-request-id`."""

    def success(self, context: aio.ServicerContext[Any, Any], call: CallState) -> None:
        context.set_trailing_metadata((("x-request-id", call.request_id), *call.trailers))

    async def failure(
        self, context: aio.ServicerContext[Any, Any], call: CallState, exc: Exception
    ) -> None:
        """Aborts the call (raises aio.AbortError)."""
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

    def cancelled(self, call: CallState | None, context: aio.ServicerContext[Any, Any]) -> None:
        """Notes why a call ended without an answer (asyncio.CancelledError or
        GeneratorExit are not Exceptions): its deadline passed, or the client
        (or the server's shutdown) cancelled it."""
        if call is None:
            return
        remaining = context.time_remaining()  # None: the call had no deadline
        slack = max(DEADLINE_SLACK_S, DEADLINE_SLACK_SHARE * (call.timeout_s or 0.0))
        expired = remaining is not None and remaining <= slack
        call.code = "DEADLINE_EXCEEDED" if expired else "CANCELLED"


class Record:
    """After the call: usage (an authenticated call, or its rate-limit
    refusal) and every observer (metrics, the call log)."""

    def __init__(self, usage: UsageRecorder | None, observers: Sequence[CallObserver]) -> None:
        self._usage = usage
        self._observers = tuple(observers)

    def run(self, call: CallState | None, started: float) -> None:
        if call is None:
            return
        if self._usage is not None and call.principal is not None:
            self._usage.record_call(
                call.principal, call.method, rate_limited=call.reason == "RATE_LIMITED"
            )
        duration = time.perf_counter() - started
        for observer in self._observers:
            observer.call_finished(call, duration)


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
