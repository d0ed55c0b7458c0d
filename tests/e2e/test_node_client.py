"""The Node.js example (examples/node) against the installed `memoryd` binary.

Needs Node.js and npm on PATH (the test fails, never skips, without them);
runs `npm ci` when examples/node/node_modules is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from memoryd.client import AsyncMemorydClient, MemorydError
from memoryd.v1 import admin_pb2

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "node"
MEMORYD = Path(sys.executable).parent / "memoryd"


@pytest.fixture(scope="session")
def node_example() -> Path:
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH: install Node.js 20 and npm to run this test")
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return EXAMPLE / "client.js"


@dataclass
class Served:
    address: str
    owner_key: str


@pytest.fixture
async def memoryd(tmp_path: Path) -> AsyncIterator[Served]:
    """`memoryd serve` on a free port with a fresh data dir (hashing embedder)."""
    env = {
        **os.environ,
        "MEMORYD_HOST": "127.0.0.1",
        "MEMORYD_PORT": "0",
        "MEMORYD_DATA_DIR": str(tmp_path / "data"),
        "MEMORYD_EMBEDDING_PROVIDER": "hashing",
        "MEMORYD_EMBEDDING_DIMENSION": "64",
        "MEMORYD_GRACE_PERIOD_S": "1",
        "MEMORYD_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        str(MEMORYD),
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        owner = address = ""
        async with asyncio.timeout(60):
            while not owner:
                line = (await proc.stdout.readline()).decode()
                assert line, "memoryd exited before printing the owner key"
                owner = next(iter(re.findall(r"ms_org_\w+", line)), "")
            while not address:
                line = (await proc.stderr.readline()).decode()
                assert line, "memoryd exited before listening"
                found = re.search(r"memoryd listening on (\S+)", line)
                address = found.group(1) if found else ""
        yield Served(address, owner)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _data_key(served: Served) -> tuple[str, admin_pb2.Project]:
    async with AsyncMemorydClient(served.address, served.owner_key) as owner:
        project = await owner.admin.CreateProject(
            admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="node-app"))
        )
        made = await owner.create_api_key(
            "node", project_id=project.id, environment_id=project.environments[0].id
        )
    return made.secret, project


async def _run_node(script: Path, served: Served, key: str, *args: str) -> tuple[int, Any]:
    env = {
        **os.environ,
        "MEMORYD_ADDRESS": served.address,
        "MEMORYD_API_KEY": key,
        "MEMORYD_END_USER_ID": "ana",
    }
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    try:
        return proc.returncode or 0, json.loads(out)
    except ValueError:
        raise AssertionError(f"node printed no JSON:\n{out.decode()}\n{err.decode()}") from None


async def test_node_example_round_trip(node_example: Path, memoryd: Served) -> None:
    key, project = await _data_key(memoryd)
    code, out = await _run_node(
        node_example, memoryd, key, "Ana prefers green tea over coffee", "green tea"
    )
    assert code == 0, out
    assert out["whoami"]["project_id"] == project.id
    assert out["whoami"]["environment_kind"] == "ENVIRONMENT_KIND_LIVE"
    assert out["whoami"]["end_user_id"] == "ana"
    created = out["created"]
    assert created["end_user_id"] == "ana" and created["metadata"] == {"lang": "en"}
    assert out["results"][0]["id"] == created["id"]
    assert out["results"][0]["content"] == "Ana prefers green tea over coffee"
    # The trailers came through: request id and the rate-limit headers.
    assert out["trailers"]["x-request-id"]
    assert int(out["trailers"]["x-ratelimit-remaining"]) >= 0

    # What Node stored is what Python reads, for that end user only.
    async with AsyncMemorydClient(memoryd.address, key, end_user_id="ana") as ana:
        got = await ana.get_memory(created["id"])
        assert (got.content, list(got.tags), got.source) == (
            "Ana prefers green tea over coffee",
            ["drinks"],
            "node-example",
        )
    async with AsyncMemorydClient(memoryd.address, key, end_user_id="bob") as bob:
        with pytest.raises(MemorydError) as caught:
            await bob.get_memory(created["id"])
        assert caught.value.code == grpc.StatusCode.NOT_FOUND


async def test_node_example_reports_errors(node_example: Path, memoryd: Served) -> None:
    code, out = await _run_node(node_example, memoryd, "ms_live_wrongwrongwrong")
    assert code == 1
    assert out["error"]["code"] == "UNAUTHENTICATED"
    assert out["error"]["metadata"]["x-request-id"]
    assert "ms_live_wrongwrongwrong" not in json.dumps(out)
