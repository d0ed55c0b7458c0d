"""`memoryd compact-vectors` on the embedded store (`edge_engine.compact_store`):
sealing the appendable segment into an immutable one whose payload indexes
are mapped files changes nothing a reader sees, for any tenant, and writes
after it (to sealed points too) behave as before. The whole `VectorStore`
contract also runs on a store sealed after every write (`edge-sealed` in
test_vector_store_contract.py); here: the compaction itself, on a real
Qdrant Edge shard.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe
from helpers.polling import wait_for

from memoryd.domain.errors import FailedPrecondition
from memoryd.domain.memory import Filter, Match, MemoryRecord
from memoryd.domain.tenancy import Tenant
from memoryd.storage.vectors import layout as p
from memoryd.storage.vectors.edge import EdgeVectorStore
from memoryd.storage.vectors.edge_engine import SHARD, compact_store, marked_model

DIM = 8
MODEL = "test/model-8"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

TENANTS = [
    Tenant("org_a", "prj_a", "env_a"),
    Tenant("org_a", "prj_a", "env_a", "user1"),
    Tenant("org_a", "prj_a", "env_a", "user2"),
    Tenant("org_b", "prj_a", "env_a"),
    Tenant("org_a", "prj_b", "env_a"),
    Tenant("org_a", "prj_a", "env_b"),
]
QUERIES = 4


def vector(rng: random.Random) -> tuple[float, ...]:
    v = [rng.gauss(0, 1) for _ in range(DIM)]
    norm = sum(x * x for x in v) ** 0.5
    return tuple(x / norm for x in v)


def records_of(t: Tenant, rng: random.Random, n: int) -> list[MemoryRecord]:
    """`n` records of `t`: tags, agents and times vary; some expired."""
    recs = []
    for i in range(n):
        at = NOW - timedelta(minutes=i)
        recs.append(
            MemoryRecord(
                id=str(uuid.uuid4()),
                tenant=t,
                content=f"fact {i} of {t.key}",
                metadata={"i": i},
                agent_id=f"agent-{i % 3}",
                thread_id="",
                source="chat",
                tags=("red",) if i % 2 else ("blue",),
                create_time=at,
                update_time=at,
                expire_time=NOW - timedelta(seconds=1) if i % 10 == 9 else None,
                revision=1,
                vector=vector(rng),
                valid_time=at,
            )
        )
    return recs


def written(rng: random.Random, per_tenant: int = 40) -> dict[Tenant, list[MemoryRecord]]:
    """Records of every tenant of TENANTS."""
    return {t: records_of(t, rng, per_tenant) for t in TENANTS}


async def answers(store: EdgeVectorStore, data: dict[Tenant, list[MemoryRecord]]) -> Any:
    """What every tenant reads: searches (all, and filtered by tag and
    agent), every page of its list, its count and its records by id. Asserts
    on the way that no tenant gets another's record by id."""
    rng = random.Random(3)
    queries = [vector(rng) for _ in range(QUERIES)]
    red = Filter(must=(Match("tags", "red"),))
    agent = Filter(must=(Match("agent_id", "agent-1"),))
    out: dict[str, Any] = {}
    for t, recs in data.items():
        mine = [r.id for r in recs]
        for n, q in enumerate(queries):
            for name, flt in (("all", Filter()), ("red", red), ("agent", agent)):
                hits = await store.search([t], q, flt, 10, NOW)
                out[f"{t} search {name} {n}"] = [(h.record.id, round(h.score, 5)) for h in hits]
        listed, cursor = [], None
        while True:
            page = await store.scroll(t, Filter(), 7, NOW, cursor)
            listed += [r.id for r in page.records]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        out[f"{t} list"] = listed
        out[f"{t} count"] = await store.count(t, Filter(), NOW)
        got = await store.get(t, mine, NOW)
        out[f"{t} get"] = sorted((r.id, r.content, r.tags, r.revision) for r in got)
        others = [r.id for u, rs in data.items() if u != t for r in rs]
        assert await store.get(t, others, NOW) == [], f"{t} reads another tenant's records"
    return out


def sealed_segments(store_dir: Path) -> int:
    """How many of the shard's segments are sealed (immutable, indexed)."""
    n = 0
    for seg in (store_dir / SHARD / "segments").iterdir():
        config = json.loads((seg / "segment.json").read_text())["config"]
        n += config["vector_data"][""]["index"]["type"] != "plain"
    return n


async def opened(path: Path) -> EdgeVectorStore:
    store = EdgeVectorStore(path)
    await store.open(MODEL, DIM)
    return store


async def test_a_compacted_store_answers_every_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "vectors"
    data = written(random.Random(1))
    store = await opened(path)
    for t, recs in data.items():
        await store.upsert(t, recs)
    before = await answers(store, data)
    assert any(before[f"{t} search red 0"] for t in TENANTS)
    await store.close()
    assert sealed_segments(path) == 0

    said: list[str] = []
    done = compact_store(path, say=said.append)
    assert done is not None
    assert done.points == sum(len(r) for r in data.values())
    assert done.indexes_rebuilt == 0  # a new store makes its indexes as files
    assert sealed_segments(path) >= 1
    assert said and "sealing" in said[-1]

    store = await opened(path)
    assert await answers(store, data) == before

    # writes to sealed points: an update, a delete, an environment's purge
    first, second = TENANTS[0], TENANTS[1]
    changed = replace(data[first][0], content="changed", tags=("green",), revision=2)
    await store.upsert(first, [changed])
    data[first][0] = changed
    await store.delete(second, [data[second][1].id])
    del data[second][1]
    gone = TENANTS[5]
    assert await store.delete_scope(gone.org_id, gone.project_id, gone.environment_id) == 40
    data[gone] = []
    hits = await store.search(
        [first], changed.vector, Filter(must=(Match("tags", "green"),)), 5, NOW
    )
    assert [h.record.id for h in hits] == [changed.id]
    after = await answers(store, data)
    assert after[f"{gone} count"] == 0
    assert after[f"{second} count"] == before[f"{second} count"] - 1
    await store.close()

    # a second compaction seals what came since; nothing changes for readers
    again = compact_store(path, say=said.append)
    assert again is not None and again.points == sum(len(r) for r in data.values())
    store = await opened(path)
    assert await answers(store, data) == after
    await store.close()


async def test_compaction_rebuilds_the_indexes_an_older_store_keeps_in_memory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vectors"
    data = written(random.Random(2), per_tenant=10)
    store = await opened(path)
    for t, recs in data.items():
        await store.upsert(t, recs)
    before = await answers(store, data)
    await store.close()
    # as an older memoryd made them: in memory, not in files
    shard = qe.EdgeShard.load(str(path / SHARD))
    for key in (p.TENANT, p.CREATE_TIME):
        params: Any = (
            qe.KeywordIndexParams(is_tenant=True)
            if key == p.TENANT
            else qe.IntegerIndexParams(lookup=False, range=True, enable_hnsw=False)
        )
        shard.update(qe.UpdateOperation.create_field_index(key, params))
    shard.flush()
    shard.close()

    done = compact_store(path, say=lambda line: None)
    assert done is not None and done.indexes_rebuilt == 2
    shard = qe.EdgeShard.load(str(path / SHARD))
    schema = shard.info().payload_schema
    shard.close()
    assert {k: schema[k].params.memory for k in p.INDEXES} == dict.fromkeys(
        p.INDEXES, qe.Memory.Cold
    )
    store = await opened(path)
    assert await answers(store, data) == before
    await store.close()


async def test_compaction_waits_for_no_server_and_needs_a_store(tmp_path: Path) -> None:
    path = tmp_path / "vectors"
    assert compact_store(path, say=lambda line: None) is None  # nothing there
    assert marked_model(path) is None
    store = EdgeVectorStore(path, process=True)
    await store.open(MODEL, DIM)
    try:
        with pytest.raises(FailedPrecondition) as info:
            compact_store(path, say=lambda line: None)
        assert info.value.reason == "VECTOR_STORE_LOCKED"
    finally:
        await store.close()
    assert marked_model(path) == (MODEL, DIM)
    assert sealed_segments(path) == 0


async def test_a_compaction_killed_midway_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    """kill -9 while the engine writes the sealed segment (seen as its
    temporary directory appearing): the store opens with every record, and
    the next compaction completes."""
    path = tmp_path / "vectors"
    rng = random.Random(4)
    data = written(rng, per_tenant=10)
    bulk = Tenant("org_c", "prj_c", "env_c")
    data[bulk] = records_of(bulk, rng, 3000)  # enough that sealing takes a while
    store = await opened(path)
    for t, recs in data.items():
        for i in range(0, len(recs), 200):
            await store.upsert(t, recs[i : i + 200])
    before = await answers(store, data)
    await store.close()

    temp = path / SHARD / "temp_segments"
    compaction = subprocess.Popen(  # noqa: ASYNC220 - started once, then polled
        [
            sys.executable,
            "-c",
            "import sys; from memoryd.storage.vectors.edge_engine import compact_store; "
            "compact_store(sys.argv[1], say=print)",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: temp.is_dir() and any(temp.iterdir()), within=120)
    finally:
        compaction.kill()
        compaction.wait(10)
    assert compaction.returncode == -signal.SIGKILL, "the compaction ended before the kill"

    store = await opened(path)
    assert await answers(store, data) == before
    await store.close()
    done = compact_store(path, say=lambda line: None)
    assert done is not None and done.points == sum(len(r) for r in data.values())
    store = await opened(path)
    assert await answers(store, data) == before
    await store.close()
