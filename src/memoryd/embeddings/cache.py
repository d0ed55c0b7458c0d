"""An LRU cache of single-text embeddings (search queries), per organization."""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence

from memoryd.domain.memory import Embedder


class CachingEmbedder:
    """Wraps an `Embedder` and remembers the vectors of single-text calls.

    Contract:
    - `embed([text], fairness_key=k)` answers the vector that the wrapped
      embedder gave for the same `text` and `k`, if it is still among the
      last `size` distinct (k, text) pairs used; otherwise it asks the wrapped
      embedder and remembers the answer. The answer is a fresh list each time
      (callers may keep or change it).
    - The key is (organization, exact text): `fairness_key` is the
      organization, so one organization's queries never answer, nor speed
      up, another's (a shared cache would let an organization learn from the
      latency whether another one searched for a text). The text is not
      normalized: the model (or a remote provider) decides what is equal.
    - Calls of several texts (memory contents, chunks, facts: mostly unique)
      go to the wrapped embedder and are not remembered, so bulk writes
      never evict the queries.
    - Errors of the wrapped embedder are not remembered.
    - At most `size` vectors are held (each `dimension` doubles); `size` must
      be >= 1 (the composition root skips the wrapper for 0).
    """

    def __init__(self, inner: Embedder, size: int) -> None:
        if size < 1:
            raise ValueError(f"the embedding cache needs size >= 1, got {size}")
        self._inner = inner
        self._size = size
        self._vectors: OrderedDict[tuple[str, str], array[float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    def __len__(self) -> int:
        return len(self._vectors)

    async def embed(self, texts: Sequence[str], *, fairness_key: str = "") -> list[list[float]]:
        """One unit-norm vector per text, in order (see the class contract)."""
        if len(texts) != 1:
            return await self._inner.embed(texts, fairness_key=fairness_key)
        key = (fairness_key, texts[0])
        cached = self._vectors.get(key)
        if cached is not None:
            self._vectors.move_to_end(key)
            self.hits += 1
            return [cached.tolist()]
        self.misses += 1
        vectors = await self._inner.embed(texts, fairness_key=fairness_key)
        # 'd' keeps every provider's floats exactly (float32 ones widen losslessly)
        self._vectors[key] = array("d", vectors[0])
        self._vectors.move_to_end(key)
        while len(self._vectors) > self._size:
            self._vectors.popitem(last=False)
        return vectors

    async def close(self) -> None:
        """Closes the wrapped embedder and forgets every vector."""
        self._vectors.clear()
        await self._inner.close()
