"""A deterministic, dependency-free embedder for tests."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

from memoryd.embeddings._vectors import unit_normalize

_WORD = re.compile(r"\w+", re.UNICODE)
# Texts without a word still get a unit vector: one fixed feature.
_EMPTY_FEATURE = "\x00empty"


class HashingEmbedder:
    """Feature hashing of lower-cased word tokens into `dimension` buckets.

    For unit and API tests only: no model, no I/O, microseconds per text. The
    same text always gives the same vector (in any process: the hash is
    blake2b, not Python's salted `hash`), and texts that share words have a
    positive cosine similarity while texts that share none are near zero.
    Each word adds ±1 (a second hash picks the sign) to one bucket, weighted
    by `1 + log(count)`; the result is unit-normalized.
    """

    def __init__(self, dimension: int) -> None:
        if dimension < 1:
            raise ValueError(f"the hashing embedder needs a dimension >= 1, got {dimension}")
        self._dimension = dimension

    @property
    def model_id(self) -> str:
        return f"hashing:{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str], *, fairness_key: str = "") -> list[list[float]]:
        """One unit-norm vector per text, in order."""
        return [self.embed_one(text) for text in texts]

    def embed_one(self, text: str) -> list[float]:
        """The vector of one text (synchronous; the same as `embed([text])[0]`)."""
        counts: dict[str, int] = {}
        for word in _WORD.findall(text.lower()):
            counts[word] = counts.get(word, 0) + 1
        if not counts:
            counts[_EMPTY_FEATURE] = 1
        vector = [0.0] * self._dimension
        for word, count in counts.items():
            digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
            bucket = int.from_bytes(digest[:7], "little") % self._dimension
            sign = 1.0 if digest[7] & 1 else -1.0
            vector[bucket] += sign * (1.0 + math.log(count))
        if not any(vector):
            # Opposite signs cancelled out in one bucket: fall back to a fixed feature.
            vector[0] = 1.0
        return unit_normalize(vector)

    async def close(self) -> None:
        """Nothing to release."""
