"""Micro-batching of concurrent embed calls into one model call."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from memoryd.domain.errors import Unavailable

BatchFn = Callable[[list[str]], list[list[float]]]


@dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future[list[list[float]]]


@dataclass
class _LoopState:
    """What the batcher holds for one event loop (tests run several in turn)."""

    loop: asyncio.AbstractEventLoop
    pending: deque[_Request] = field(default_factory=deque)
    pending_texts: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    running: list[_Request] = field(default_factory=list)
    worker: asyncio.Task[None] | None = None


def _closed_error() -> Unavailable:
    return Unavailable("the embedding model is shut down", reason="EMBEDDER_CLOSED")


class MicroBatcher:
    """Runs a blocking `run_batch(texts) -> vectors` in `executor`, one call
    for many concurrent `submit`s.

    Contract:
    - `submit(texts)` answers `run_batch`'s vectors for exactly its texts, in
      order, as if it had been called alone.
    - One worker task (per event loop, started on first use) runs one batch
      at a time. When it is idle, the first request opens a window of
      `max_wait_s` (closed early once `max_texts` texts wait); then it takes
      waiting requests, whole and in arrival order, up to `max_texts` texts
      (at least one request, however large), and makes one `run_batch` call
      in `executor`. Requests that arrive while the model runs form the next
      batch with no added wait.
    - A cancelled `submit` (e.g. a deadline) is dropped before its batch runs.
    - If a batch of several requests fails, each request is retried alone so
      that one bad request fails only its own caller, with the exception of
      `run_batch`.
    - After `close()`, `submit` raises `Unavailable`, and so do calls that
      were still waiting.
    """

    def __init__(
        self,
        run_batch: BatchFn,
        executor: Executor,
        *,
        max_wait_s: float = 0.0,
        max_texts: int = 64,
    ) -> None:
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        if max_texts < 1:
            raise ValueError("max_texts must be >= 1")
        self._run_batch = run_batch
        self._executor = executor
        self._max_wait_s = max_wait_s
        self._max_texts = max_texts
        self._state: _LoopState | None = None
        self._closed = False

    async def submit(self, texts: Sequence[str]) -> list[list[float]]:
        """The vectors of `texts`, computed in a (possibly shared) batch."""
        if self._closed:
            raise _closed_error()
        if not texts:
            return []
        state = self._ensure_worker()
        request = _Request(list(texts), state.loop.create_future())
        state.pending.append(request)
        state.pending_texts += len(request.texts)
        state.arrived.set()
        if state.pending_texts >= self._max_texts:
            state.full.set()
        return await request.future

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
                if not state.pending:
                    state.arrived.clear()
                    await state.arrived.wait()
                    if self._max_wait_s > 0 and state.pending_texts < self._max_texts:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(state.full.wait(), self._max_wait_s)
                state.running = self._take(state)
                await self._run(state.loop, state.running)
                state.running = []
        except asyncio.CancelledError:
            for request in [*state.running, *state.pending]:
                _fail(request, _closed_error())
            state.pending.clear()
            raise

    def _take(self, state: _LoopState) -> list[_Request]:
        batch: list[_Request] = []
        count = 0
        while state.pending:
            nxt = state.pending[0]
            if batch and count + len(nxt.texts) > self._max_texts:
                break
            state.pending.popleft()
            state.pending_texts -= len(nxt.texts)
            batch.append(nxt)
            count += len(nxt.texts)
        if state.pending_texts < self._max_texts:
            state.full.clear()
        return batch

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        live = [r for r in batch if not r.future.done()]
        if not live:
            return
        texts = [t for r in live for t in r.texts]
        try:
            vectors = await loop.run_in_executor(self._executor, self._run_batch, texts)
            if len(vectors) != len(texts):
                raise RuntimeError(f"the model gave {len(vectors)} vectors for {len(texts)} texts")
        except Exception as exc:
            if len(live) == 1:
                _fail(live[0], exc)
                return
            for request in live:
                await self._run(loop, [request])
            return
        start = 0
        for request in live:
            end = start + len(request.texts)
            if not request.future.done():
                request.future.set_result(vectors[start:end])
            start = end

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


def _fail(request: _Request, exc: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(exc)
