"""How long the embedded store takes to gain keyword vectors when it opens:
writes a store as memoryd wrote it before keyword search (a shard without
keyword vectors), then times `EdgeVectorStore.open`, which copies it.

    .venv/bin/python -m benchmarks.vector_upgrade --points 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import qdrant_edge as qe

from memoryd.domain.memory import MemoryRecord
from memoryd.domain.tenancy import Tenant
from memoryd.storage.vectors.edge import MARKER, SHARD, EdgeVectorStore
from memoryd.storage.vectors.layout import to_payload

DIM = 384
WORDS = [
    "tea",
    "coffee",
    "porto",
    "lima",
    "order",
    "kettle",
    "lamp",
    "lion",
    "tiger",
    "river",
    "chess",
    "walk",
    "works",
]


def old_store(path: Path, points: int, tenants: int) -> None:
    """A store of layout 2: `points` random memories of ten words and a code."""
    path.mkdir(parents=True)
    (path / MARKER).write_text(json.dumps({"layout": 2, "model_id": "bench", "dimension": DIM}))
    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0),
    )
    shard = qe.EdgeShard.create(str(path / SHARD), config)
    rng = random.Random(1)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    batch: list[qe.Point] = []
    for i in range(points):
        rec = MemoryRecord(
            id=str(uuid.uuid4()),
            tenant=Tenant("org", f"prj{i % tenants}", "env"),
            content=" ".join(rng.choice(WORDS) for _ in range(10)) + f" ORD-{i}",
            metadata={},
            agent_id="",
            thread_id="",
            source="",
            tags=(),
            create_time=at,
            update_time=at,
            expire_time=None,
            revision=1,
        )
        v = [rng.gauss(0, 1) for _ in range(DIM)]
        norm = math.sqrt(sum(x * x for x in v))
        batch.append(qe.Point(rec.id, [x / norm for x in v], to_payload(rec)))
        if len(batch) == 500:
            shard.update(qe.UpdateOperation.upsert_points(batch))
            batch = []
    if batch:
        shard.update(qe.UpdateOperation.upsert_points(batch))
    shard.flush()
    shard.close()


async def timed_open(path: Path) -> float:
    store = EdgeVectorStore(path)
    started = time.monotonic()
    await store.open("bench", DIM)
    seconds = time.monotonic() - started
    await store.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vectors"
        old_store(path, args.points, args.tenants)
        seconds = asyncio.run(timed_open(path))
    print(f"vector store upgrade: {args.points} points in {seconds:.1f} s")


if __name__ == "__main__":
    main()
