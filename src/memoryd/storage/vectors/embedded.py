"""What the settings say about the server's embedded (Qdrant Edge) stores,
in one place for the server's build (`memoryd.app`) and for `memoryd
serve`'s head start (`cli`), which reads it before `memoryd.app` is
imported: so this module imports nothing heavy. A head start that the
build would not adopt costs only the time it saved; the two agreeing
through these functions is what makes it pay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memoryd.config import Settings
from memoryd.storage.vectors.edge_engine import MARKER

MEMORIES = "vectors"  # the memories' store
KNOWLEDGE = "knowledge"  # the documents' chunks' store
STORES = (MEMORIES, KNOWLEDGE)


def store_path(settings: Settings, name: str = MEMORIES) -> Path:
    """The directory of embedded store `name`."""
    return Path(settings.data_dir) / name


def existing_store(settings: Settings, name: str = MEMORIES) -> Path | None:
    """The directory of embedded store `name` when the settings use the
    embedded engine (no Qdrant URL) and the store exists (its model marker
    is on disk); None otherwise."""
    if settings.qdrant_url:
        return None
    path = store_path(settings, name)
    return path if (path / MARKER).is_file() else None


def head_start_store(settings: Settings) -> Path | None:
    """The memories' store that `memoryd serve` may start opening before
    the server is built: an existing embedded store whose engine this
    process runs in a child process (not a worker of `serve --workers N`,
    whose parent hosts the engine)."""
    if settings.engine_socket_dir or not settings.vector_engine_process:
        return None
    return existing_store(settings)


def store_options(settings: Settings) -> dict[str, Any]:
    """The settings' share of an embedded store's engine options: the
    `EdgeVectorStore` keyword arguments that reach its engine
    (`edge_backends.engine_options`)."""
    return {
        "sync_writes": settings.vector_sync_writes,
        "min_free_bytes": settings.min_free_bytes,
        "search_threads": settings.vector_search_threads or None,
    }


def configured_identity(settings: Settings) -> tuple[str, int]:
    """The (model id, dimension) the configured embedder will report,
    without loading it."""
    from memoryd.embeddings import model_identity  # httpx and the batcher: ~0.2 s

    return model_identity(
        settings.embedding_provider,
        dimension=settings.embedding_dimension,
        openai_model=settings.openai_model,
    )
