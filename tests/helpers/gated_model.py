"""A blocking fake embedding model whose every call waits for the test to
let it finish: tests see which texts reach the model, in which call, without
depending on timing."""

from __future__ import annotations

import asyncio
import threading

from memoryd.embeddings.hashing import HashingEmbedder

WAIT_S = 10.0  # only a safety net: a test that waits this long has failed


class GatedModel:
    """`model(texts)` records the call, then blocks until `release()` lets
    one call (or `open()` every call) go; answers hashing vectors."""

    def __init__(self, dimension: int = 8) -> None:
        self.calls: list[list[str]] = []
        self._hashing = HashingEmbedder(dimension)
        self._entered = threading.Semaphore(0)
        self._gate = threading.Semaphore(0)
        self._open = threading.Event()

    def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        self._entered.release()
        if not self._open.is_set():
            self._gate.acquire(timeout=WAIT_S)
        return [self._hashing.embed_one(t) for t in texts]

    async def entered(self) -> None:
        """Waits until one more call has reached the model."""
        if not await asyncio.to_thread(self._entered.acquire, True, WAIT_S):
            raise AssertionError("no call reached the model")

    def release(self) -> None:
        """Lets one blocked (or the next) call finish."""
        self._gate.release()

    def open(self) -> None:
        """Lets every call, now and later, finish."""
        self._open.set()
        for _ in range(len(self.calls) + 1):
            self._gate.release()
