"""The query-vector cache: hits, per-organization keys, its bound, and off."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from memoryd.domain.errors import Unavailable
from memoryd.embeddings import (
    CachingEmbedder,
    HashingEmbedder,
    NoEmbedder,
    build_embedder,
)


class CountingEmbedder:
    """The hashing embedder, counting the texts it was asked for."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder(32)
        self.asked: list[tuple[str, str]] = []
        self.fail_next = False
        self.closed = False

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    async def embed(self, texts: Sequence[str], *, fairness_key: str = "") -> list[list[float]]:
        if self.fail_next:
            self.fail_next = False
            raise Unavailable("the model is down", reason="TEST")
        self.asked += [(fairness_key, t) for t in texts]
        return await self.inner.embed(texts)

    async def close(self) -> None:
        self.closed = True


async def test_a_repeated_query_of_one_organization_is_answered_from_the_cache() -> None:
    inner = CountingEmbedder()
    cache = CachingEmbedder(inner, 8)
    first = await cache.embed(["where does Ann live?"], fairness_key="org-a")
    again = await cache.embed(["where does Ann live?"], fairness_key="org-a")
    assert again == first == await inner.inner.embed(["where does Ann live?"])
    assert inner.asked == [("org-a", "where does Ann live?")]
    assert (cache.hits, cache.misses) == (1, 1)
    # callers get their own list: changing one does not change the next answer
    again[0][0] = 42.0
    assert await cache.embed(["where does Ann live?"], fairness_key="org-a") == first


async def test_organizations_and_texts_do_not_share_entries() -> None:
    inner = CountingEmbedder()
    cache = CachingEmbedder(inner, 8)
    await cache.embed(["where does Ann live?"], fairness_key="org-a")
    await cache.embed(["where does Ann live?"], fairness_key="org-b")
    await cache.embed(["Where does Ann live?"], fairness_key="org-a")
    await cache.embed(["where does Ann live? "], fairness_key="org-a")
    assert inner.asked == [
        ("org-a", "where does Ann live?"),
        ("org-b", "where does Ann live?"),
        ("org-a", "Where does Ann live?"),
        ("org-a", "where does Ann live? "),
    ]
    assert cache.hits == 0


async def test_the_cache_holds_at_most_size_vectors_and_drops_the_least_recently_used() -> None:
    inner = CountingEmbedder()
    cache = CachingEmbedder(inner, 2)
    await cache.embed(["a"], fairness_key="o")
    await cache.embed(["b"], fairness_key="o")
    await cache.embed(["a"], fairness_key="o")  # a is now the most recent
    await cache.embed(["c"], fairness_key="o")  # evicts b
    assert len(cache) == 2
    inner.asked.clear()
    await cache.embed(["a"], fairness_key="o")
    await cache.embed(["c"], fairness_key="o")
    assert inner.asked == []
    await cache.embed(["b"], fairness_key="o")
    assert inner.asked == [("o", "b")]
    assert len(cache) == 2


async def test_calls_of_several_texts_pass_through_and_are_not_remembered() -> None:
    inner = CountingEmbedder()
    cache = CachingEmbedder(inner, 8)
    vectors = await cache.embed(["a", "b"], fairness_key="o")
    assert vectors == await inner.inner.embed(["a", "b"])
    assert len(cache) == 0
    await cache.embed(["a", "b"], fairness_key="o")
    assert inner.asked == [("o", "a"), ("o", "b")] * 2
    assert await cache.embed([], fairness_key="o") == []


async def test_an_error_is_not_remembered() -> None:
    inner = CountingEmbedder()
    cache = CachingEmbedder(inner, 8)
    inner.fail_next = True
    with pytest.raises(Unavailable):
        await cache.embed(["a"], fairness_key="o")
    assert len(cache) == 0
    assert await cache.embed(["a"], fairness_key="o") == await inner.inner.embed(["a"])
    assert inner.asked == [("o", "a")]


async def test_close_closes_the_wrapped_embedder_and_forgets() -> None:
    inner = CountingEmbedder()
    cache = CachingEmbedder(inner, 8)
    await cache.embed(["a"], fairness_key="o")
    await cache.close()
    assert inner.closed
    assert len(cache) == 0


def test_the_cache_refuses_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="size >= 1"):
        CachingEmbedder(CountingEmbedder(), 0)


def _build(provider: str, cache_size: int) -> object:
    return build_embedder(
        provider,
        model_dir="/nonexistent/memoryd-model",
        dimension=16,
        openai_base_url="http://127.0.0.1:9/v1",
        openai_api_key="sk-test",
        openai_model="text-embedding-3-small",
        timeout_s=1.0,
        threads=1,
        cache_size=cache_size,
    )


async def test_the_factory_adds_the_cache_unless_its_size_is_zero() -> None:
    cached = _build("hashing", 16)
    assert isinstance(cached, CachingEmbedder)
    assert cached.model_id == "hashing:16" and cached.dimension == 16
    assert isinstance(_build("hashing", 0), HashingEmbedder)
    # nothing to cache when clients send the vectors
    assert isinstance(_build("none", 16), NoEmbedder)
    with pytest.raises(ValueError, match="must not be negative"):
        _build("hashing", -1)
