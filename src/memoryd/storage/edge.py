"""The embedded vector store: Qdrant Edge, the Qdrant engine in-process.

One directory holds one store:

    <path>/memoryd.json   the marker: the model id and dimension it was made for
    <path>/memoryd.lock   held (flock) while a process has the store open
    <path>/shard/         the Edge shard

How the engine is used, and why:

- The engine (`memoryd.storage.edge_engine`) runs in a child process that
  owns the shard (`process=True`, the server's default) or on one worker
  thread of this process. The engine holds the GIL for the whole of a call,
  so in a thread a call blocked on a hung disk stops every Python thread,
  the event loop and health checks included; in the child it stops only
  the child. Either way calls run one at a time, as the shard expects, and
  are kept small (a few hundred points at most; deletes and sweeps go in
  batches). The child costs a process hop per call (measured on a busy
  2-core machine: a search of 300 points, 0.445 ms median in the child vs
  0.430 ms on a thread, within the noise). It is restarted on the next
  call when it dies (a SIGBUS, a kill): its calls in flight answer
  Unavailable (VECTOR_ENGINE_CRASHED), and the write-ahead log keeps every
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
import itertools
import json
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, cast

from memoryd.domain.errors import FailedPrecondition, Unavailable
from memoryd.storage._base import PointStore
from memoryd.storage._payload import Hit, Point
from memoryd.storage.edge_child import HEADER, encode
from memoryd.storage.edge_engine import (
    LOCK,
    MARKER,
    SHARD,
    Cond,
    EdgeEngine,
    HitTuple,
    PlainConditions,
    closed,
)

__all__ = ["LOCK", "MARKER", "SHARD", "EdgeVectorStore"]

log = logging.getLogger("memoryd.storage.edge")

_CONDITIONS = PlainConditions()
# How long a child that was asked to exit may take to flush and let go.
_CHILD_EXIT_S = 30.0
# ...and one that was killed (SIGKILL waits for a disk I/O in progress).
_KILLED_EXIT_S = 2.0
# The child's program: this process's import path (so it runs this very copy
# of memoryd, wherever it was imported from), then edge_child's main.
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv.pop(1)); "
    "from memoryd.storage.edge_child import main; sys.exit(main(sys.argv))"
)


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
    ) -> None:
        super().__init__()
        self._path = Path(path)
        self._engine_kwargs: dict[str, Any] = {
            "path": str(self._path),
            "sync_writes": sync_writes,
            "optimize_on_close": optimize_on_close,
            "search_threads": search_threads,
            "min_free_bytes": min_free_bytes,
        }
        self._process = process
        self._timeout_s = timeout_s
        self._on_change = on_change
        # monotonic start of the engine call that overran timeout_s, if it still runs
        self._stuck_since: float | None = None
        self._backend: _Backend | None = None
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
        it, checking that it was made for them.

        Raises FailedPrecondition when the store was made for another model
        or dimension, or another process has it open.
        """
        if self._backend is not None:
            return
        self._backend = await self._started(model_id, dimension)
        self._opened_for = (model_id, dimension)
        self._dimension = dimension

    async def _started(self, model_id: str, dimension: int) -> _Backend:
        """A new backend with the shard open."""
        backend: _Backend
        if self._process:
            backend = await _Child.start(self._engine_kwargs)
        else:
            backend = _Thread(EdgeEngine(**self._engine_kwargs))
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

    async def _revived(self, dead: _Backend) -> _Backend:
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
            raise _crashed("it died again while starting")
        return backend

    async def _restart(self, dead: _Backend) -> None:
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
        await self._call("upsert", [(pt.id, pt.vector, pt.payload) for pt in points], guard)

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

    async def _query(
        self, flt: Cond, vector: list[float], limit: int, min_score: float | None
    ) -> list[Hit]:
        found: list[HitTuple] = await self._call("query", flt, vector, limit, min_score)
        return [Hit(*r) for r in found]

    async def _count(self, flt: Cond) -> int:
        return int(await self._call("count", flt))

    async def _delete(self, flt: Cond) -> None:
        await self._call("delete", flt)


# --- where the engine runs ------------------------------------------------------


class _Backend(Protocol):
    """Runs `EdgeEngine` calls one at a time, in order."""

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    def call(self, name: str, *args: Any) -> asyncio.Future[Any]:
        """Starts `name(*args)` on the engine; the future has its result."""
        ...

    async def stop(self, *, kill: bool) -> None:
        """Lets go of the engine (after a `close` call, or without one when
        `kill`), not waiting for a stuck call when `kill`."""
        ...


class _Thread:
    """The engine on one worker thread of this process."""

    def __init__(self, engine: EdgeEngine) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge")

    @property
    def alive(self) -> bool:
        return True

    @property
    def pid(self) -> int | None:
        return None

    def call(self, name: str, *args: Any) -> asyncio.Future[Any]:
        fn = getattr(self.engine, name)
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def stop(self, *, kill: bool) -> None:
        # not killed: the engine has been closed, so nothing is queued
        self._executor.shutdown(wait=not kill)


class _Child:
    """The engine in a child process (`memoryd.storage.edge_child`), over a
    Unix socket: requests are written without waiting (asyncio buffers
    them), and one reader task matches answers to calls by id, so no thread
    of this process ever waits on the engine."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._proc = proc
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._alive = True
        self._stopping = False
        self._reading = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, engine_kwargs: dict[str, Any]) -> _Child:
        ours, theirs = socket.socketpair()
        # The kernel kills the child when the thread that forks it dies:
        # fine for the main thread (the process), not for any other.
        pdeathsig = threading.current_thread() is threading.main_thread()
        level = logging.getLevelName(logging.getLogger("memoryd").getEffectiveLevel())
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _BOOT,
                json.dumps(sys.path),
                str(theirs.fileno()),
                str(os.getpid()),
                "1" if pdeathsig else "0",
                str(level),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        child = cls(proc, reader, writer)
        writer.write(encode(engine_kwargs))
        return child

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def call(self, name: str, *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._alive:
            future.set_exception(_crashed(_exit(self._proc.returncode)))
            return future
        req_id = next(self._ids)
        frame = encode((req_id, name, args))
        self._pending[req_id] = future
        self._writer.write(frame)
        return future

    async def _read(self) -> None:
        try:
            while True:
                header = await self._reader.readexactly(HEADER.size)
                body = await self._reader.readexactly(HEADER.unpack(header)[0])
                req_id, ok, value = pickle.loads(body)
                future = self._pending.pop(req_id, None)
                if future is None or future.done():
                    continue  # its caller has gone (cancelled)
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the child has gone
        except Exception:
            log.exception("bad answer from the vector engine process: stopping it")
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        self._alive = False
        pending, self._pending = self._pending, {}
        if self._stopping:
            err = closed()
        else:
            code = await self._proc.wait()
            log.error(
                "the vector engine process %d died (%s): its calls answer UNAVAILABLE and "
                "the next call starts a new one; acknowledged writes are in its write-ahead log",
                self._proc.pid,
                _exit(code),
            )
            err = _crashed(_exit(code))
        for future in pending.values():
            if not future.done():
                future.set_exception(err)

    async def stop(self, *, kill: bool) -> None:
        self._stopping = True
        if kill and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        # end-of-file: the child closes the engine (if still open) and exits
        self._writer.close()
        try:
            await asyncio.wait_for(self._proc.wait(), _KILLED_EXIT_S if kill else _CHILD_EXIT_S)
        except TimeoutError:
            # A process blocked in the kernel on a hung disk dies only when
            # the disk answers: let it go (it is killed, and the lock goes
            # with it) rather than hold up shutdown.
            log.error("the vector engine process %d does not exit: killing it", self._proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), _KILLED_EXIT_S)
        if self._proc.returncode is None:
            self._reading.cancel()
        with contextlib.suppress(BaseException):
            await self._reading


def _exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # said to its waiters, if any


def _stuck(seconds: float) -> Unavailable:
    return Unavailable(
        f"a vector store call has been running for {seconds:.0f} s (the disk may be hung); "
        "calls are refused until it answers; retry later",
        reason="STORAGE_STUCK",
    )


def _crashed(how: str) -> Unavailable:
    return Unavailable(
        f"the vector engine process stopped ({how}); retry: it is restarted on the next call",
        reason="VECTOR_ENGINE_CRASHED",
    )
