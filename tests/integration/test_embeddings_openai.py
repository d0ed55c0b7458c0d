"""`OpenAIEmbedder` against a real HTTP server on 127.0.0.1 (no mocks of httpx)."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from memoryd.domain.errors import Unavailable
from memoryd.embeddings import OpenAIEmbedder

API_KEY = "sk-test-SECRET-4f9a8b7c"

# A behaviour answers (status, body bytes) for a parsed request body.
Behaviour = Callable[[dict[str, Any]], tuple[int, bytes]]


@dataclass
class Stub:
    """A tiny OpenAI-compatible server; `behaviour` is swapped per test."""

    url: str
    behaviour: Behaviour
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def vectors_for(body: dict[str, Any], dim: int = 4, *, reverse: bool = False) -> tuple[int, bytes]:
    """Deterministic, deliberately not unit-norm vectors: [len(text)+1, 1, 0, ...]."""
    data = [
        {"object": "embedding", "index": i, "embedding": [len(t) + 1.0, 1.0] + [0.0] * (dim - 2)}
        for i, t in enumerate(body["input"])
    ]
    if reverse:
        data.reverse()
    return 200, json.dumps({"object": "list", "data": data, "model": body["model"]}).encode()


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub(url="", behaviour=vectors_for)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            state.requests.append({"path": self.path, **body})
            state.headers.append({k.lower(): v for k, v in self.headers.items()})
            status, payload = state.behaviour(body)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up first (the timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make(stub: Stub, **overrides: Any) -> OpenAIEmbedder:
    args: dict[str, Any] = {
        "base_url": stub.url,
        "api_key": API_KEY,
        "model": "text-embedding-test",
        "dimension": 4,
        "timeout_s": 2.0,
    }
    args.update(overrides)
    return OpenAIEmbedder(**args)


async def test_embeds_in_order_unit_norm_with_the_key_and_model(stub: Stub) -> None:
    stub.behaviour = lambda body: vectors_for(body, reverse=True)
    embedder = make(stub)
    vectors = await embedder.embed(["a", "bbb"])
    await embedder.close()
    assert vectors[0] == pytest.approx([2 / math.sqrt(5), 1 / math.sqrt(5), 0.0, 0.0])
    assert vectors[1] == pytest.approx([4 / math.sqrt(17), 1 / math.sqrt(17), 0.0, 0.0])
    assert stub.requests == [
        {
            "path": "/v1/embeddings",
            "model": "text-embedding-test",
            "input": ["a", "bbb"],
            "encoding_format": "float",
        }
    ]
    assert stub.headers[0]["authorization"] == f"Bearer {API_KEY}"
    assert embedder.model_id == "openai:text-embedding-test"
    assert embedder.dimension == 4


async def test_splits_large_inputs_into_several_requests(stub: Stub) -> None:
    embedder = make(stub, max_batch=2)
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    vectors = await embedder.embed(texts)
    await embedder.close()
    assert [len(r["input"]) for r in stub.requests] == [2, 2, 1]
    ratios = [v[0] / v[1] for v in vectors]
    assert ratios == pytest.approx([len(t) + 1 for t in texts])
    assert await make(stub).embed([]) == []
    assert len(stub.requests) == 3


async def test_a_wrong_dimension_is_unavailable_and_says_what_to_set(stub: Stub) -> None:
    stub.behaviour = lambda body: vectors_for(body, dim=8)
    embedder = make(stub)
    with pytest.raises(Unavailable) as caught:
        await embedder.embed(["hello"])
    await embedder.close()
    assert "answered 8-d vectors" in caught.value.message
    assert "configured dimension is 4" in caught.value.message
    assert caught.value.reason == "EMBEDDING_DIMENSION_MISMATCH"


async def test_a_refused_key_is_unavailable_without_echoing_it(stub: Stub) -> None:
    error = {"error": {"message": f"Incorrect API key provided: {API_KEY}", "type": "auth"}}
    stub.behaviour = lambda body: (401, json.dumps(error).encode())
    embedder = make(stub)
    with pytest.raises(Unavailable) as caught:
        await embedder.embed(["hello"])
    await embedder.close()
    assert caught.value.reason == "EMBEDDING_AUTH_FAILED"
    assert "refused the API key (HTTP 401)" in caught.value.message
    assert API_KEY not in str(caught.value)


async def test_a_server_error_is_unavailable_with_its_message_redacted(stub: Stub) -> None:
    error = {"error": {"message": f"overloaded, key {API_KEY} is rate limited"}}
    stub.behaviour = lambda body: (503, json.dumps(error).encode())
    embedder = make(stub)
    with pytest.raises(Unavailable) as caught:
        await embedder.embed(["hello"])
    await embedder.close()
    message = caught.value.message
    assert message.startswith(f"the embedding endpoint {stub.url}/embeddings answered HTTP 503")
    assert "overloaded" in message
    assert API_KEY not in message
    assert "<api key>" in message


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"<html>not json</html>", "not JSON"),
        (b'{"data": []}', "answered 0 embeddings for 1 texts"),
        (b'{"data": [{"index": 0, "embedding": "nope"}]}', "malformed"),
        (b'{"data": [{"index": 0, "embedding": [0, 0, 0, 0]}]}', "all zeros"),
    ],
)
async def test_a_malformed_answer_is_unavailable(stub: Stub, payload: bytes, expected: str) -> None:
    stub.behaviour = lambda body: (200, payload)
    embedder = make(stub)
    with pytest.raises(Unavailable, match=expected):
        await embedder.embed(["hello"])
    await embedder.close()


async def test_a_slow_server_times_out_as_unavailable(stub: Stub) -> None:
    def slow(body: dict[str, Any]) -> tuple[int, bytes]:
        time.sleep(1.0)
        return vectors_for(body)

    stub.behaviour = slow
    embedder = make(stub, timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"did not answer within 0\.2 s") as caught:
        await embedder.embed(["hello"])
    assert caught.value.reason == "EMBEDDING_TIMEOUT"
    assert time.monotonic() - started < 0.9
    await embedder.close()


async def test_an_unreachable_endpoint_is_unavailable() -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    embedder = OpenAIEmbedder(
        base_url=f"http://user:{API_KEY}@127.0.0.1:{port}/v1",
        api_key=API_KEY,
        model="m",
        dimension=4,
        timeout_s=2.0,
    )
    with pytest.raises(Unavailable) as caught:
        await embedder.embed(["hello"])
    await embedder.close()
    assert caught.value.reason == "EMBEDDING_UNAVAILABLE"
    assert f"127.0.0.1:{port}/v1/embeddings could not be reached" in caught.value.message
    assert API_KEY not in caught.value.message
