"""The `scale` suite: client-vector search on a large embedded store, and
how the server's throughput grows with cores and workers.

Workload: `--memories` memories over `--tenants` tenants (10 end users per
environment), each with a random unit vector (`--embedding-dimension`, made
by the bench process; the server embeds nothing but the content's keyword
vector), loaded with BatchCreate (batches of 100, 4 clients). Measured, in
one run, on one server started from the settings (so `--workers N` applies)
and pinned with `taskset -c` to `--server-cpus` when given:

- load throughput, and searches (one at a time, from another process:
  `benchmarks.reader`) while it runs;
- SearchMemories SEMANTIC with a client vector (top 5, a random tenant and
  vector per call): p50/p99 with 1 and with 4 calls in flight, and h2load's
  ceiling (4 connections x 32 streams, one tenant);
- RSS of the server and every process under it; data-dir size;
- cold start to SERVING: the server stopped and started on the same data
  dir, then searches with 1 in flight and its RSS; then again after
  `memoryd compact-vectors` (timed) sealed the store.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from grpc import aio

from benchmarks.harness import HIGH_LIMITS, MEMORYD, ServerProcess, _children, drive, h2load
from benchmarks.memory import _rss_kb, _until_serving, create_env_keys, du_mb, tenant_metadata
from memoryd.config import Settings
from memoryd.v1 import memory_pb2, memory_pb2_grpc

_BATCH = 100


async def start_reader(
    address: str, keys: list[str], tenants: int, dimension: int
) -> asyncio.subprocess.Process:
    """`benchmarks.reader` searching `address` until `stop_reader`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.reader",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    config = {"address": address, "keys": keys, "tenants": tenants, "dimension": dimension}
    proc.stdin.write(json.dumps(config).encode() + b"\n")
    await proc.stdin.drain()
    return proc


async def stop_reader(proc: asyncio.subprocess.Process) -> list[float]:
    """The latencies (ms) of a reader's searches, once it is stopped."""
    assert proc.stdin is not None
    proc.stdin.close()
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the reader process failed (exit code {proc.returncode})")
    took: list[float] = json.loads(out)
    if not took:
        raise RuntimeError("the reader process made no search")
    return took


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray[Any, Any]:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _rss(pid: int) -> str:
    pids = _tree(pid)
    rss = sum(_rss_kb(p) for p in pids) / 1024
    return f"RSS {rss:.0f} MiB over {len(pids)} processes (server and its children)"


def _tree(pid: int) -> list[int]:
    out = [pid]
    for child in _children(pid):
        out += _tree(child)
    return out


async def scale_suite(
    settings: Settings, memories: int, tenants: int, seconds: float, cpus: str
) -> list[str]:
    dim = settings.embedding_dimension
    n_envs = max(10, tenants // 10)
    lines = [
        f"scale: {memories} memories over {tenants} tenants, {dim}-d random unit vectors, "
        f"workers {settings.workers}, server cpus {cpus or 'all'}"
    ]
    rng = np.random.default_rng(11)
    per = memories // tenants
    async with ServerProcess(settings, extra_env=HIGH_LIMITS, cpus=cpus) as server:
        channel = aio.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        mem = memory_pb2_grpc.MemoryServiceStub(channel)
        env_keys = await create_env_keys(channel, server.owner_key, n_envs)
        queries = _unit(rng, 256, dim).tolist()
        pick = random.Random(5)

        def searcher(stub: Any) -> Callable[[], Awaitable[Any]]:
            async def search() -> Any:
                t = pick.randrange(tenants)
                return await stub.SearchMemories(
                    memory_pb2.SearchMemoriesRequest(
                        mode=memory_pb2.SEMANTIC,
                        top_k=5,
                        query_embedding=queries[pick.randrange(len(queries))],
                    ),
                    metadata=tenant_metadata(env_keys, t),
                )

            return search

        async def verify_keys(stub: Any) -> float:
            """One search per key, ms per key: a new process verifies each
            key once (argon2) at its first use, so searches timed after
            this measure the store."""
            first = time.perf_counter()
            for k in range(len(env_keys)):  # tenant 10k: the first of key k
                await stub.SearchMemories(
                    memory_pb2.SearchMemoriesRequest(
                        mode=memory_pb2.SEMANTIC, top_k=5, query_embedding=queries[0]
                    ),
                    metadata=tenant_metadata(env_keys, 10 * k),
                )
            return (time.perf_counter() - first) / len(env_keys) * 1e3

        await verify_keys(mem)
        queue = [(t, i) for t in range(tenants) for i in range(0, per, _BATCH)]
        loaded = 0

        async def worker() -> None:
            nonlocal loaded
            while queue:
                t, start = queue.pop()
                n = min(_BATCH, per - start)
                vectors = _unit(rng, n, dim)
                req = memory_pb2.BatchCreateMemoriesRequest(
                    requests=[
                        memory_pb2.CreateMemoryRequest(
                            memory=memory_pb2.Memory(
                                content=f"memory {start + k} of tenant {t}",
                                embedding=vectors[k].tolist(),
                            )
                        )
                        for k in range(n)
                    ]
                )
                resp = await mem.BatchCreateMemories(
                    req, metadata=tenant_metadata(env_keys, t), timeout=300
                )
                if resp.failed_count:
                    raise RuntimeError(f"batch had {resp.failed_count} failures")
                loaded += n

        # reads while the store grows: one search at a time beside the load,
        # from a process of its own (benchmarks/reader.py)
        reader = await start_reader(server.address, env_keys, tenants, dim)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(4)))
        took = time.perf_counter() - started
        during = await stop_reader(reader)
        lines.append(
            f"BatchCreate, client vectors: {loaded} in {took:.0f} s, {loaded / took:.0f}/s"
        )
        lines.append(
            f"Search client vector, 1 in flight during the load: {len(during)} calls, "
            f"p50 {statistics.median(during):.2f} ms, p99 {np.percentile(during, 99):.2f} ms, "
            f"max {max(during):.1f} ms"
        )

        for flight in (1, 4):
            result = await drive(
                f"Search client vector, {flight} in flight", searcher(mem), seconds, flight
            )
            lines.append(result.line())
        body = memory_pb2.SearchMemoriesRequest(
            mode=memory_pb2.SEMANTIC, top_k=5, query_embedding=queries[0]
        ).SerializeToString()
        ceiling = h2load(
            server.address,
            "/memoryd.v1.MemoryService/SearchMemories",
            body,
            dict(tenant_metadata(env_keys, 0)),
            seconds,
        )
        if ceiling:
            lines.append(
                f"Search client vector, h2load (4 conns x 32 streams): {ceiling:.0f} req/s"
            )
        assert server.proc is not None
        lines.append(f"{_rss(server.proc.pid)}; data dir {du_mb(Path(server.data_dir)):.0f} MiB")
        await channel.close(None)

        server.proc.send_signal(15)
        await asyncio.to_thread(server.proc.wait, 600)
        env = {**server.env, "MEMORYD_PORT": str(server.port)}

        async def restarted(label: str) -> None:
            """A cold start on the data dir, then searches with 1 in flight."""
            started = time.perf_counter()
            proc = subprocess.Popen(  # noqa: ASYNC220 - measuring the start itself
                [*server.command_prefix(), str(MEMORYD), "serve"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                cold = await _until_serving(server.address, started)
                lines.append(
                    f"{label}: cold start to SERVING with {loaded} memories on disk: {cold:.2f} s"
                )
                again = aio.insecure_channel(server.address)
                stub = memory_pb2_grpc.MemoryServiceStub(again)
                per_key = await verify_keys(stub)
                lines.append(
                    f"{label}: first call of each of {len(env_keys)} keys: {per_key:.1f} ms per key"
                )
                result = await drive(
                    f"{label}: Search client vector, 1 in flight", searcher(stub), seconds, 1
                )
                lines.append(result.line())
                lines.append(f"{label}: {_rss(proc.pid)}")
                await again.close(None)
            finally:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 600)

        await restarted("as written")
        started = time.perf_counter()
        compacted = await asyncio.to_thread(
            subprocess.run,
            [*server.command_prefix(), str(MEMORYD), "compact-vectors"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if compacted.returncode != 0:
            raise RuntimeError(f"compact-vectors failed: {compacted.stderr.strip()}")
        lines.append(
            f"memoryd compact-vectors: {time.perf_counter() - started:.1f} s "
            f"({compacted.stdout.strip().splitlines()[-1]}); "
            f"data dir {du_mb(Path(server.data_dir)):.0f} MiB"
        )
        await restarted("compacted")
    return lines
