"""The shard-owner process: runs `EdgeEngine` for one server process.

Started by `EdgeVectorStore` (process mode, through
`edge_backends.ChildBackend`) as `main(argv)` with argv

    [program, FD, PARENT_PID, PDEATHSIG (1 or 0), LOG_LEVEL]

FD is its end of a Unix socket pair. Frames both ways are a 4-byte
big-endian length and a pickle. The first frame is the engine's keyword
arguments; then each request is `(id, call, args)` and is answered by
`(id, True, result)` or `(id, False, exception)`, in order except for the
reads `serve` answers while an upsert is prepared.

Why a process: the engine holds the GIL for the whole of a call, so a call
blocked on a hung disk would stop every thread of the server, health checks
included. Here it stops only this process.

Shared mode (`memoryd serve --workers N`): `host(argv)` with argv

    [program, "--host", SOCKET_PATH, PARENT_PID, LOG_LEVEL]

listens on a Unix socket path instead, for the N worker processes of one
server. Each connection speaks the protocol above; the first connection's
kwargs make the engine (later ones are ignored), `open` is idempotent and a
client's `close` only ends its connection: the engine is closed when the
supervising parent closes the host (SIGTERM, or the parent's death). One
thread per connection; every engine call holds one lock, so calls run one
at a time, as the shard expects (an upsert's points are built before it
takes the lock).

It lives exactly as long as the server wants it: it exits when the socket
reaches end-of-file (the server closed it, or died), and on Linux the
kernel kills it when the server's thread that started it dies
(PR_SET_PDEATHSIG), so a server killed with SIGKILL never leaves it holding
the data directory's lock. It ignores SIGINT and SIGTERM: a Ctrl-C or a
`kill` of the process group must let the server close the shard cleanly.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

from memoryd.storage.vectors.edge_engine import READS, EdgeEngine, closed, prepare

log = logging.getLogger("memoryd.storage.edge")

HEADER = struct.Struct(">I")
PR_SET_PDEATHSIG = 1


def encode(obj: Any) -> bytes:
    """One frame: the length, then the pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    """`n` bytes, or None at end-of-file."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _recv(sock: socket.socket) -> Any:
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    body = _recv_exactly(sock, HEADER.unpack(header)[0])
    if body is None:
        return None
    return pickle.loads(body)


def _answer(sock: socket.socket, req_id: int, ok: bool, value: Any) -> None:
    try:
        frame = encode((req_id, ok, value))
    except Exception as err:  # an unpicklable result or exception
        frame = encode((req_id, False, RuntimeError(f"{type(value).__name__}: {value}: {err}")))
    sock.sendall(frame)


def _die_with_parent(parent_pid: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(0)


def _run(
    engine: EdgeEngine,
    sock: socket.socket,
    request: Any,
    between: Callable[[], None] | None = None,
) -> None:
    """Runs one request and answers it; an upsert's points are built with
    `between` called between slices (see `serve`)."""
    req_id, call, args = request
    try:
        result = prepare(call, args, between)(engine)
    except Exception as err:
        _answer(sock, req_id, False, err)
    else:
        _answer(sock, req_id, True, result)


def serve(sock: socket.socket) -> None:
    """Answers requests until end-of-file, then closes the engine.

    One at a time and in order, with one exception: the reads that arrive
    while an upsert's points are being built (half of its time, before it
    touches the shard) are answered between slices of that work, so a
    search does not wait for all of it. Nothing is written before the
    upsert answers, so such a read sees the shard as if it had come
    first, which it may: the write is not acknowledged yet. Any other
    request arriving then waits, and so does every request after it."""
    kwargs = _recv(sock)
    if kwargs is None:
        return
    engine = EdgeEngine(**kwargs)
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    # what was read early but not run yet: a request, None (end-of-file) or
    # the error of a frame that did not decode (raised in its turn, as here)
    held: list[Any] = []

    def between() -> None:
        while not held and poll.poll(0):
            try:
                request = _recv(sock)
            except (OSError, EOFError):
                request = None
            except Exception as err:
                request = err
            if request is None or isinstance(request, Exception) or request[1] not in READS:
                held.append(request)
            else:
                _run(engine, sock, request)

    try:
        while (request := held.pop() if held else _recv(sock)) is not None:
            if isinstance(request, Exception):
                raise request
            _run(engine, sock, request, between)
    finally:
        # The server is gone without closing us (or has closed us): the WAL
        # holds every acknowledged write; flush and let go of the lock.
        try:
            engine.close(optimize=False)
        except Exception:
            log.exception("closing the vector store after the server went away")


class SharedEngine:
    """One engine for several connections (the shared mode's host)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: EdgeEngine | None = None
        self._closed = False

    def serve_connection(self, sock: socket.socket) -> None:
        """Answers one client's requests until it hangs up."""
        with contextlib.suppress(ConnectionError, EOFError, OSError):
            kwargs = _recv(sock)
            if kwargs is None:
                return
            with self._lock:
                if self._engine is None and not self._closed:
                    self._engine = EdgeEngine(**kwargs)
            while (request := _recv(sock)) is not None:
                req_id, call, args = request
                try:
                    result = self._call(call, args)
                except Exception as err:
                    _answer(sock, req_id, False, err)
                else:
                    _answer(sock, req_id, True, result)
        sock.close()

    def _call(self, call: str, args: tuple[Any, ...]) -> Any:
        # an upsert's points are built outside the lock: the other
        # connections' calls run meanwhile (see `prepare`)
        run = prepare(call, args)
        with self._lock:
            engine = self._engine
            if engine is None or self._closed:
                raise closed()
            if call == "close":
                return None  # the host closes the engine, not one of its clients
            return run(engine)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            engine, self._engine = self._engine, None
            if engine is not None:
                try:
                    engine.close(optimize=False)
                except Exception:
                    log.exception("closing the shared vector store")


def host(argv: list[str]) -> int:
    """The shared mode: serves every connection to `argv[2]` until SIGTERM
    or the parent's death, then closes the engine (flush, lock released)."""
    path, parent_pid, level = argv[2], int(argv[3]), argv[4]
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[engine] %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _die_with_parent(parent_pid)
    shared = SharedEngine()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # bound and listening before the path appears: a client never finds it refusing
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + ".new")
    listener.bind(path + ".new")
    listener.listen(64)
    os.replace(path + ".new", path)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=shared.serve_connection, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    while not stop.wait(0.5):
        if os.getppid() != parent_pid:
            break
    listener.close()
    shared.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "--host":
        return host(argv)
    fd, parent_pid, pdeathsig, level = int(argv[1]), int(argv[2]), argv[3] == "1", argv[4]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if pdeathsig:
        _die_with_parent(parent_pid)
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[engine] %(message)s",
    )
    sock = socket.socket(fileno=fd)
    try:
        serve(sock)
    except (ConnectionError, EOFError):
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
