"""The `first-pass` suite: each tenant's first search after the embedded
store opens, on an existing data dir (`--data-dir`, e.g. one the scale
suite kept and `memoryd compact-vectors` sealed), with the store's files out
of the page cache, as after a reboot.

Two variants in turns, on the store as memoryd opens it (thread mode):
"read ahead": the files are dropped before the open, so the engine's
read-ahead (storage/read_ahead.py) brings them back while a server would
finish starting (`GAP_S`); "cold": the same, then the files are dropped
again before the first search, which is what a store without the read-ahead
meets (pages the engine holds mapped stay: `POSIX_FADV_DONTNEED` skips
them). Then one search per tenant, in random order, top 5, no filter.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from memoryd.domain.memory import Filter
from memoryd.domain.tenancy import Tenant
from memoryd.storage.vectors import layout as p
from memoryd.storage.vectors.edge import EdgeVectorStore
from memoryd.storage.vectors.edge_engine import SHARD, EdgeEngine, marked_model

ROUNDS = 3
GAP_S = 0.5  # from the store's open to the first call: the rest of a start, at least


async def first_pass_suite(data_dir: str, tenants_max: int) -> None:
    """Prints each round's figures as they come."""
    path = Path(data_dir) / "vectors"
    identity = marked_model(path)
    if identity is None:
        print(f"first-pass: no embedded store in {path}", flush=True)
        return
    tenants = _tenants(path, identity)
    random.Random(3).shuffle(tenants)
    tenants = tenants[:tenants_max]
    print(f"first-pass: {len(tenants)} tenants of {path}, {ROUNDS} rounds, gap {GAP_S} s")
    for r in range(ROUNDS):
        for variant in ("cold", "read ahead"):
            figures = await _one(path, identity, tenants, variant)
            print(f"round {r + 1} {variant:<10} {figures}", flush=True)


async def _one(path: Path, identity: tuple[str, int], tenants: list[Tenant], variant: str) -> str:
    _drop(path / SHARD)
    store = EdgeVectorStore(path)
    started = time.perf_counter()
    await store.open(*identity)
    opened = time.perf_counter() - started
    await asyncio.sleep(GAP_S)
    if variant == "cold":
        _drop(path / SHARD)
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(64, identity[1]))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    now = datetime.now(UTC)
    took = []
    try:
        for i, tenant in enumerate(tenants):
            began = time.perf_counter()
            await store.search([tenant], queries[i % 64].tolist(), Filter(), 5, now)
            took.append((time.perf_counter() - began) * 1e3)
    finally:
        await store.close()
    return (
        f"open {opened:.2f} s; first search of each tenant: p50 {statistics.median(took):.2f} ms, "
        f"p99 {np.percentile(took, 99):.2f} ms, max {max(took):.1f} ms, all {sum(took) / 1e3:.1f} s"
    )


def _tenants(path: Path, identity: tuple[str, int]) -> list[Tenant]:
    """Every (environment, end user) that owns a point, from one scroll."""
    engine = EdgeEngine(path)
    engine.open(*identity)
    fields = [p.ORG_ID, p.PROJECT_ID, p.ENVIRONMENT_ID, p.END_USER_ID]
    seen: dict[tuple[str, str, str, str], None] = {}
    offset = None
    try:
        while True:
            records, offset = engine.shard.scroll(
                qe.ScrollRequest(
                    offset=offset,
                    limit=4096,
                    with_payload=qe.PayloadSelector.Include(fields),
                    with_vector=False,
                )
            )
            for record in records:
                payload = record.payload or {}
                org, project, env, user = (str(payload.get(f, "")) for f in fields)
                seen[(org, project, env, user)] = None
            if offset is None:
                break
    finally:
        engine.close(optimize=False)
    return [Tenant(org, project, env, user) for org, project, env, user in seen]


def _drop(root: Path) -> None:
    """The files under `root` written out and dropped from the page cache."""
    for directory, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
