"""`vector_search_threads` reaches the embedded engine, in its own process:
the engine starts that many search threads (named edge-search-N by Qdrant
Edge), one by default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memoryd.app import open_vector_store
from memoryd.config import Settings
from memoryd.storage.vectors.edge import EdgeVectorStore


def search_threads(pid: int) -> int:
    tasks = Path(f"/proc/{pid}/task")
    return sum((task / "comm").read_text().startswith("edge-search") for task in tasks.iterdir())


@pytest.mark.parametrize(("configured", "expected"), [(None, 1), (3, 3)])
async def test_the_engine_runs_the_configured_search_threads(
    tmp_path: Path, configured: int | None, expected: int
) -> None:
    values: dict[str, object] = {
        "data_dir": str(tmp_path),
        "embedding_provider": "hashing",
        "embedding_dimension": 8,
        "vector_engine_process": True,
    }
    if configured is not None:
        values["vector_search_threads"] = configured
    store = await open_vector_store(Settings(**values))  # type: ignore[arg-type]
    try:
        assert isinstance(store, EdgeVectorStore)
        pid = store.engine_pid
        assert pid is not None and pid != os.getpid()
        assert search_threads(pid) == expected
    finally:
        await store.close()
