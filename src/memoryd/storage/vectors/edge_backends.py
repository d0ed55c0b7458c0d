"""Where the Qdrant Edge engine runs for `EdgeVectorStore`: on one worker
thread of this process (`ThreadBackend`), or in a child process that owns
the shard (`ChildBackend`, the server's default; see
`memoryd.storage.vectors.edge_child` for its side). Either runs the
engine's calls one at a time and answers each with a future; the store
decides how long to wait for it. The thread runs them in order; the child
answers the reads that arrive while an upsert is being prepared before it
(`edge_child.serve`).
"""

from __future__ import annotations

import abc
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from memoryd.domain.errors import Unavailable
from memoryd.storage.vectors.edge_child import HEADER, encode
from memoryd.storage.vectors.edge_engine import EdgeEngine, closed

log = logging.getLogger("memoryd.storage.edge")

# How long a child that was asked to exit may take to flush and let go.
_CHILD_EXIT_S = 30.0
# ...and one that was killed (SIGKILL waits for a disk I/O in progress).
_KILLED_EXIT_S = 2.0
# The child's program: this process's import path (so it runs this very copy
# of memoryd, wherever it was imported from), then edge_child's main.
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv.pop(1)); "
    "from memoryd.storage.vectors.edge_child import main; sys.exit(main(sys.argv))"
)


def engine_options(
    path: str | os.PathLike[str],
    *,
    sync_writes: bool = False,
    optimize_on_close: bool = True,
    search_threads: int | None = None,
    min_free_bytes: int = 0,
) -> dict[str, Any]:
    """The keyword arguments of an `EdgeEngine` (the first thing a child
    engine process receives)."""
    return {
        "path": str(path),
        "sync_writes": sync_writes,
        "optimize_on_close": optimize_on_close,
        "search_threads": search_threads,
        "min_free_bytes": min_free_bytes,
    }


class Backend(Protocol):
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


class ThreadBackend:
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


class _Connection(abc.ABC):
    """The request/answer protocol of `edge_child` over one socket:
    requests are written without waiting (asyncio buffers them), and one
    reader task matches answers to calls by id, so no thread of this
    process ever waits on the engine. Subclasses say what a lost
    connection means (`_lost`, `_dead`) and what to do about a garbled
    answer (`_bad_answer`)."""

    _peer = "the vector engine"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._alive = True
        self._stopping = False
        self._reading = asyncio.get_running_loop().create_task(self._read())

    @property
    def alive(self) -> bool:
        return self._alive

    def call(self, name: str, *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._alive:
            future.set_exception(self._dead())
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
            pass  # the other side has gone
        except Exception:
            log.exception("bad answer from %s: closing the connection", self._peer)
            self._bad_answer()
        self._alive = False
        pending, self._pending = self._pending, {}
        err = closed() if self._stopping else await self._lost()
        for future in pending.values():
            if not future.done():
                future.set_exception(err)

    @abc.abstractmethod
    def _dead(self) -> Unavailable:
        """The error of a call made after the connection was lost."""

    @abc.abstractmethod
    def _bad_answer(self) -> None:
        """After an answer that does not decode (the connection ends)."""

    @abc.abstractmethod
    async def _lost(self) -> Unavailable:
        """The error of the calls in flight when the connection was lost
        (not by `stop`); logs the loss."""


class ChildBackend(_Connection):
    """The engine in a child process (`memoryd.storage.edge_child`), over a
    Unix socket pair (see `_Connection`)."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._proc = proc
        super().__init__(reader, writer)

    @classmethod
    async def start(cls, engine_kwargs: dict[str, Any]) -> ChildBackend:
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
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            # cancelled (a start that failed meanwhile): no one else knows of
            # the child, so it goes now rather than when the socket is collected
            ours.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(BaseException):
                await asyncio.shield(proc.wait())
            raise
        child = cls(proc, reader, writer)
        writer.write(encode(engine_kwargs))
        return child

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _dead(self) -> Unavailable:
        return crashed(_exit(self._proc.returncode))

    def _bad_answer(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    async def _lost(self) -> Unavailable:
        code = await self._proc.wait()
        log.error(
            "the vector engine process %d died (%s): its calls answer UNAVAILABLE and "
            "the next call starts a new one; acknowledged writes are in its write-ahead log",
            self._proc.pid,
            _exit(code),
        )
        return crashed(_exit(code))

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


class HeadStart:
    """A child engine process already opening an existing store, begun
    before the rest of the server is imported and built (`memoryd serve`):
    importing the server takes ~1.5 s and opening a large store seconds
    more, and the child does the second while the parent does the first.

    The store made with the same engine options, opened for the same model,
    adopts it (`EdgeVectorStore(head_start=...)`) and gets what the open
    answered, errors included; anything else discards it (the child is
    killed; an open cut short loses nothing, see `edge_engine`)."""

    def __init__(
        self,
        backend: ChildBackend,
        opening: asyncio.Future[Any],
        options: dict[str, Any],
        identity: tuple[str, int],
    ) -> None:
        self._backend: ChildBackend | None = backend
        self._opening = opening
        self._options = options
        self._identity = identity

    @classmethod
    async def begin(cls, options: dict[str, Any], model_id: str, dimension: int) -> HeadStart:
        """Starts the child and sends it the open; returns at once (the
        request is in the socket, so the child goes on while this process
        imports, even with its event loop blocked)."""
        backend = await ChildBackend.start(options)
        return cls(
            backend, backend.call("open", model_id, dimension), options, (model_id, dimension)
        )

    @property
    def pid(self) -> int | None:
        """The child's process id (None once adopted or discarded)."""
        return None if self._backend is None else self._backend.pid

    async def adopt(self, options: dict[str, Any], identity: tuple[str, int]) -> Backend | None:
        """The backend with the store open, when `options` and `identity`
        are those it was begun with (raising what the open raised, the
        child stopped); None, the child stopped, when they are not; None
        once adopted or discarded."""
        backend, self._backend = self._backend, None
        if backend is None:
            return None
        if (options, identity) != (self._options, self._identity):
            log.debug("the vector engine's head start does not match the store: discarded")
            await self._stop(backend)
            return None
        try:
            await self._opening
        except BaseException:
            await backend.stop(kill=True)
            raise
        return backend

    async def discard(self) -> None:
        """Stops the child unless a store adopted it. Idempotent."""
        backend, self._backend = self._backend, None
        if backend is not None:
            await self._stop(backend)

    async def _stop(self, backend: ChildBackend) -> None:
        if not self._opening.done():
            self._opening.cancel()
        elif not self._opening.cancelled():
            self._opening.exception()  # retrieved: nobody will read it
        await backend.stop(kill=True)


async def start_host(socket_path: str) -> asyncio.subprocess.Process:
    """Starts the shared engine host (`edge_child.host`) on `socket_path`
    and returns once it listens. It exits on SIGTERM (closing the engine)
    or when this process dies; OSError when it does not start."""
    level = logging.getLevelName(logging.getLogger("memoryd").getEffectiveLevel())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _BOOT,
        json.dumps(sys.path),
        "--host",
        socket_path,
        str(os.getpid()),
        str(level),
        stdin=asyncio.subprocess.DEVNULL,
    )
    deadline = asyncio.get_running_loop().time() + 30
    while not await asyncio.to_thread(os.path.exists, socket_path):
        if proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise OSError(f"the vector engine host for {socket_path} did not start")
        await asyncio.sleep(0.02)
    return proc


class HostBackend(_Connection):
    """A connection to the engine host that a `memoryd serve --workers N`
    parent runs for its workers (`edge_child.host`): the same protocol as
    `ChildBackend`, but the engine outlives this connection and is shared
    with the other workers. When the host goes away, calls in flight answer
    UNAVAILABLE and the next call connects again (the parent replaces or
    stops its workers when its host dies)."""

    _peer = "the shared vector engine"

    @classmethod
    async def connect(cls, path: str, engine_kwargs: dict[str, Any]) -> HostBackend:
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError as err:
            raise crashed(f"cannot reach the shared engine at {path}: {err.strerror}") from err
        backend = cls(reader, writer)
        writer.write(encode(engine_kwargs))
        return backend

    @property
    def pid(self) -> int | None:
        return None

    def _dead(self) -> Unavailable:
        return crashed("the shared engine connection closed")

    def _bad_answer(self) -> None:
        pass  # the host is the parent's to replace

    async def _lost(self) -> Unavailable:
        log.error("the shared vector engine closed the connection")
        return crashed("the shared engine connection closed")

    async def stop(self, *, kill: bool) -> None:
        self._stopping = True
        self._writer.close()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._reading, _KILLED_EXIT_S if kill else _CHILD_EXIT_S)


def crashed(how: str) -> Unavailable:
    return Unavailable(
        f"the vector engine process stopped ({how}); retry: it is restarted on the next call",
        reason="VECTOR_ENGINE_CRASHED",
    )


def _exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
