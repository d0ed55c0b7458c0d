"""The real all-MiniLM-L6-v2 model from the directory `make models` assembles.

The directory is `MEMORYD_TEST_MODEL_DIR` (the Makefile sets it), else
`models/all-MiniLM-L6-v2`; a relative path is taken from the repository root.
A missing directory fails these tests: they must not pass by skipping.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from helpers.real_model import real_model_dir as model_dir

from memoryd.embeddings import FastEmbedEmbedder, build_embedder, model_identity

pytestmark = pytest.mark.slow

QUERY = "what does Ana like to drink"
ANSWER = "Ana prefers green tea over coffee"
DISTRACTORS = [
    "Ana's favourite colour is blue",
    "Ana likes hiking in the mountains",
    "Ana works as a nurse in Porto",
    "Bob drinks three espressos every morning",
    "The office coffee machine is broken again",
    "Water the plants on the balcony twice a week",
    "The team meeting moved to Tuesday",
]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def embedder() -> Iterator[FastEmbedEmbedder]:
    loaded = build_embedder(
        "fastembed",
        model_dir=str(model_dir()),
        dimension=384,
        openai_base_url="",
        openai_api_key="",
        openai_model="",
        timeout_s=1.0,
        threads=2,
    )
    assert isinstance(loaded, FastEmbedEmbedder)
    yield loaded
    asyncio.run(loaded.close())


async def test_the_query_is_closest_to_the_memory_that_answers_it(
    embedder: FastEmbedEmbedder,
) -> None:
    query = (await embedder.embed([QUERY]))[0]
    memories = [ANSWER, *DISTRACTORS]
    vectors = await embedder.embed(memories)
    scores = {text: cosine(query, vector) for text, vector in zip(memories, vectors, strict=True)}
    best = max(scores, key=lambda text: scores[text])
    assert best == ANSWER, scores


async def test_vectors_are_unit_norm_384_floats_of_the_named_model(
    embedder: FastEmbedEmbedder,
) -> None:
    assert embedder.model_id == "fastembed:sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.dimension == 384
    assert model_identity("fastembed", dimension=384, openai_model="") == (
        embedder.model_id,
        embedder.dimension,
    )
    vectors = await embedder.embed(["", "short", "a much longer sentence " * 200])
    for vector in vectors:
        assert len(vector) == 384
        assert all(isinstance(v, float) for v in vector)
        assert math.sqrt(sum(v * v for v in vector)) == pytest.approx(1.0, abs=1e-5)


async def test_concurrent_callers_get_what_they_would_get_alone(
    embedder: FastEmbedEmbedder,
) -> None:
    texts = [ANSWER, *DISTRACTORS]
    alone = [(await embedder.embed([t]))[0] for t in texts]
    together = await asyncio.gather(*(embedder.embed([t]) for t in texts))
    for single, batched in zip(alone, together, strict=True):
        assert batched[0] == pytest.approx(single, abs=1e-5)


def test_the_model_loads_and_runs_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the embedder tried to use the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    offline = FastEmbedEmbedder(model_dir(), threads=1)
    try:
        vectors = offline.embed_sync([QUERY])
        assert len(vectors[0]) == 384
    finally:
        asyncio.run(offline.close())


def test_small_calls_run_on_one_thread_and_agree_with_batches(
    embedder: FastEmbedEmbedder,
) -> None:
    def threads_of_last_call() -> int:
        session = embedder._model.model.model
        return int(session.get_session_options().intra_op_num_threads)

    texts = [ANSWER, *DISTRACTORS]
    alone = [embedder.embed_sync([t])[0] for t in texts]
    assert threads_of_last_call() == 1
    together = embedder.embed_sync(texts)
    assert threads_of_last_call() == 2
    for single, batched in zip(alone, together, strict=True):
        assert batched == pytest.approx(single, abs=1e-5)
