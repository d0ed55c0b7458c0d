"""`memoryd serve`, the installed command, as a separate process: what a
replica is in production (its own interpreter, its own embedded vector store)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memoryd.config import Settings, env_name, setting_fields

MEMORYD = Path(sys.executable).parent / "memoryd"
LISTENING = re.compile(r"memoryd listening on [^:\s]+:(\d+)")


class ServerProcess:
    """`memoryd serve` with `settings` (the ones that differ from the
    defaults, as `MEMORYD_*` variables) on a free port and its own temporary
    data dir; stopped with SIGTERM (killed if it does not stop) on exit.

    Raises AssertionError with the server's stderr when it does not start."""

    def __init__(self, settings: Settings, start_timeout_s: float = 60.0) -> None:
        self._settings = settings
        self._start_timeout_s = start_timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="memoryd-test-")
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        # The test's own MEMORYD_* variables must not leak into the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORYD_")}
        for f in setting_fields():
            value = getattr(self._settings, f.name)
            if value != f.default:
                env[env_name(f.name)] = str(value)
        env[env_name("data_dir")] = str(Path(self._tmp.name) / "data")
        env[env_name("host")] = "127.0.0.1"
        env[env_name("port")] = "0"
        return env

    async def __aenter__(self) -> ServerProcess:
        stderr = Path(self._tmp.name) / "stderr.txt"
        with stderr.open("wb") as err:
            self._proc = subprocess.Popen(  # noqa: ASYNC220 - start-up only
                [str(MEMORYD), "serve"],
                env=self._env(),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline and self._proc.poll() is None:
            if found := LISTENING.search(stderr.read_text(errors="replace")):
                self.port = int(found.group(1))
                return self
            await asyncio.sleep(0.05)
        await self._stop()
        raise AssertionError(f"memoryd serve did not start:\n{stderr.read_text()[-3000:]}")

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        self._tmp.cleanup()
