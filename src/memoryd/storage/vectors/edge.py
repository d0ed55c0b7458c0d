"""The embedded vector store: Qdrant Edge, the Qdrant engine in-process.

One directory holds one store:

    <path>/memoryd.json   the marker: the model id and dimension it was made for
    <path>/memoryd.lock   held (flock) while a process has the store open
    <path>/shard/         the Edge shard: a dense vector ("") and a keyword
                          vector ("bm25", BM25 with the IDF modifier) per point

How the engine is used, and why:

- The engine (`memoryd.storage.vectors.edge_engine`) runs in a child
  process that owns the shard (`process=True`, the server's default) or on
  one worker thread of this process (`memoryd.storage.vectors.edge_backends`).
  The engine holds the GIL for the whole of a call, so in a thread a call
  blocked on a hung disk stops every Python thread, the event loop and
  health checks included; in the child it stops only the child. Either
  way calls run one at a time, as the shard expects, and are kept small (a
  few hundred points at most; deletes and sweeps go in batches); the child
  answers the reads that arrive while it builds an upsert's points (half of
  an upsert's time) between slices of that work (`edge_child.serve`). The child
  costs a process hop per call (measured on a busy 2-core machine: a
  search of 300 points, 0.445 ms median in the child vs 0.430 ms on a
  thread, within the noise). It is restarted on the next call when it
  dies (a SIGBUS, a kill): its calls in flight answer Unavailable
  (VECTOR_ENGINE_CRASHED), and the write-ahead log keeps every
  acknowledged write.
- No HNSW graph is ever built (`indexing_threshold=0`): building one blocks
  the process for minutes at 100k points. A search is an exact scan of the
  points its filter selects, which the `tenant` keyword index (is_tenant)
  narrows to one tenant first: well under a millisecond for a few hundred
  points per tenant.
- Durability: an upsert or delete is in the shard's write-ahead log, a
  memory-mapped file, when the call returns, so it survives the process
  being killed (kill -9) without any flush; `tests/integration` proves it.
  Without a flush the data is in the page cache only: a power loss or kernel
  crash can lose the last seconds of writes. `sync_writes=True` flushes the
  whole shard (msync + fsync of every segment file) after each write call,
  which survives those too but costs ~20 ms per call (measured: 2.5k
  single-record upserts/s without, 40/s with), hence off by default.
- Segments are optimized (deleted points vacuumed, small segments merged)
  only when asked (`optimize`) and on `close`, never behind a call.
- The server never seals the appendable segment, which holds its payload
  indexes in memory and rebuilds them at every open (~9 s at 1M points).
  `memoryd compact-vectors` does, offline (`edge_engine.compact_store`):
  a sealed segment maps its payload indexes from files, so it opens in
  no time; sealing costs ~200 µs a point and would block every call.
- A shard made before keyword vectors existed is copied, when the store
  opens, into `shard.next` with them, and the directories swapped: the
  engine cannot add a vector to an existing shard
  (`edge_engine.EdgeEngine._add_keywords`).
- Full disk: the engine's files are sparse and memory-mapped, so a write
  into a full file system kills the process with SIGBUS instead of failing.
  Every write (and `open`, which may replay the WAL) first checks that at
  least `min_free_bytes` are free (`memoryd.storage.disk`) and is refused
  with ResourceExhausted (DISK_FULL) otherwise; an optimization, which
  rewrites segments, runs only with room for a copy of the shard.
- Hung disk: an engine call blocked on I/O is waited for `timeout_s` at
  most; the caller then gets Unavailable (STORAGE_TIMEOUT), and while that
  engine call is still running every further call is refused at once
  (STORAGE_STUCK) instead of queueing behind it, so health reports
  NOT_SERVING. `on_change` is called when a call gets stuck and when it
  comes back. In thread mode this holds only while the event loop can run:
  the engine holds the GIL for the whole of a call (measured: `flush` let
  another thread run once in 180 ms), so a call blocked inside the engine
  stops every Python thread; in process mode the server keeps answering.
  Closing a stuck store kills its child without a flush (the WAL has
  every acknowledged write).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from memoryd.crypto.sealer import Sealer
from memoryd.domain.errors import FailedPrecondition, Unavailable
from memoryd.storage.vectors import ranking as rk
from memoryd.storage.vectors.edge_backends import (
    Backend,
    ChildBackend,
    HeadStart,
    HostBackend,
    ThreadBackend,
    crashed,
    engine_options,
)
from memoryd.storage.vectors.edge_engine import (
    LOCK,
    MARKER,
    SHARD,
    Cond,
    EdgeEngine,
    HitTuple,
    PlainConditions,
    closed,
)
from memoryd.storage.vectors.layout import Hit, Point
from memoryd.storage.vectors.point_store import PointStore

__all__ = ["LOCK", "MARKER", "SHARD", "EdgeVectorStore"]

log = logging.getLogger("memoryd.storage.edge")

_CONDITIONS = PlainConditions()


class EdgeVectorStore(PointStore[Cond, Cond]):
    """A `VectorStore` in a local directory, on Qdrant Edge.

    `path` is the store's directory (created when missing). Only one process
    may have it open: a second `open` raises FailedPrecondition.
    `sync_writes` flushes the shard after every write (see the module
    docstring); `optimize_on_close` vacuums and merges segments on `close`.
    `search_threads` sizes the engine's search pool (None: from the CPUs).
    `min_free_bytes`: writes are refused (ResourceExhausted, DISK_FULL) while
    less is free on the store's file system (0: no floor). `timeout_s`
    bounds the wait for one engine call and `on_change` is told when a call
    gets stuck or comes back. `process`: run the engine in a child process
    that owns the shard rather than on a thread (see the module docstring).
    `engine_socket`: instead, use the engine that the parent of
    `memoryd serve --workers N` hosts on this Unix socket, shared with the
    other workers.
    `tuning`: how searches fuse and how many candidates they weigh.
    `head_start`: a child engine already opening this store (process mode),
    adopted by the first `open` when it matches (see `HeadStart`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync_writes: bool = False,
        optimize_on_close: bool = True,
        search_threads: int | None = None,
        min_free_bytes: int = 0,
        timeout_s: float | None = None,
        on_change: Callable[[], None] | None = None,
        process: bool = False,
        tuning: rk.Tuning | None = None,
        sealer: Sealer | None = None,
        engine_socket: str = "",
        head_start: HeadStart | None = None,
    ) -> None:
        super().__init__(tuning, sealer)
        # shared with the other workers of `serve --workers N`: the write
        # lock below no longer covers every writer, so a guarded write is
        # checked again afterwards, as with a Qdrant server
        self._engine_socket = engine_socket
        self._recheck_owners = bool(engine_socket)
        self._path = Path(path)
        self._engine_kwargs = engine_options(
            self._path,
            sync_writes=sync_writes,
            optimize_on_close=optimize_on_close,
            search_threads=search_threads,
            min_free_bytes=min_free_bytes,
        )
        self._head_start = head_start
        self._process = process
        self._timeout_s = timeout_s
        self._on_change = on_change
        # monotonic start of the engine call that overran timeout_s, if it still runs
        self._stuck_since: float | None = None
        self._backend: Backend | None = None
        self._opened_for: tuple[str, int] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._writes = asyncio.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def engine_pid(self) -> int | None:
        """The process id of the engine's child process; None in thread mode
        or when none runs."""
        backend = self._backend
        return backend.pid if backend is not None and backend.alive else None

    # --- lifecycle ----------------------------------------------------------

    async def open(self, model_id: str, dimension: int) -> None:
        """Creates the store for `model_id` (`dimension`-d vectors) or opens
        it, checking that it was made for them, and upgrades points of an
        older payload layout in place.

        Raises FailedPrecondition when the store was made for another model
        or dimension, or another process has it open.
        """
        if self._backend is not None:
            return
        self._backend = await self._started(model_id, dimension)
        self._opened_for = (model_id, dimension)
        self._dimension = dimension
        try:
            await self._upgrade_points()
        except BaseException:
            await self.close()
            raise

    async def _started(self, model_id: str, dimension: int) -> Backend:
        """A new backend with the shard open."""
        head, self._head_start = self._head_start, None
        if head is not None:
            if self._process and not self._engine_socket:
                adopted = await head.adopt(self._engine_kwargs, (model_id, dimension))
                if adopted is not None:
                    return adopted
            else:
                await head.discard()
        backend: Backend
        if self._engine_socket:
            backend = await HostBackend.connect(self._engine_socket, self._engine_kwargs)
        elif self._process:
            backend = await ChildBackend.start(self._engine_kwargs)
        else:
            backend = ThreadBackend(EdgeEngine(**self._engine_kwargs))
        try:
            await backend.call("open", model_id, dimension)
        except BaseException:
            await backend.stop(kill=True)
            raise
        return backend

    async def close(self) -> None:
        """Optimizes (if so configured), flushes and closes the shard. Idempotent."""
        backend = self._backend
        if backend is None:
            return
        restarting, self._restarting = self._restarting, None
        if restarting is not None and not restarting.done():
            restarting.cancel()
            with contextlib.suppress(BaseException):
                await restarting
            backend = self._backend or backend
        if self._stuck_since is not None or not backend.alive:
            # Waiting would hang shutdown for as long as the disk does; the
            # WAL holds every acknowledged write, and the flock goes with
            # the process (the child's, or ours at exit).
            if backend.alive:
                log.error("closing the vector store at %s without a flush: it is stuck", self._path)
            await backend.stop(kill=True)
        else:
            async with self._writes:
                try:
                    await backend.call("close")
                finally:
                    await backend.stop(kill=False)
        self._backend = None
        self._dimension = None

    async def optimize(self) -> bool:
        """Vacuums deleted points and merges small segments now. Blocks the
        engine while it runs (and, in thread mode, holding the GIL, the
        process): call it at quiet times. Answers whether anything was
        optimized."""
        async with self._writes:
            return bool(await self._call("optimize"))

    # --- engine primitives --------------------------------------------------

    @property
    def _c(self) -> PlainConditions:
        return _CONDITIONS

    def _write_lock(self) -> contextlib.AbstractAsyncContextManager[Any]:
        # One process owns the shard, so a lock makes check-then-write atomic.
        return self._writes

    async def _call(self, name: str, *args: Any) -> Any:
        """Runs the engine's `name(*args)`, waiting `timeout_s` at most.

        Raises Unavailable: STORAGE_STUCK at once while an earlier call
        overran its timeout and still runs, STORAGE_TIMEOUT when this one
        overruns (it goes on running in the engine; a write may still land),
        VECTOR_ENGINE_CRASHED when the engine's process died under it (the
        next call starts a new one)."""
        backend = self._backend
        if backend is None:
            raise closed()
        if self._stuck_since is not None:
            raise _stuck(time.monotonic() - self._stuck_since)
        if not backend.alive:
            backend = await self._revived(backend)
        started = time.monotonic()
        future = backend.call(name, *args)
        if self._timeout_s is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
        except TimeoutError:
            self._got_stuck(future, started)
            raise Unavailable(
                f"the vector store did not answer within {self._timeout_s:g} s "
                f"(the disk of {self._path} may be hung); retry later",
                reason="STORAGE_TIMEOUT",
            ) from None

    async def _revived(self, dead: Backend) -> Backend:
        """A live backend in place of `dead`: one restart at a time, which
        every caller meanwhile waits for (`timeout_s` at most)."""
        if self._backend is dead and (self._restarting is None or self._restarting.done()):
            self._restarting = asyncio.get_running_loop().create_task(self._restart(dead))
            self._restarting.add_done_callback(_retrieved)
        if self._restarting is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._restarting), self._timeout_s)
            except TimeoutError:
                raise Unavailable(
                    "the vector engine is restarting; retry shortly",
                    reason="VECTOR_ENGINE_RESTARTING",
                ) from None
        backend = self._backend
        if backend is None:
            raise closed()
        if not backend.alive:
            raise crashed("it died again while starting")
        return backend

    async def _restart(self, dead: Backend) -> None:
        await dead.stop(kill=True)  # reaped: its lock on the directory is gone
        assert self._opened_for is not None
        try:
            self._backend = await self._started(*self._opened_for)
        except FailedPrecondition as err:
            # the dead one has not let go of the directory yet (blocked on the disk)
            raise Unavailable(
                f"the vector engine could not be restarted yet: {err.message}",
                reason="VECTOR_ENGINE_RESTARTING",
            ) from err
        log.warning("the vector engine of %s was restarted", self._path)

    def _got_stuck(self, future: asyncio.Future[Any], started: float) -> None:
        # The engine runs calls one at a time, so the stuck call is the one
        # running or one queued behind it: either way, nothing answers until
        # `future` is done.
        if self._stuck_since is not None:
            return
        self._stuck_since = started
        log.error(
            "the vector store at %s has not answered for %.0f s: refusing its calls until it does",
            self._path,
            time.monotonic() - started,
        )
        future.add_done_callback(self._unstuck)
        if self._on_change is not None:
            self._on_change()

    def _unstuck(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: its caller has gone
        since, self._stuck_since = self._stuck_since, None
        log.warning(
            "the vector store at %s answers again (after %.0f s)",
            self._path,
            time.monotonic() - (since or time.monotonic()),
        )
        if self._on_change is not None:
            self._on_change()

    async def _upsert(self, points: list[Point], guard: Cond) -> None:
        await self._call(
            "upsert", [(pt.id, pt.vector, pt.payload, pt.keywords) for pt in points], guard
        )

    async def _owners(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        return cast(dict[str, tuple[str, str]], await self._call("owners", list(ids)))

    async def _scroll(
        self,
        flt: Cond,
        limit: int,
        *,
        newest_first: bool = False,
        offset: str | None = None,
        with_payload: bool = True,
        with_vectors: bool = False,
    ) -> tuple[list[Hit], str | None]:
        found: tuple[list[HitTuple], str | None] = await self._call(
            "scroll", flt, limit, newest_first, offset, with_payload, with_vectors
        )
        records, next_offset = found
        return [Hit(*r) for r in records], next_offset

    async def _query(self, flt: Cond, plan: rk.Plan[Cond]) -> list[Hit]:
        found: list[HitTuple] = await self._call("query", flt, plan)
        return [Hit(*r) for r in found]

    async def _count(self, flt: Cond) -> int:
        return int(await self._call("count", flt))

    async def _delete(self, flt: Cond) -> None:
        await self._call("delete", flt)

    async def _set_payloads(self, changes: list[tuple[Cond, dict[str, Any]]]) -> None:
        await self._call("set_payloads", changes)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # said to its waiters, if any


def _stuck(seconds: float) -> Unavailable:
    return Unavailable(
        f"a vector store call has been running for {seconds:.0f} s (the disk may be hung); "
        "calls are refused until it answers; retry later",
        reason="STORAGE_STUCK",
    )
