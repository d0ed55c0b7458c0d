"""Semantic search through the whole server with the real default model
(all-MiniLM-L6-v2 from the directory `make models` assembles): a paraphrase
finds the memory that answers it, whether the server embeds the memories one
by one, in a batch, or the query alone.

The directory is `MEMORYD_TEST_MODEL_DIR`, else `models/all-MiniLM-L6-v2`
(relative paths from the repository root). A missing model fails the test.
"""

from __future__ import annotations

import math

import pytest
from helpers.real_model import real_model_dir
from helpers.servers import MakeServer

from memoryd.v1 import memory_pb2

pytestmark = pytest.mark.slow

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
PARAPHRASES = {
    "what does Ana like to drink": ANSWER,
    "which hot beverage does Ana choose": ANSWER,
    "where does Ana work": "Ana works as a nurse in Porto",
    "who needs caffeine in the morning": "Bob drinks three espressos every morning",
}


def model_dir() -> str:
    return str(real_model_dir())


async def test_a_paraphrase_finds_its_memory_through_the_server(make_server: MakeServer) -> None:
    server = await make_server(
        embedding_provider="fastembed",
        embedding_dimension=384,
        embedding_model_dir=model_dir(),
    )
    project = await server.project("real")
    client = server.client(await server.data_key(project))

    # one memory created alone, the rest in a batch: both are embedded by the server
    answer = await client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=ANSWER)),
        metadata=client.md(),
    )
    batch = await client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=text))
                for text in DISTRACTORS
            ]
        ),
        metadata=client.md(),
    )
    assert batch.succeeded_count == len(DISTRACTORS)
    stored = await client.memory.GetMemory(
        memory_pb2.GetMemoryRequest(id=answer.memory.id, include_embedding=True),
        metadata=client.md(),
    )
    assert len(stored.embedding) == 384
    assert math.sqrt(sum(x * x for x in stored.embedding)) == pytest.approx(1.0, abs=1e-4)

    for query, expected in PARAPHRASES.items():
        resp = await client.memory.SearchMemories(
            memory_pb2.SearchMemoriesRequest(query=query, top_k=3), metadata=client.md()
        )
        top = resp.results[0]
        assert top.memory.content == expected, (query, [r.memory.content for r in resp.results])
        assert top.score > resp.results[1].score

    # the stored vector of the answer, as a query, finds the answer first
    by_vector = await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query_embedding=list(stored.embedding), top_k=1),
        metadata=client.md(),
    )
    assert by_vector.results[0].memory.id == answer.memory.id
    assert by_vector.results[0].score == pytest.approx(1.0, abs=1e-3)
