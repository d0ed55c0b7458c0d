"""The embedding providers that need no model: hashing, none, the factory,
normalization and the micro-batcher."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers.gated_model import GatedModel

from memoryd.domain.errors import InvalidArgument, ResourceExhausted, Unavailable
from memoryd.domain.memory import Embedder
from memoryd.embeddings import (
    FastEmbedEmbedder,
    HashingEmbedder,
    MicroBatcher,
    NoEmbedder,
    OpenAIEmbedder,
    build_embedder,
    model_identity,
)
from memoryd.embeddings._vectors import unit_normalize


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(v: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def build(
    provider: str,
    *,
    model_dir: str = "/nonexistent/memoryd-model",
    dimension: int = 64,
    openai_base_url: str = "http://127.0.0.1:9/v1",
    timeout_s: float = 1.0,
) -> Embedder:
    return build_embedder(
        provider,
        model_dir=model_dir,
        dimension=dimension,
        openai_base_url=openai_base_url,
        openai_api_key="sk-test",
        openai_model="text-embedding-3-small",
        timeout_s=timeout_s,
        threads=1,
    )


# --- normalization -------------------------------------------------------------


def test_unit_normalize_scales_to_norm_one() -> None:
    assert unit_normalize([3.0, 4.0]) == pytest.approx([0.6, 0.8])
    assert norm(unit_normalize([1e-30, 2e-30, -5.0])) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [[0.0, 0.0], [1.0, math.nan], [math.inf, 1.0]])
def test_unit_normalize_refuses_vectors_without_direction(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        unit_normalize(bad)


# --- hashing -------------------------------------------------------------------


async def test_hashing_gives_deterministic_unit_vectors_of_its_dimension() -> None:
    embedder = HashingEmbedder(64)
    texts = ["Ana prefers green tea", "", "!!!", "tea tea tea"]
    first = await embedder.embed(texts)
    again = await HashingEmbedder(64).embed(texts)
    assert first == again
    assert embedder.model_id == "hashing:64"
    assert embedder.dimension == 64
    for vector in first:
        assert len(vector) == 64
        assert norm(vector) == pytest.approx(1.0)


async def test_hashing_makes_texts_sharing_words_similar() -> None:
    embedder = HashingEmbedder(256)
    query, related, unrelated = await embedder.embed(
        ["what tea does Ana drink", "Ana drinks green tea", "the deploy failed on Friday"]
    )
    assert cosine(query, related) > 0.3
    assert cosine(query, related) > cosine(query, unrelated) + 0.2
    # Case and punctuation do not change the words.
    a, b = await embedder.embed(["Green TEA!", "green tea"])
    assert a == b


async def test_hashing_answers_in_order_and_nothing_for_nothing() -> None:
    embedder = HashingEmbedder(32)
    batch = await embedder.embed(["one", "two", "three"])
    singles = [(await embedder.embed([t]))[0] for t in ["one", "two", "three"]]
    assert batch == singles
    assert await embedder.embed([]) == []


def test_hashing_refuses_a_dimension_below_one() -> None:
    with pytest.raises(ValueError, match="dimension"):
        HashingEmbedder(0)


# --- none ----------------------------------------------------------------------


async def test_none_asks_the_client_for_vectors() -> None:
    embedder = NoEmbedder(384)
    assert embedder.dimension == 384
    assert embedder.model_id == "none:384"
    with pytest.raises(InvalidArgument) as caught:
        await embedder.embed(["hello"])
    assert caught.value.reason == "EMBEDDING_REQUIRED"
    assert "does not embed text: send `embedding`" in caught.value.message
    assert caught.value.code == "INVALID_ARGUMENT"
    await embedder.close()


# --- factory -------------------------------------------------------------------


async def test_factory_builds_each_provider_without_a_model() -> None:
    hashing = build("hashing")
    assert isinstance(hashing, HashingEmbedder)
    assert hashing.dimension == 64
    none = build("none", dimension=8)
    assert isinstance(none, NoEmbedder)
    assert none.dimension == 8
    openai = build("OpenAI")
    assert isinstance(openai, OpenAIEmbedder)
    assert openai.model_id == "openai:text-embedding-3-small"
    await openai.close()


@pytest.mark.parametrize(
    ("provider", "dimension"), [("hashing", 64), ("none", 8), ("OpenAI", 1536), ("hashing", 3)]
)
async def test_the_model_identity_is_that_of_the_embedder_the_settings_make(
    provider: str, dimension: int
) -> None:
    embedder = build(provider, dimension=dimension)
    try:
        assert model_identity(
            provider, dimension=dimension, openai_model="text-embedding-3-small"
        ) == (embedder.model_id, embedder.dimension)
    finally:
        await embedder.close()


def test_the_model_identity_of_an_unknown_provider_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown embedding provider 'sbert'.*fastembed"):
        model_identity("sbert", dimension=8, openai_model="")


def test_factory_names_the_choices_for_an_unknown_provider() -> None:
    with pytest.raises(ValueError, match=r"unknown embedding provider 'sbert'.*fastembed"):
        build("sbert")


def test_factory_says_run_make_models_when_the_model_dir_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="run `make models`"):
        build("fastembed", model_dir=str(missing))


def test_fastembed_names_the_files_an_incomplete_model_dir_lacks(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"lacks model\.onnx.*run `make models`"):
        FastEmbedEmbedder(tmp_path)


def test_factory_refuses_bad_openai_settings() -> None:
    with pytest.raises(ValueError, match="base URL"):
        build("openai", openai_base_url="")
    with pytest.raises(ValueError, match="timeout"):
        build("openai", timeout_s=0.0)


# --- micro-batcher -------------------------------------------------------------


class FakeModel:
    """A blocking 'model': vector [len(text), 1.0]; records each call."""

    def __init__(self, delay_s: float = 0.0, poison: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.delay_s = delay_s
        self.poison = poison
        self.lock = threading.Lock()

    def __call__(self, texts: list[str]) -> list[list[float]]:
        with self.lock:
            self.calls.append(list(texts))
        if self.poison is not None and self.poison in texts:
            raise RuntimeError("poisoned text")
        threading.Event().wait(self.delay_s)
        return [[float(len(t)), 1.0] for t in texts]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


async def test_batcher_merges_concurrent_calls_and_answers_each_its_own(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel(delay_s=0.02)
    batcher = MicroBatcher(model, executor, max_texts=64)
    texts = [["a"], ["bb", "ccc"], ["dddd"], ["eeeee"], ["ffffff", "g"]]
    results = await asyncio.gather(*(batcher.submit(t) for t in texts))
    for sent, got in zip(texts, results, strict=True):
        assert got == [[float(len(t)), 1.0] for t in sent]
    # All arrived in one loop tick: one model call, not five.
    assert len(model.calls) == 1
    await batcher.close()


async def test_batcher_batches_callers_that_arrive_while_the_model_runs(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel(delay_s=0.05)
    batcher = MicroBatcher(model, executor)
    first = asyncio.ensure_future(batcher.submit(["x"]))
    await asyncio.sleep(0.01)  # the first call is running now
    rest = await asyncio.gather(*(batcher.submit(["y" * i]) for i in range(1, 5)))
    assert await first == [[1.0, 1.0]]
    assert rest == [[[float(i), 1.0]] for i in range(1, 5)]
    assert len(model.calls) == 2
    await batcher.close()


async def test_batcher_splits_requests_into_calls_of_at_most_max_texts(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel()
    batcher = MicroBatcher(model, executor, max_texts=3)
    results = await asyncio.gather(
        batcher.submit(["a", "b"]), batcher.submit(["c", "d"]), batcher.submit(["e" * 5] * 4)
    )
    assert [len(c) for c in model.calls] == [3, 3, 2]
    assert results[2] == [[5.0, 1.0]] * 4
    await batcher.close()


async def test_batcher_bounds_the_characters_of_one_model_call(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel()
    batcher = MicroBatcher(model, executor, max_texts=32, max_chars=10)
    long = "x" * 50
    assert await batcher.submit(["aaaa", "bbbb", "cccc", long, "d"]) == [
        [4.0, 1.0],
        [4.0, 1.0],
        [4.0, 1.0],
        [50.0, 1.0],
        [1.0, 1.0],
    ]
    # a text longer than the budget goes alone
    assert model.calls == [["aaaa", "bbbb"], ["cccc"], [long], ["d"]]
    await batcher.close()


async def test_batcher_fails_only_the_caller_with_a_bad_text(executor: ThreadPoolExecutor) -> None:
    model = FakeModel(poison="boom")
    batcher = MicroBatcher(model, executor)
    good, bad, other = await asyncio.gather(
        batcher.submit(["fine"]),
        batcher.submit(["boom"]),
        batcher.submit(["also fine"]),
        return_exceptions=True,
    )
    assert good == [[4.0, 1.0]]
    assert isinstance(bad, RuntimeError)
    assert other == [[9.0, 1.0]]
    await batcher.close()


async def test_batcher_drops_cancelled_callers(executor: ThreadPoolExecutor) -> None:
    model = FakeModel(delay_s=0.05)
    batcher = MicroBatcher(model, executor)
    running = asyncio.ensure_future(batcher.submit(["first"]))
    await asyncio.sleep(0.01)
    doomed = asyncio.ensure_future(batcher.submit(["cancelled"]))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await running == [[5.0, 1.0]]
    assert await batcher.submit(["next"]) == [[4.0, 1.0]]
    assert all("cancelled" not in call for call in model.calls)
    await batcher.close()


async def test_batcher_refuses_work_after_close(executor: ThreadPoolExecutor) -> None:
    model = FakeModel(delay_s=0.05)
    batcher = MicroBatcher(model, executor)
    running = asyncio.ensure_future(batcher.submit(["first"]))
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(batcher.submit(["second"]))
    await asyncio.sleep(0)
    await batcher.close()
    with pytest.raises(Unavailable):
        await running
    with pytest.raises(Unavailable):
        await waiting
    with pytest.raises(Unavailable) as closed:
        await batcher.submit(["third"])
    assert closed.value.reason == "EMBEDDER_CLOSED"
    await batcher.close()


def test_batcher_works_across_event_loops(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    batcher = MicroBatcher(model, executor)
    assert asyncio.run(batcher.submit(["ab"])) == [[2.0, 1.0]]
    assert asyncio.run(batcher.submit(["abc"])) == [[3.0, 1.0]]


def test_batcher_rejects_bad_settings(executor: ThreadPoolExecutor) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(FakeModel(), executor, max_texts=0)
    with pytest.raises(ValueError):
        MicroBatcher(FakeModel(), executor, max_wait_s=-1)
    with pytest.raises(ValueError):
        MicroBatcher(FakeModel(), executor, max_chars=0)
    with pytest.raises(ValueError):
        MicroBatcher(FakeModel(), executor, max_queued_texts=0)


# --- fairness, cancellation and shutdown (a model gated by the test) ------------


def texts_of(key: str, n: int) -> list[str]:
    return [f"{key}{i}" for i in range(n)]


async def test_batcher_serves_another_key_before_the_rest_of_a_large_request(
    executor: ThreadPoolExecutor,
) -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, executor, max_texts=4)
    big = asyncio.ensure_future(batcher.submit(texts_of("a", 20), "org-a"))
    await model.entered()  # the model is busy with a's first chunk
    query = asyncio.ensure_future(batcher.submit(["b-query"], "org-b"))
    await asyncio.sleep(0)
    model.open()
    assert len(await query) == 1
    assert len(await big) == 20
    # b's query shares the very next call with a's next texts; the rest of a follows
    assert model.calls[0] == ["a0", "a1", "a2", "a3"]
    assert model.calls[1] == ["a4", "b-query", "a5", "a6"]
    assert [t for call in model.calls[2:] for t in call] == texts_of("a", 20)[7:]
    await batcher.close()


async def test_batcher_takes_keys_in_turn_when_both_have_much_waiting(
    executor: ThreadPoolExecutor,
) -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, executor, max_texts=4)
    blocker = asyncio.ensure_future(batcher.submit(["first"], "org-c"))
    await model.entered()
    a = asyncio.ensure_future(batcher.submit(texts_of("a", 6), "org-a"))
    b = asyncio.ensure_future(batcher.submit(texts_of("b", 6), "org-b"))
    await asyncio.sleep(0)
    model.open()
    await asyncio.gather(blocker, a, b)
    assert model.calls[1:] == [
        ["a0", "b0", "a1", "b1"],
        ["a2", "b2", "a3", "b3"],
        ["a4", "b4", "a5", "b5"],
    ]
    await batcher.close()


async def test_a_cancelled_request_sends_no_further_chunk_to_the_model(
    executor: ThreadPoolExecutor,
) -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, executor, max_texts=4)
    big = asyncio.ensure_future(batcher.submit(texts_of("a", 1000), "org-a"))
    await model.entered()  # blocked inside chunk 1
    big.cancel()
    await asyncio.sleep(0)
    assert batcher.queued_texts("org-a") == 0  # its place in the queue is free at once
    model.open()
    assert await batcher.submit(["after"], "org-a") == [model(["after"])[0]]
    # chunk 1 and the later request: nothing more of the cancelled one
    assert model.calls[:2] == [["a0", "a1", "a2", "a3"], ["after"]]
    with pytest.raises(asyncio.CancelledError):
        await big
    await batcher.close()


async def test_close_drops_pending_chunks_without_waiting_for_the_model(
    executor: ThreadPoolExecutor,
) -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, executor, max_texts=4)
    big = asyncio.ensure_future(batcher.submit(texts_of("a", 1000), "org-a"))
    other = asyncio.ensure_future(batcher.submit(["b"], "org-b"))
    await model.entered()
    # the model is still blocked: close returns anyway
    await asyncio.wait_for(batcher.close(), 5.0)
    for call in (big, other):
        with pytest.raises(Unavailable):
            await call
    model.open()
    executor.shutdown(wait=True)
    assert len(model.calls) == 1


async def test_a_key_with_too_much_waiting_is_refused_with_a_retry_delay(
    executor: ThreadPoolExecutor,
) -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, executor, max_texts=4, max_queued_texts=10)
    blocker = asyncio.ensure_future(batcher.submit(["first"], "org-c"))
    await model.entered()
    first = asyncio.ensure_future(batcher.submit(texts_of("a", 8), "org-a"))
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted) as info:
        await batcher.submit(texts_of("x", 3), "org-a")
    assert info.value.reason == "EMBEDDING_QUEUE_FULL"
    assert info.value.retry_after is not None and info.value.retry_after > 0
    fits = asyncio.ensure_future(batcher.submit(texts_of("y", 2), "org-a"))
    # another key, and a key with nothing waiting, are admitted however large
    large = asyncio.ensure_future(batcher.submit(texts_of("b", 30), "org-b"))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    again = asyncio.ensure_future(batcher.submit(texts_of("z", 8), "org-a"))
    model.open()
    await asyncio.gather(blocker, fits, large, again)
    await batcher.close()
