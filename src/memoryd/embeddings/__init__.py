"""Text → vector providers implementing `memoryd.domain.memory.Embedder`.

| provider    | class               | model_id                                        |
|-------------|---------------------|-------------------------------------------------|
| `fastembed` | `FastEmbedEmbedder` | `fastembed:sentence-transformers/all-MiniLM-L6-v2` |
| `openai`    | `OpenAIEmbedder`    | `openai:<model>`                                |
| `none`      | `NoEmbedder`        | `none:<dimension>`                              |
| `hashing`   | `HashingEmbedder`   | `hashing:<dimension>` (tests only)              |

`build_embedder` is the one way the composition root makes one. Importing
this package loads no model and opens no connection.
"""

from __future__ import annotations

from memoryd.domain.memory import Embedder
from memoryd.embeddings.batcher import MicroBatcher
from memoryd.embeddings.cache import CachingEmbedder
from memoryd.embeddings.fastembed_local import (
    DEFAULT_DIMENSION,
    DEFAULT_MODEL,
    FastEmbedEmbedder,
)
from memoryd.embeddings.hashing import HashingEmbedder
from memoryd.embeddings.none import NoEmbedder
from memoryd.embeddings.openai import OpenAIEmbedder

PROVIDERS = ("fastembed", "openai", "none", "hashing")

__all__ = [
    "DEFAULT_DIMENSION",
    "DEFAULT_MODEL",
    "PROVIDERS",
    "CachingEmbedder",
    "FastEmbedEmbedder",
    "HashingEmbedder",
    "MicroBatcher",
    "NoEmbedder",
    "OpenAIEmbedder",
    "build_embedder",
    "model_identity",
]


def model_identity(provider: str, *, dimension: int, openai_model: str) -> tuple[str, int]:
    """The (model id, dimension) of the embedder that `build_embedder` makes
    with these settings, without making it (no model is loaded): the server
    opens its vector store, which is made for one model, while the model
    loads. Raises `ValueError` for an unknown provider, as `build_embedder`
    does. (A fastembed model that does not make `dimension`-d vectors is
    refused when it loads.)"""
    name = provider.strip().lower()
    if name == "fastembed":
        return f"fastembed:{DEFAULT_MODEL}", dimension
    if name == "openai":
        return f"openai:{openai_model}", dimension
    if name in ("none", "hashing"):
        return f"{name}:{dimension}", dimension
    raise _unknown(provider)


def _unknown(provider: str) -> ValueError:
    return ValueError(
        f"unknown embedding provider {provider!r}: choose one of {', '.join(PROVIDERS)}"
    )


def build_embedder(
    provider: str,
    *,
    model_dir: str,
    dimension: int,
    openai_base_url: str,
    openai_api_key: str,
    openai_model: str,
    timeout_s: float,
    threads: int,
    batch_texts: int = 64,
    batch_chars: int = 16384,
    queued_texts: int = 4096,
    cache_size: int = 0,
) -> Embedder:
    """The embedder for `provider` (one of `PROVIDERS`).

    Arguments that a provider does not use are ignored: `model_dir` and
    `threads` are for `fastembed`, and so are `batch_texts`, `batch_chars`
    (the bounds of one model call) and `queued_texts` (the most texts one
    fairness key may have waiting); the `openai_*` ones and `timeout_s` for
    `openai`; `dimension` is checked against the fastembed model and is the
    vector size for the others.

    Raises `ValueError` with a message for a person: an unknown provider, a
    missing or incomplete model directory ("run `make models`"), a
    dimension that the model does not make, or a bad setting.
    `fastembed` loads its model here, so call this at start-up.
    """
    embedder = _provider(
        provider,
        model_dir=model_dir,
        dimension=dimension,
        openai_base_url=openai_base_url,
        openai_api_key=openai_api_key,
        openai_model=openai_model,
        timeout_s=timeout_s,
        threads=threads,
        batch_texts=batch_texts,
        batch_chars=batch_chars,
        queued_texts=queued_texts,
    )
    if cache_size < 0:
        raise ValueError(f"the embedding cache size must not be negative, got {cache_size}")
    if cache_size == 0 or isinstance(embedder, NoEmbedder):
        return embedder
    return CachingEmbedder(embedder, cache_size)


def _provider(
    provider: str,
    *,
    model_dir: str,
    dimension: int,
    openai_base_url: str,
    openai_api_key: str,
    openai_model: str,
    timeout_s: float,
    threads: int,
    batch_texts: int,
    batch_chars: int,
    queued_texts: int,
) -> Embedder:
    name = provider.strip().lower()
    if name == "fastembed":
        return FastEmbedEmbedder(
            model_dir,
            dimension=dimension,
            threads=threads,
            max_batch_texts=batch_texts,
            max_batch_chars=batch_chars,
            max_queued_texts=queued_texts,
        )
    if name == "openai":
        return OpenAIEmbedder(
            base_url=openai_base_url,
            api_key=openai_api_key,
            model=openai_model,
            dimension=dimension,
            timeout_s=timeout_s,
        )
    if name == "none":
        return NoEmbedder(dimension)
    if name == "hashing":
        return HashingEmbedder(dimension)
    raise _unknown(provider)
