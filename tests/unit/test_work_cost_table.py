"""The rate-limit cost table (ratelimit/admission.py) as pure functions: cost
follows the work of a call."""

from __future__ import annotations

from memoryd.ratelimit.admission import COSTS, STREAM_COSTS, work_cost
from memoryd.v1 import memory_pb2

MEMORY = "/memoryd.v1.MemoryService/"


def batch(n: int, content: str = "x") -> memory_pb2.BatchCreateMemoriesRequest:
    return memory_pb2.BatchCreateMemoriesRequest(
        requests=[memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content))] * n
    )


def test_work_costs_a_unit_per_started_ten_items_or_16_kib_whichever_is_more() -> None:
    assert work_cost(0, 0) == 1
    assert work_cost(1, 10) == 1
    assert work_cost(10, 10) == 1
    assert work_cost(11, 10) == 2
    assert work_cost(40, 400) == 4
    assert work_cost(1, 16 * 1024) == 1
    assert work_cost(1, 16 * 1024 + 1) == 2
    assert work_cost(2, 100 * 1024) == 7


def test_a_batch_costs_by_items_and_by_text_bytes() -> None:
    cost = COSTS[MEMORY + "BatchCreateMemories"]
    assert cost(batch(1)) == 1
    assert cost(batch(40)) == 4
    assert cost(batch(1000)) == 100
    assert cost(batch(3, "t" * 30_000)) == 6  # 90,000 bytes of text
    assert cost(batch(1, "é" * 9_000)) == 2  # UTF-8 bytes, not characters


def test_a_text_search_costs_more_than_a_vector_search_and_grows_with_the_query() -> None:
    cost = COSTS[MEMORY + "SearchMemories"]
    by_vector = cost(memory_pb2.SearchMemoriesRequest(query_embedding=[0.5] * 8))
    by_text = cost(memory_pb2.SearchMemoriesRequest(query="tea"))
    long_text = cost(memory_pb2.SearchMemoriesRequest(query="q" * 40_000))
    assert 1 <= by_vector < by_text < long_text
    # nothing is embedded with a vector given, nor for a search by words alone
    both = memory_pb2.SearchMemoriesRequest(query="q" * 40_000, query_embedding=[0.5] * 8)
    by_words = memory_pb2.SearchMemoriesRequest(query="q" * 40_000, mode=memory_pb2.KEYWORD)
    assert cost(both) == cost(by_words) == by_vector
    diverse = memory_pb2.SearchMemoriesRequest(
        query="q" * 40_000, mode=memory_pb2.KEYWORD, diversity=0.5
    )
    assert cost(diverse) == long_text


def test_an_import_meter_charges_as_a_batch_of_the_same_items_would() -> None:
    for n, content in ((1, "x"), (10, "x"), (35, "x"), (300, "x"), (4, "t" * 20_000)):
        meter = STREAM_COSTS[MEMORY + "ImportMemories"]()
        message = memory_pb2.ImportMemoriesRequest(memory=memory_pb2.Memory(content=content))
        charged = meter.prepaid + sum(meter.add(message) for _ in range(n))
        assert charged == COSTS[MEMORY + "BatchCreateMemories"](batch(n, content)), n


def test_an_import_meter_charges_ahead_not_behind() -> None:
    meter = STREAM_COSTS[MEMORY + "ImportMemories"]()
    message = memory_pb2.ImportMemoriesRequest(memory=memory_pb2.Memory(content="x"))
    dues = [meter.add(message) for _ in range(21)]
    # the prepaid unit covers items 1-10; item 11 and item 21 each start a new unit
    assert [i + 1 for i, due in enumerate(dues) if due] == [11, 21]
