"""Any OpenAI-compatible `/v1/embeddings` endpoint, over httpx."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import httpx

from memoryd.domain.errors import Unavailable
from memoryd.embeddings._vectors import unit_normalize

_MAX_DETAIL = 300


class OpenAIEmbedder:
    """Embeds through `POST {base_url}/embeddings` (OpenAI's API, or a
    compatible server: vLLM, Ollama, TEI, LiteLLM, ...).

    `base_url` follows the OpenAI SDK convention: it includes the version
    prefix, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`.

    Contract:
    - `embed` answers one unit-norm vector of `dimension` floats per text, in
      order (the vectors are re-normalized here, whatever the server does).
      Texts are sent at most `max_batch` per request.
    - Every failure raises `Unavailable` with a message naming the endpoint
      (without credentials) and what went wrong: a connection error, a
      timeout (`timeout_s` per request), an HTTP error status (a 401/403 says
      to check the API key), a malformed answer, or vectors of a dimension
      other than `dimension`. The API key is never part of a message.
    - `close` closes the HTTP client if this object created it.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        dimension: int,
        timeout_s: float = 10.0,
        max_batch: int = 256,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not base_url:
            raise ValueError("the openai embedder needs a base URL, e.g. https://api.openai.com/v1")
        if not model:
            raise ValueError("the openai embedder needs a model name")
        if dimension < 1:
            raise ValueError(f"the openai embedder needs a dimension >= 1, got {dimension}")
        if timeout_s <= 0:
            raise ValueError(f"the openai embedder needs a timeout > 0 s, got {timeout_s}")
        if max_batch < 1:
            raise ValueError(f"the openai embedder needs max_batch >= 1, got {max_batch}")
        self._url = base_url.rstrip("/") + "/embeddings"
        parsed = httpx.URL(self._url)
        # For messages: scheme, host, port and path, never userinfo or query.
        self._where = str(parsed.copy_with(username=None, password=None, query=None))
        self._api_key = api_key
        self._model = model
        self._dimension = dimension
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._owns_client = client is None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._headers = headers
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout_s)

    @property
    def model_id(self) -> str:
        return f"openai:{self._model}"

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str], *, fairness_key: str = "") -> list[list[float]]:
        """One unit-norm vector per text, in order; raises `Unavailable`."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._max_batch):
            vectors.extend(await self._request(list(texts[start : start + self._max_batch])))
        return vectors

    async def _request(self, texts: list[str]) -> list[list[float]]:
        body = {"model": self._model, "input": texts, "encoding_format": "float"}
        try:
            response = await self._client.post(
                self._url, json=body, headers=self._headers, timeout=self._timeout_s
            )
        except httpx.TimeoutException as exc:
            raise self._unavailable(
                f"did not answer within {self._timeout_s:g} s", "EMBEDDING_TIMEOUT"
            ) from exc
        except httpx.HTTPError as exc:
            raise self._unavailable(
                f"could not be reached ({type(exc).__name__}: {self._redact(str(exc))})"
            ) from exc
        if response.status_code in (401, 403):
            raise self._unavailable(
                f"refused the API key (HTTP {response.status_code}): "
                "check the configured OpenAI API key",
                "EMBEDDING_AUTH_FAILED",
            )
        if response.status_code != 200:
            raise self._unavailable(
                f"answered HTTP {response.status_code}{self._error_detail(response)}"
            )
        try:
            payload = response.json()
        except ValueError as exc:
            raise self._unavailable("answered with a body that is not JSON") from exc
        return self._parse(payload, len(texts))

    def _parse(self, payload: Any, count: int) -> list[list[float]]:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) != count:
            got = len(data) if isinstance(data, list) else "no"
            raise self._unavailable(f"answered {got} embeddings for {count} texts")
        vectors: list[list[float] | None] = [None] * count
        for position, item in enumerate(data):
            embedding = item.get("embedding") if isinstance(item, dict) else None
            index = item.get("index", position) if isinstance(item, dict) else position
            if (
                not isinstance(index, int)
                or not 0 <= index < count
                or vectors[index] is not None
                or not isinstance(embedding, list)
                or not all(isinstance(v, int | float) for v in embedding)
            ):
                raise self._unavailable(
                    "answered a malformed embedding list "
                    "(expected data[].embedding as floats and distinct data[].index)"
                )
            if len(embedding) != self._dimension:
                raise self._unavailable(
                    f"answered {len(embedding)}-d vectors for model {self._model!r}, "
                    f"but the configured dimension is {self._dimension}: set the embedding "
                    "dimension to match the model, or choose a model of that dimension",
                    "EMBEDDING_DIMENSION_MISMATCH",
                )
            if not all(math.isfinite(v) for v in embedding) or not any(embedding):
                raise self._unavailable("answered a vector that is all zeros or not finite")
            vectors[index] = unit_normalize(embedding)
        return [v for v in vectors if v is not None]

    def _error_detail(self, response: httpx.Response) -> str:
        """`: <message>` from an OpenAI-style error body, short and redacted."""
        message: object = None
        try:
            payload = response.json()
        except ValueError:
            message = response.text
        else:
            error = payload.get("error") if isinstance(payload, dict) else None
            message = error.get("message") if isinstance(error, dict) else error
            if message is None and isinstance(payload, dict):
                message = payload.get("detail") or payload.get("message")
        if not isinstance(message, str) or not message.strip():
            return ""
        text = " ".join(self._redact(message).split())
        if len(text) > _MAX_DETAIL:
            text = text[:_MAX_DETAIL] + "…"
        return f": {text}"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "<api key>") if self._api_key else text

    def _unavailable(self, what: str, reason: str = "EMBEDDING_UNAVAILABLE") -> Unavailable:
        return Unavailable(f"the embedding endpoint {self._where} {what}", reason=reason)

    async def close(self) -> None:
        """Closes the HTTP client if this object created it. Idempotent."""
        if self._owns_client:
            await self._client.aclose()
