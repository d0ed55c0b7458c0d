"""What every benchmark suite shares: a real `memoryd serve` process, the
drivers that load it and the figures they print.

The server runs as its own process (a temporary data dir unless `--data-dir`
is given), so the load generator does not share its interpreter. Two drivers:

- h2load (Debian's nghttp2-client), when installed: unary gRPC at the wire
  level, far faster than a Python client, so it finds the server's ceiling.
  Each run is checked for gRPC errors against the server's own metrics.
- a grpc.aio client with `concurrency` calls in flight: p50/p99 latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import grpc

from memoryd.config import Settings

_KEY_RE = re.compile(r"ms_org_[A-Za-z0-9]+")
# Rate limits and quotas no benchmark reaches (as server environment).
HIGH_LIMITS = {
    "MEMORYD_KEY_REQUESTS_PER_SECOND": "1000000",
    "MEMORYD_KEY_BURST": "1000000",
    "MEMORYD_PROJECT_REQUESTS_PER_SECOND": "1000000",
    "MEMORYD_PROJECT_BURST": "1000000",
    "MEMORYD_MAX_MEMORIES_PER_ENVIRONMENT": "100000000",
}
_PORT_RE = re.compile(r"listening on [^:]+:(\d+)")


@dataclass
class Result:
    name: str
    calls: int
    seconds: float
    latencies_ms: list[float]
    errors: int = 0

    @property
    def rps(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def line(self) -> str:
        return (
            f"{self.name:<38} {self.rps:>9.0f} req/s   p50 {self.pct(0.5):7.2f} ms   "
            f"p99 {self.pct(0.99):7.2f} ms   errors {self.errors}"
        )


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (nearest rank); NaN when there are none."""
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))]


# the installed command of the venv the bench runs in
MEMORYD = Path(sys.executable).with_name("memoryd")


class ServerProcess:
    """`memoryd serve` in a subprocess, on a free port."""

    def __init__(
        self, settings: Settings, extra_env: dict[str, str] | None = None, cpus: str = ""
    ) -> None:
        self._settings = settings
        self._env = extra_env or {}
        # `taskset -c` list for the server (its engine processes included)
        self.cpus = cpus
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.owner_key = ""
        self.data_dir = ""
        # The server's environment, for starting it again on the same data dir.
        self.env: dict[str, str] = {}

    async def __aenter__(self) -> ServerProcess:
        data_dir = self._settings.data_dir
        if data_dir == "data":
            self._tmp = tempfile.TemporaryDirectory(prefix="memoryd-bench-")
            data_dir = self._tmp.name
        self.data_dir = data_dir
        self.metrics_port = _free_port()
        env = {
            **os.environ,
            "MEMORYD_METRICS_PORT": str(self.metrics_port),
            **self._env,
            "MEMORYD_DATA_DIR": data_dir,
            "MEMORYD_PORT": "0",
            "MEMORYD_LOG_LEVEL": "WARNING",
        }
        for name, value in vars_of(self._settings).items():
            if name not in ("data_dir", "port", "log_level"):
                env.setdefault(f"MEMORYD_{name.upper()}", str(value))
        self.env = env
        exe = MEMORYD
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - start-up only, not per call
            [*self.command_prefix(), str(exe), "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(self.proc.stdout.readline)
            if not line:
                raise RuntimeError("memoryd serve exited during start-up")
            if m := _KEY_RE.search(line):
                self.owner_key = m.group(0)
            if m := _PORT_RE.search(line):
                self.port = int(m.group(1))
                break
        if not self.port:
            raise RuntimeError("memoryd serve did not start in time")
        # Keep draining the pipe so the server never blocks on a full one.
        asyncio.get_running_loop().run_in_executor(None, self._drain)
        return self

    def command_prefix(self) -> list[str]:
        return ["taskset", "-c", self.cpus] if self.cpus else []

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 30)
        if self._tmp is not None:
            self._tmp.cleanup()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time (user + system) so far of the server and its child
        processes (the vector engine's), from /proc; 0 where there is none."""
        assert self.proc is not None
        pids = [self.proc.pid, *_children(self.proc.pid)]
        return sum(_cpu_of(pid) for pid in pids)

    def calls(self, method: str) -> dict[str, float]:
        """Calls of `method` so far by status code, from the server's metrics."""
        service, name = method.strip("/").rsplit("/", 1)
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        out: dict[str, float] = {}
        pattern = re.compile(
            r'^memoryd_requests_total\{code="(\w+)",method="'
            + re.escape(name)
            + r'",service="'
            + re.escape(service.rsplit(".", 1)[-1])
            + r'"\} ([\d.e+]+)$',
            re.M,
        )
        for code, value in pattern.findall(text):
            out[code] = float(value)
        return out


async def drive(
    name: str,
    call: Callable[[], Awaitable[Any]],
    seconds: float,
    concurrency: int,
    warmup: int = 20,
) -> Result:
    """Runs `call` from `concurrency` workers for `seconds`, after `warmup`
    calls; latency per call."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                await call()
            except grpc.RpcError:
                errors += 1
                continue
            latencies.append((time.perf_counter() - t0) * 1000)

    # Warm-up: connections, caches, the first (slow) key verification.
    for _ in range(warmup):
        with contextlib.suppress(grpc.RpcError):
            await call()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, len(latencies), time.perf_counter() - started, latencies, errors)


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name ([] if gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[1] == str(pid):
            out.append(int(entry.name))
    return out


def _cpu_of(pid: int) -> float:
    fields = _stat(pid)  # fields[11], fields[12]: utime, stime in clock ticks
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def h2load_checked(
    server: ServerProcess, method: str, body: bytes, headers: dict[str, str], seconds: float
) -> tuple[float, int] | None:
    """h2load's requests/s and the calls that did not answer OK (h2load counts
    any HTTP 200 as a success; the server's own metrics tell the gRPC codes)."""
    before = server.calls(method)
    rps = h2load(server.address, method, body, headers, seconds)
    if rps is None:
        return None
    after = server.calls(method)
    errors = sum(v - before.get(k, 0.0) for k, v in after.items() if k != "OK")
    return rps, int(errors)


def h2load(
    address: str, method: str, body: bytes, headers: dict[str, str], seconds: float
) -> float | None:
    """Requests/s from h2load, or None when h2load is not installed."""
    exe = shutil.which("h2load")
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as fh:
        fh.write(b"\x00" + len(body).to_bytes(4, "big") + body)
        path = fh.name
    args = [
        exe,
        "-D",
        str(max(1, round(seconds))),
        "-c",
        "4",
        "-m",
        "32",
        "-t",
        "1",
        "-d",
        path,
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    args.append(f"http://{address}{method}")
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(path)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    return float(m.group(1)) if m else None


def vars_of(settings: Settings) -> dict[str, Any]:
    """The settings as a dict of field name → value (to copy them with changes)."""
    return {f.name: getattr(settings, f.name) for f in fields(settings)}
