"""The pipeline reads a call's headers in one scan of its metadata."""

from __future__ import annotations

from typing import Any

from memoryd.api.call import Headers, peer_host, read_headers


class FakeContext:
    """A servicer context that counts how often its metadata is read."""

    def __init__(self, metadata: tuple[tuple[str, Any], ...]) -> None:
        self._metadata = metadata
        self.reads = 0

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        self.reads += 1
        return self._metadata


def test_every_header_the_pipeline_needs_comes_from_one_scan() -> None:
    context = FakeContext(
        (
            ("x-request-id", "req-1"),
            ("x-api-key", "ms_live_a"),
            ("authorization", "Bearer ms_live_b"),
            ("x-end-user-id", "alice"),
            ("x-allow-cross-project", "TRUE"),
            ("x-trace-bin", b"\x00\x01"),
        )
    )
    headers = read_headers(context)  # type: ignore[arg-type]
    assert context.reads == 1
    assert headers == Headers("req-1", "alice", True, ("ms_live_a", "ms_live_b"))


def test_absent_empty_and_foreign_headers_read_as_nothing() -> None:
    context = FakeContext(
        (("x-api-key", ""), ("authorization", "Basic abc"), ("x-allow-cross-project", "yes"))
    )
    assert read_headers(context) == Headers()  # type: ignore[arg-type]


def test_the_peer_is_its_host_without_the_port() -> None:
    assert peer_host("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"
