"""Fair micro-batching of concurrent embed calls into bounded model calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from memoryd.domain.errors import QuotaViolation, ResourceExhausted, Unavailable

BatchFn = Callable[[list[str]], list[list[float]]]

# How long a caller refused for a full queue is told to wait: about the time
# the model takes for a few batches.
QUEUE_FULL_RETRY_S = 1.0


@dataclass(eq=False)
class _Request:
    """One `submit`: its texts go to the model a few at a time."""

    key: str
    texts: list[str]
    future: asyncio.Future[list[list[float]]]
    vectors: list[list[float]] = field(default_factory=list)
    taken: int = 0  # texts handed to the model so far
    received: int = 0  # vectors back from the model
    retired: bool = False  # its untaken texts no longer count as queued


@dataclass
class _LoopState:
    """What the batcher holds for one event loop (tests run several in turn)."""

    loop: asyncio.AbstractEventLoop
    queues: dict[str, deque[_Request]] = field(default_factory=dict)
    turns: deque[str] = field(default_factory=deque)  # keys with waiting texts, in turn order
    queued: dict[str, int] = field(default_factory=dict)  # untaken texts of live requests
    pending_texts: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    running: list[_Request] = field(default_factory=list)
    worker: asyncio.Task[None] | None = None


def _closed_error() -> Unavailable:
    return Unavailable("the embedding model is shut down", reason="EMBEDDER_CLOSED")


class MicroBatcher:
    """Runs a blocking `run_batch(texts) -> vectors` in `executor`, one call
    for many concurrent `submit`s, sharing the model fairly between keys.

    Contract:
    - `submit(texts, key)` answers `run_batch`'s vectors for exactly its
      texts, in order, as if it had been called alone.
    - One worker task (per event loop, started on first use) runs one model
      batch at a time. A batch holds at most `max_texts` texts and at most
      `max_chars` characters (a text counts at most `max_chars`; a batch
      holds at least one text), so one `run_batch` call is bounded work.
    - Fairness: each key (e.g. an organization) has its own FIFO queue; a
      batch is filled one text at a time from the keys in turn, and the turn
      carries over to the next batch. A large request is thus split across
      batches, and another key's request waits for at most the batch that
      is running, then shares the next one.
    - A key with `max_queued_texts` texts waiting is refused further work
      with `ResourceExhausted` (reason EMBEDDING_QUEUE_FULL, retry after
      `QUEUE_FULL_RETRY_S`), except that a key with nothing waiting is always
      admitted, however large its request.
    - A cancelled `submit` (a deadline, a client cancel) is dropped: none of
      its texts reach the model after the batch that is running.
    - When the idle worker gets work, it waits up to `max_wait_s` for more
      (closed early once `max_texts` texts wait); requests that arrive while
      the model runs go into the next batch with no added wait.
    - If a batch of several requests fails, each request's part is retried
      alone, so that one bad request fails only its own caller, with the
      exception of `run_batch`.
    - After `close()`, `submit` raises `Unavailable`, and so do calls that
      were still waiting or running; `close` does not wait for the model
      call in progress (at most one batch).
    """

    def __init__(
        self,
        run_batch: BatchFn,
        executor: Executor,
        *,
        max_wait_s: float = 0.0,
        max_texts: int = 64,
        max_chars: int = 16384,
        max_queued_texts: int = 4096,
    ) -> None:
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        if max_texts < 1:
            raise ValueError("max_texts must be >= 1")
        if max_chars < 1:
            raise ValueError("max_chars must be >= 1")
        if max_queued_texts < 1:
            raise ValueError("max_queued_texts must be >= 1")
        self._run_batch = run_batch
        self._executor = executor
        self._max_wait_s = max_wait_s
        self._max_texts = max_texts
        self._max_chars = max_chars
        self._max_queued = max_queued_texts
        self._state: _LoopState | None = None
        self._closed = False

    async def submit(self, texts: Sequence[str], key: str = "") -> list[list[float]]:
        """The vectors of `texts`, computed in (possibly shared) batches."""
        if self._closed:
            raise _closed_error()
        if not texts:
            return []
        state = self._ensure_worker()
        waiting = state.queued.get(key, 0)
        if waiting and waiting + len(texts) > self._max_queued:
            raise ResourceExhausted(
                f"{waiting} texts of this organization are already waiting for the "
                f"embedding model (at most {self._max_queued}); retry shortly",
                [QuotaViolation("embedding queue", f"max_queued_texts={self._max_queued}")],
                retry_after=QUEUE_FULL_RETRY_S,
                reason="EMBEDDING_QUEUE_FULL",
            )
        request = _Request(key, list(texts), state.loop.create_future())
        request.vectors = [[] for _ in request.texts]
        queue = state.queues.get(key)
        if queue is None:
            queue = state.queues[key] = deque()
            state.turns.append(key)
        queue.append(request)
        state.queued[key] = waiting + len(request.texts)
        state.pending_texts += len(request.texts)
        # A cancelled caller frees its place in the queue at once.
        request.future.add_done_callback(lambda _: _retire(state, request))
        state.arrived.set()
        if state.pending_texts >= self._max_texts:
            state.full.set()
        return await request.future

    def queued_texts(self, key: str | None = None) -> int:
        """Texts waiting for the model (of `key`, or of every key)."""
        state = self._state
        if state is None:
            return 0
        return state.pending_texts if key is None else state.queued.get(key, 0)

    def _ensure_worker(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._state
        if state is None or state.loop is not loop:
            # A new loop (the old one is gone or belongs to another test):
            # asyncio objects are bound to one loop, so start afresh.
            state = _LoopState(loop)
            self._state = state
        if state.worker is None or state.worker.done():
            state.worker = loop.create_task(self._work(state), name="memoryd-embed-batcher")
        return state

    async def _work(self, state: _LoopState) -> None:
        try:
            while True:
                if not state.turns:
                    state.arrived.clear()
                    await state.arrived.wait()
                    if self._max_wait_s > 0 and state.pending_texts < self._max_texts:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(state.full.wait(), self._max_wait_s)
                slots = self._take(state)
                state.running = list(dict.fromkeys(r for r, _ in slots))
                await self._run(state.loop, slots)
                state.running = []
        except asyncio.CancelledError:
            waiting = [r for q in state.queues.values() for r in q]
            for request in [*state.running, *waiting]:
                _fail(request, _closed_error())
            state.queues.clear()
            state.turns.clear()
            raise

    def _take(self, state: _LoopState) -> list[tuple[_Request, int]]:
        """The next batch: (request, text index) slots, one text per key in turn."""
        slots: list[tuple[_Request, int]] = []
        chars = 0
        while state.turns and len(slots) < self._max_texts:
            key = state.turns[0]
            queue = state.queues[key]
            while queue and queue[0].future.done():
                _retire(state, queue.popleft())
            if not queue:
                state.turns.popleft()
                del state.queues[key]
                continue
            request = queue[0]
            weight = min(len(request.texts[request.taken]), self._max_chars)
            if slots and chars + weight > self._max_chars:
                break
            slots.append((request, request.taken))
            chars += weight
            request.taken += 1
            _count(state, key, -1)
            if request.taken == len(request.texts):
                queue.popleft()
            if queue:
                state.turns.rotate(-1)
            else:
                state.turns.popleft()
                del state.queues[key]
        if state.pending_texts < self._max_texts:
            state.full.clear()
        return slots

    async def _run(
        self, loop: asyncio.AbstractEventLoop, slots: list[tuple[_Request, int]]
    ) -> None:
        live = [(r, i) for r, i in slots if not r.future.done()]
        if not live:
            return
        texts = [r.texts[i] for r, i in live]
        try:
            vectors = await loop.run_in_executor(self._executor, self._run_batch, texts)
            if len(vectors) != len(texts):
                raise RuntimeError(f"the model gave {len(vectors)} vectors for {len(texts)} texts")
        except Exception as exc:
            requests = list(dict.fromkeys(r for r, _ in live))
            if len(requests) == 1:
                _fail(requests[0], exc)
                return
            for request in requests:
                await self._run(loop, [(r, i) for r, i in live if r is request])
            return
        for (request, i), vector in zip(live, vectors, strict=True):
            if request.future.done():
                continue
            request.vectors[i] = vector
            request.received += 1
            if request.received == len(request.texts):
                request.future.set_result(request.vectors)

    async def close(self) -> None:
        """Stops the worker; waiting callers get `Unavailable`. Idempotent."""
        self._closed = True
        state, self._state = self._state, None
        if state is None or state.worker is None or state.worker.done():
            return
        state.worker.cancel()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is state.loop:
            with contextlib.suppress(asyncio.CancelledError):
                await state.worker


def _count(state: _LoopState, key: str, delta: int) -> None:
    left = state.queued.get(key, 0) + delta
    if left > 0:
        state.queued[key] = left
    else:
        state.queued.pop(key, None)
    state.pending_texts += delta


def _retire(state: _LoopState, request: _Request) -> None:
    """A finished (answered, failed or cancelled) request's untaken texts stop
    counting as queued; they are never taken (`_take` skips done requests)."""
    if request.retired:
        return
    request.retired = True
    untaken = len(request.texts) - request.taken
    if untaken:
        request.taken = len(request.texts)
        _count(state, request.key, -untaken)


def _fail(request: _Request, exc: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(exc)
