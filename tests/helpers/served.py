"""One installed `memoryd serve` process for e2e tests: port 0, a data dir of
the test's, the hashing embedder (no model), its output in files."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from grpc import aio

MEMORYD = Path(sys.executable).parent / "memoryd"
LISTENING = re.compile(r"memoryd listening on 127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 30.0


class Served:
    """`memoryd serve` on `data_dir` (plus `extra` options), stdout and stderr
    in `log_dir`, numbered by `run`. With `wait`, the constructor returns once
    the server listens (`port`, `channel`); without it, call `wait_listening`
    or watch the process (a start that is meant to fail)."""

    def __init__(
        self, data_dir: Path, log_dir: Path, run: int, *extra: str, wait: bool = True
    ) -> None:
        self.out_path = log_dir / f"stdout-{run}.txt"
        self.err_path = log_dir / f"stderr-{run}.txt"
        self.port = 0
        self.channel: aio.Channel | None = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORYD_")}
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [
                    str(MEMORYD),
                    "serve",
                    "--port",
                    "0",
                    "--data-dir",
                    str(data_dir),
                    "--embedding-provider",
                    "hashing",
                    "--embedding-dimension",
                    "64",
                    "--log-level",
                    "WARNING",
                    "--grace-period-s",
                    "2",
                    *extra,
                ],
                stdout=out,
                stderr=err,
                env=env,
            )
        if wait:
            self.wait_listening()

    def wait_listening(self, within: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = LISTENING.search(self.err_path.read_text())
            if found:
                self.port = int(found.group(1))
                self.channel = aio.insecure_channel(f"127.0.0.1:{self.port}")
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"memoryd did not start:\n{self.err_path.read_text()}")

    def owner_key(self) -> str | None:
        """The owner key printed between the `====` lines, if any."""
        text = self.out_path.read_text()
        found = re.search(r"^=+\n(.*?)^=+$", text, re.M | re.S)
        if not found:
            return None
        keys = re.findall(r"\b(ms_org_\S+)", found.group(1))
        assert len(keys) == 1, text
        return str(keys[0])

    async def stop(self, sig: int = signal.SIGTERM, within_s: float = 15.0) -> int:
        if self.channel is not None:
            await self.channel.close()
        self.proc.send_signal(sig)
        return await asyncio.to_thread(self.proc.wait, within_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
