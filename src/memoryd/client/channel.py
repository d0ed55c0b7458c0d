"""Channels to memoryd: credentials, auth metadata and the retry policy.

Auth. Every call carries `x-api-key` (and `x-end-user-id` when the client is
bound to an end user):

- on a TLS channel through `ApiKeyAuth`, a `grpc.AuthMetadataPlugin` turned
  into call credentials, so gRPC attaches the key only to secure connections;
- on a plaintext channel (gRPC refuses call credentials there) through a
  client interceptor that adds the same headers. Headers the call sets itself
  win (pass `metadata=(("x-end-user-id", "bob"),)` to act for another user).

Retries. gRPC's own retry support (gRFC A6) is switched on through the
channel's service config (`RetryPolicy.service_config()`, channel option
`grpc.service_config`). The server's `grpc-retry-pushback-ms` trailer, sent
with every rate-limited RESOURCE_EXHAUSTED, replaces gRPC's backoff for that
attempt, so a retry waits exactly as long as the limiter asked; a negative
pushback stops retrying. RESOURCE_EXHAUSTED is retried for every method (the
call was refused before it ran); UNAVAILABLE only for reads, since a write
that failed that way may have been applied. Retries happen inside gRPC: the
call's deadline bounds them all, and `grpc-previous-rpc-attempts` tells the
server which attempt it sees. Requests larger than gRPC's retry buffer
(`grpc.per_rpc_retry_buffer_size`, 256 KiB by default) are not retried.
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

MEMORY_SERVICE = "memoryd.v1.MemoryService"
KEY_SERVICE = "memoryd.v1.KeyService"
ADMIN_SERVICE = "memoryd.v1.AdminService"

#: Methods safe to repeat after UNAVAILABLE: they change nothing.
READ_METHODS: dict[str, tuple[str, ...]] = {
    MEMORY_SERVICE: (
        "GetMemory",
        "ListMemories",
        "SearchMemories",
        "ListMemoryRevisions",
        "ExportMemories",
    ),
    KEY_SERVICE: ("WhoAmI", "ListApiKeys", "GetApiKey"),
    ADMIN_SERVICE: (
        "GetProject",
        "ListProjects",
        "ListEnvironments",
        "GetUsage",
        "ListAuditEvents",
        "GetPrompt",
        "ListPrompts",
    ),
}

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retry parameters (gRFC A6), applied per method by the channel.

    `max_attempts` counts the first attempt too; gRPC caps it at 5. Between
    attempts gRPC waits a random time up to the current backoff, which starts
    at `initial_backoff_s` and grows by `backoff_multiplier` up to
    `max_backoff_s`, unless the server's `grpc-retry-pushback-ms` says how
    long. `throttle_max_tokens` / `throttle_token_ratio` stop retries while
    many calls on the channel fail (gRPC retry throttling); 0 disables it.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    throttle_max_tokens: int = 10
    throttle_token_ratio: float = 0.1

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts must be 2..5, got {self.max_attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0:
            raise ValueError("backoffs must be positive")
        if self.backoff_multiplier <= 0:
            raise ValueError("backoff_multiplier must be positive")

    def service_config(self) -> dict[str, Any]:
        """The gRPC service config (as a dict) enabling these retries."""

        def policy(codes: Sequence[str]) -> dict[str, Any]:
            return {
                "maxAttempts": self.max_attempts,
                "initialBackoff": f"{self.initial_backoff_s:.3f}s",
                "maxBackoff": f"{self.max_backoff_s:.3f}s",
                "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": list(codes),
            }

        config: dict[str, Any] = {
            "methodConfig": [
                {
                    # Service-wide: writes too, but only RESOURCE_EXHAUSTED.
                    "name": [{"service": s} for s in (MEMORY_SERVICE, KEY_SERVICE, ADMIN_SERVICE)],
                    "retryPolicy": policy(["RESOURCE_EXHAUSTED"]),
                },
                {
                    # A method-level entry wins over the service-wide one.
                    "name": [
                        {"service": s, "method": m} for s, ms in READ_METHODS.items() for m in ms
                    ],
                    "retryPolicy": policy(["RESOURCE_EXHAUSTED", "UNAVAILABLE"]),
                },
            ]
        }
        if self.throttle_max_tokens > 0:
            config["retryThrottling"] = {
                "maxTokens": self.throttle_max_tokens,
                "tokenRatio": self.throttle_token_ratio,
            }
        return config


@dataclass(frozen=True)
class TlsConfig:
    """TLS (and mTLS) for the channel. All None: the system's root CAs.

    `server_name` overrides the name checked against the server certificate
    (for an address that is not in it, e.g. an IP in tests).
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str = ""


def auth_metadata(api_key: str, end_user_id: str = "") -> Metadata:
    """The headers memoryd reads: `x-api-key`, and `x-end-user-id` if set."""
    if not api_key:
        raise ValueError("an API key is required")
    md: list[tuple[str, str]] = [("x-api-key", api_key)]
    if end_user_id:
        md.append(("x-end-user-id", end_user_id))
    return tuple(md)


class ApiKeyAuth(grpc.AuthMetadataPlugin):
    """Call credentials: adds the key (and end user) to every call of a TLS
    channel. `grpc.metadata_call_credentials(ApiKeyAuth(key))`."""

    def __init__(self, api_key: str, end_user_id: str = "") -> None:
        self._metadata = auth_metadata(api_key, end_user_id)

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(self._metadata, None)

    def __repr__(self) -> str:
        return "ApiKeyAuth(***)"


def _merge(existing: Any, extra: Metadata) -> list[tuple[str, str | bytes]]:
    current: list[tuple[str, str | bytes]] = list(existing or ())
    present = {k for k, _ in current}
    current.extend((k, v) for k, v in extra if k not in present)
    return current


class _Details(
    namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class AuthInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds the auth headers to every call of a plaintext sync channel."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _Details(
            d.method,
            d.timeout,
            _merge(d.metadata, self._metadata),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


class _AsyncAuth:
    """Adds the auth headers to the calls of a plaintext asyncio channel."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def _details(self, d: aio.ClientCallDetails) -> aio.ClientCallDetails:
        return aio.ClientCallDetails(
            method=d.method,
            timeout=d.timeout,
            metadata=aio.Metadata(*_merge(d.metadata, self._metadata)),
            credentials=d.credentials,
            wait_for_ready=d.wait_for_ready,
        )


# grpc.aio files an interceptor under the first kind of call it intercepts
# (an `elif` chain), so one object for all four would leave the streams
# without the key: one interceptor per kind of call.
class _UnaryUnaryAuth(_AsyncAuth, aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStreamAuth(_AsyncAuth, aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnaryAuth(_AsyncAuth, aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStreamAuth(_AsyncAuth, aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def async_auth_interceptors(metadata: Metadata) -> list[_AsyncAuth]:
    """The auth interceptors of a plaintext asyncio channel, one per kind of call."""
    kinds = (_UnaryUnaryAuth, _UnaryStreamAuth, _StreamUnaryAuth, _StreamStreamAuth)
    return [kind(metadata) for kind in kinds]


def channel_options(
    retry: RetryPolicy | None, tls: TlsConfig | None, extra: Sequence[tuple[str, Any]] = ()
) -> list[tuple[str, Any]]:
    """Channel arguments: retries on (with the service config) or off."""
    opts: list[tuple[str, Any]] = []
    if retry is None:
        opts.append(("grpc.enable_retries", 0))
    else:
        opts.append(("grpc.enable_retries", 1))
        opts.append(("grpc.service_config", json.dumps(retry.service_config())))
    if tls is not None and tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    opts.extend(extra)
    return opts


def channel_credentials(tls: TlsConfig, api_key: str, end_user_id: str) -> grpc.ChannelCredentials:
    """TLS credentials composed with the key's call credentials."""
    return grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(
            root_certificates=tls.root_certificates,
            private_key=tls.private_key,
            certificate_chain=tls.certificate_chain,
        ),
        grpc.metadata_call_credentials(ApiKeyAuth(api_key, end_user_id), name="memoryd-api-key"),
    )


def secure_or_plain_sync(
    target: str,
    api_key: str,
    end_user_id: str,
    tls: TlsConfig | None,
    options: list[tuple[str, Any]],
) -> grpc.Channel:
    """A sync channel: TLS with call credentials, or plaintext with the interceptor."""
    if tls is not None:
        return grpc.secure_channel(
            target, channel_credentials(tls, api_key, end_user_id), options=options
        )
    channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, AuthInterceptor(auth_metadata(api_key, end_user_id)))


def secure_or_plain_async(
    target: str,
    api_key: str,
    end_user_id: str,
    tls: TlsConfig | None,
    options: list[tuple[str, Any]],
) -> aio.Channel:
    """An asyncio channel: TLS with call credentials, or plaintext with the interceptor."""
    if tls is not None:
        return aio.secure_channel(
            target, channel_credentials(tls, api_key, end_user_id), options=options
        )
    return aio.insecure_channel(
        target,
        options=options,
        # grpc-stubs wants a cast for any interceptor list.
        interceptors=async_auth_interceptors(auth_metadata(api_key, end_user_id)),  # type: ignore[arg-type]
    )
