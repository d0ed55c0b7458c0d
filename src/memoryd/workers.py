"""`memoryd serve --workers N`: one server on every core.

The parent runs no gRPC server itself. It

- hosts the embedded store's Qdrant Edge engines (the memories' and the
  knowledge chunks'), one process each (`edge_child.host`), on Unix sockets
  in a private directory: the shard allows one process, and the workers
  share it through these (engine calls run one at a time, as before);
- reserves the gRPC port (port 0: picks one) and starts N worker processes,
  each a whole `memoryd serve` (pipeline, auth, embedder, jobs, watchers)
  binding the same port with SO_REUSEPORT: the kernel spreads connections
  across them. Only worker 0 bootstraps an empty control store and serves
  the MCP and metrics ports; it starts first, and the others once it listens;
- restarts a worker that dies (SIGKILL, a crash) and gives up, stopping
  everything with exit status 1, when one dies within `_QUICK_DEATH_S` of
  starting `_QUICK_DEATHS` times in a row, or when an engine host dies;
- on SIGTERM or SIGINT, forwards SIGTERM to the workers (each drains like a
  single server), then closes the engines (flushed, lock released), exit 0.

Across workers: jobs are leased in SQL, WatchMemories streams poll the SQL
change log, and rate limits, usage and key revocation live in Redis (so
`workers > 1` needs MEMORYD_REDIS_URL, checked by `Settings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from memoryd.config import Settings, env_name, setting_fields
from memoryd.storage.vectors.edge_backends import start_host
from memoryd.storage.vectors.embedded import STORES

log = logging.getLogger("memoryd.workers")

_QUICK_DEATH_S = 10.0
_QUICK_DEATHS = 3
_WORKER_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv.pop(1)); "
    "from memoryd.cli import main; sys.exit(main(['serve']))"
)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class Supervisor:
    """The parent of `serve --workers N` (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dir = Path(tempfile.mkdtemp(prefix="memoryd-engines-"))
        self._hosts: list[asyncio.subprocess.Process] = []
        self._workers: dict[int, asyncio.subprocess.Process] = {}
        self._started_at: dict[int, float] = {}
        self._quick_deaths: dict[int, int] = {}
        self._port = 0
        self._reserved: socket.socket | None = None

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            if not self._settings.qdrant_url:
                await self._start_hosts()
            self._reserve_port()
            first = await self._start_worker(0)
            if not await self._wait_listening(first):
                code = await first.wait()
                log.error("worker 0 did not start (exit status %s)", code)
                return 1
            for index in range(1, self._settings.workers):
                await self._start_worker(index)
            log.info("%d workers on port %d", self._settings.workers, self._port)
            return await self._supervise(stop)
        finally:
            await self._stop_all()

    # --- start ----------------------------------------------------------------

    async def _start_hosts(self) -> None:
        for name in STORES:
            self._hosts.append(await start_host(str(self._dir / f"{name}.sock")))

    def _reserve_port(self) -> None:
        """Binds (without listening) the gRPC port with SO_REUSEPORT: port 0
        becomes a real port the workers then share, and it stays ours while
        a worker restarts."""
        host = self._settings.host.strip("[]")
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, self._settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(addr)
        except OSError:
            sock.close()
            raise
        self._reserved = sock
        self._port = sock.getsockname()[1]

    def _worker_env(self, index: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORYD_")}
        env.update(_setting_env(self._settings))
        env[env_name("workers")] = "1"
        env[env_name("engine_socket_dir")] = str(self._dir)
        env[env_name("port")] = str(self._port)
        if index > 0 or index in self._started_at:
            env[env_name("bootstrap")] = "false"
        if index > 0:
            env[env_name("mcp_port")] = ""
            env[env_name("metrics_port")] = "0"
        return env

    async def _start_worker(self, index: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER_BOOT,
            json.dumps(sys.path),
            env=self._worker_env(index),
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self._workers[index] = proc
        self._started_at[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, proc.pid)
        return proc

    async def _wait_listening(self, proc: asyncio.subprocess.Process) -> bool:
        host = self._settings.host.strip("[]")
        host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
        while proc.returncode is None:
            try:
                _, writer = await asyncio.open_connection(host, self._port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return True
        return False

    # --- run ------------------------------------------------------------------

    async def _supervise(self, stop: asyncio.Event) -> int:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                waits = {
                    asyncio.ensure_future(p.wait()): ("worker", i) for i, p in self._workers.items()
                }
                waits.update(
                    {
                        asyncio.ensure_future(h.wait()): ("host", n)
                        for n, h in enumerate(self._hosts)
                    }
                )
                done, _ = await asyncio.wait(
                    [stopping, *waits], return_when=asyncio.FIRST_COMPLETED
                )
                for w in waits:
                    w.cancel()
                if stopping in done:
                    log.info("signal received: stopping the workers")
                    return 0
                for fut in done:
                    kind, index = waits[fut]
                    if kind == "host":
                        log.error("an engine host died (%s): stopping", fut.result())
                        return 1
                    if not await self._restart(index, fut.result()):
                        return 1
        finally:
            stopping.cancel()

    async def _restart(self, index: int, code: int) -> bool:
        quick = time.monotonic() - self._started_at[index] < _QUICK_DEATH_S
        self._quick_deaths[index] = self._quick_deaths.get(index, 0) + 1 if quick else 0
        if self._quick_deaths[index] >= _QUICK_DEATHS:
            log.error("worker %d keeps dying at start (exit status %s): stopping", index, code)
            return False
        log.error("worker %d died (exit status %s): restarting it", index, code)
        await self._start_worker(index)
        return True

    async def _stop_all(self) -> None:
        for proc in self._workers.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        bound = self._settings.grace_period_s + 60
        for proc in self._workers.values():
            await _wait_or_kill(proc, bound)
        for host in self._hosts:  # after the workers: closes the engines, flushed
            if host.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    host.send_signal(signal.SIGTERM)
        for host in self._hosts:
            await _wait_or_kill(host, 60)
        if self._reserved is not None:
            self._reserved.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._workers.values()]


async def _wait_or_kill(proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        log.error("process %d does not exit: killing it", proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _setting_env(settings: Settings) -> Mapping[str, str]:
    """The settings that differ from the defaults, as MEMORYD_* variables
    (the command line's options included)."""
    out: dict[str, str] = {}
    for f in setting_fields():
        value = getattr(settings, f.name)
        if value != f.default:
            out[env_name(f.name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


async def serve_workers(settings: Settings) -> int:
    """`memoryd serve` with `settings.workers` > 1: see the module docstring."""
    try:
        return await Supervisor(settings).run()
    except OSError as err:
        print(f"memoryd: cannot start: {err}", file=sys.stderr, flush=True)
        return 1
