"""The provider for servers that never embed: clients send vectors."""

from __future__ import annotations

from collections.abc import Sequence

from memoryd.domain.errors import InvalidArgument


class NoEmbedder:
    """Knows the vector dimension the server stores, but embeds nothing.

    `embed` always raises `InvalidArgument`: with this provider a client must
    send `embedding` (a vector of `dimension` floats) with every memory and
    every search. `model_id` is `none:<dimension>`.
    """

    def __init__(self, dimension: int) -> None:
        if dimension < 1:
            raise ValueError(f"the 'none' embedder needs a dimension >= 1, got {dimension}")
        self._dimension = dimension

    @property
    def model_id(self) -> str:
        return f"none:{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str], *, fairness_key: str = "") -> list[list[float]]:
        """Raises `InvalidArgument`: this server has no embedding model."""
        raise InvalidArgument(
            "this server does not embed text: send `embedding` "
            f"(a vector of {self._dimension} floats) with the request",
            reason="EMBEDDING_REQUIRED",
        )

    async def close(self) -> None:
        """Nothing to release."""
