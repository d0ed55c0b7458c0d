"""Read-ahead of a store's files into the page cache (storage/read_ahead.py),
on real files and a real Qdrant Edge shard: what it advises, within what
budget, and that the kernel then holds the pages (read with mincore(2))."""

from __future__ import annotations

import ctypes
import mmap
import os
import random
from pathlib import Path

from helpers.polling import wait_for

from memoryd.storage import read_ahead
from memoryd.storage.vectors.edge import EdgeVectorStore
from memoryd.storage.vectors.edge_engine import SEGMENT_DIR, SHARD, EdgeEngine, compact_store
from tests.integration.test_vector_store_compaction import DIM, MODEL, written

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)


def resident_share(path: Path) -> float:
    """The share of `path`'s pages in the page cache (a sparse file's holes
    count as pages not in it)."""
    size = path.stat().st_size
    pages = (size + PAGE - 1) // PAGE
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
        view = ctypes.c_char.from_buffer(mm)  # a copy-on-write mapping: readable, never written
        try:
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(size), vec):
                raise OSError(ctypes.get_errno(), "mincore")
            return sum(b & 1 for b in vec) / pages
        finally:
            del view  # before the mapping closes


def data_resident(path: Path) -> bool:
    """Whether (nearly) every page of `path` that holds data is in the page
    cache: the bytes allocated on disk, at most its length in whole pages."""
    size = path.stat().st_size
    pages = (size + PAGE - 1) // PAGE
    held = min(path.stat().st_blocks * 512, pages * PAGE)
    return resident_share(path) * pages * PAGE >= 0.9 * held


def dropped(path: Path) -> Path:
    """`path` written to disk and its pages dropped from the page cache."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return path


def data_file(path: Path, mib: int) -> Path:
    path.write_bytes(random.Random(7).randbytes(mib << 20))
    return dropped(path)


async def test_a_read_ahead_brings_the_files_into_the_page_cache(tmp_path: Path) -> None:
    files = [data_file(tmp_path / f"part{i}", 4) for i in range(3)]
    assert all(resident_share(f) < 0.2 for f in files), "the pages were not dropped"

    ahead = read_ahead.start(tmp_path, budget_bytes=1 << 30)
    assert ahead is not None
    ahead.join(30)
    assert ahead.errors == []
    assert ahead.advised_bytes == sum(f.stat().st_blocks * 512 for f in files)
    await wait_for(lambda: all(data_resident(f) for f in files), within=30)


def test_the_budget_takes_the_smallest_files_first(tmp_path: Path) -> None:
    small, middle, large = (data_file(tmp_path / n, m) for n, m in (("a", 1), ("b", 2), ("c", 4)))
    sizes = {f: f.stat().st_blocks * 512 for f in (small, middle, large)}
    ahead = read_ahead.start(tmp_path, budget_bytes=sizes[small] + sizes[middle] + 4096)
    assert ahead is not None
    ahead.join(30)
    assert [path for path, _ in ahead.files] == [str(small), str(middle)]
    assert ahead.skipped_bytes == sizes[large]
    assert ahead.advised_bytes == sizes[small] + sizes[middle]


def test_nothing_to_read_starts_nothing(tmp_path: Path) -> None:
    assert read_ahead.start(tmp_path, budget_bytes=1 << 30) is None  # no files
    data_file(tmp_path / "a", 1)
    assert read_ahead.start(tmp_path, budget_bytes=0) is None
    assert read_ahead.start(tmp_path, budget_bytes=4096) is None  # every file over it
    assert read_ahead.start(tmp_path / "missing", budget_bytes=1 << 30) is None


def test_the_default_budget_is_half_the_available_memory() -> None:
    budget = read_ahead._default_budget()
    available_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable:")
    )
    assert budget is not None
    assert abs(budget - available_kb * 1024 // 2) < 256 << 20  # memory moves meanwhile


async def compacted_store(path: Path) -> Path:
    """A store at `path` with the records of every test tenant, compacted."""
    store = EdgeVectorStore(path)
    await store.open(MODEL, DIM)
    for t, recs in written(random.Random(5)).items():
        await store.upsert(t, recs)
    await store.close()
    assert compact_store(path, say=lambda _: None) is not None
    return path


async def test_opening_a_compacted_store_reads_its_segments_ahead(tmp_path: Path) -> None:
    path = await compacted_store(tmp_path / "vectors")
    segments = path / SHARD / SEGMENT_DIR
    mapped = [f for f in segments.rglob("*") if f.is_file() and f.stat().st_blocks]
    for f in mapped:
        dropped(f)

    engine = EdgeEngine(path)
    engine.open(MODEL, DIM)
    try:
        ahead = engine.read_ahead
        assert ahead is not None
        ahead.join(30)
        assert ahead.errors == []
        assert {Path(f) for f, _ in ahead.files} == set(mapped)
        # the sealed segment's payload indexes are among the files read
        assert any("payload_index" in f for f, _ in ahead.files)
        await wait_for(lambda: all(data_resident(f) for f in mapped), within=30)
    finally:
        engine.close(optimize=False)


async def test_compaction_reads_nothing_ahead(tmp_path: Path) -> None:
    path = await compacted_store(tmp_path / "vectors")
    engine = EdgeEngine(path, sealing=True)
    engine.open(MODEL, DIM)
    try:
        assert engine.read_ahead is None  # it rewrites the segments, reading them once
    finally:
        engine.close(optimize=False)
