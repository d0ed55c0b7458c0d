"""The gRPC server itself: its options, TLS, the open services (health and
reflection) and binding the port.

The memoryd services are registered by the composition root
(`memoryd.app`), wrapped in the call pipeline; what is added here stays open
to every caller.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2
from grpc import aio

from memoryd.api import reflection
from memoryd.api.health import Health
from memoryd.config import Settings
from memoryd.v1 import admin_pb2, keys_pb2, knowledge_pb2, memory_pb2, webhooks_pb2

SERVICE_NAMES = (
    memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name,
    keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
    knowledge_pb2.DESCRIPTOR.services_by_name["KnowledgeService"].full_name,
    operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name,
)


class StartupError(Exception):
    """Start-up cannot go on; the message names the cause in one line."""


def new_server(settings: Settings, interceptors: Sequence[Any]) -> aio.Server:
    """A server with the options from `settings`; `interceptors` run before
    every handler, open services included."""
    return aio.server(interceptors=list(interceptors) or None, options=_options(settings))


def add_open_services(server: aio.Server, health: Health) -> None:
    """Health and reflection: answered without a key."""
    health.add_to_server(server)
    reflection.enable(server, SERVICE_NAMES)


def listen(server: aio.Server, settings: Settings) -> int:
    """Binds the gRPC port and returns it, or raises StartupError naming the
    address. The port is tried with a plain socket first: gRPC's own failure
    is a generic RuntimeError plus a log line of its C core on stderr."""
    address = f"{settings.host}:{settings.port}"
    if settings.port and not settings.engine_socket_dir:  # a worker shares the port
        _check_port_free(settings.host, settings.port)
    try:
        if settings.tls_enabled:
            port = server.add_secure_port(address, _credentials(settings))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as err:
        raise StartupError(f"cannot listen on {address}: {err}") from err
    if port == 0:
        raise StartupError(f"cannot listen on {address}")
    return port


def _check_port_free(host: str, port: int) -> None:
    """Raises StartupError when no address `host` resolves to can be bound
    (gRPC needs one); the first error names the cause."""
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as err:
        raise StartupError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    first: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            # the options gRPC binds with: a port in TIME_WAIT is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
                return
            except OSError as err:
                first = first or err
    if first is not None:
        cause = "the port is in use" if first.errno == errno.EADDRINUSE else first.strerror
        raise StartupError(f"cannot listen on {host}:{port}: {cause}") from first


def _options(s: Settings) -> list[tuple[str, int]]:
    opts = [
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        # the workers of `serve --workers N` share the port; one server alone
        # must not silently share it with another
        ("grpc.so_reuseport", 1 if s.engine_socket_dir else 0),
    ]
    if s.max_connection_age_s > 0:
        opts.append(("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)))
        opts.append(("grpc.max_connection_age_grace_ms", int(s.max_connection_age_grace_s * 1000)))
    return opts


def _credentials(s: Settings) -> grpc.ServerCredentials:
    """TLS, or mTLS when a client CA is set (clients must then present a cert)."""
    key = Path(s.tls_key).read_bytes()
    cert = Path(s.tls_cert).read_bytes()
    ca = Path(s.tls_client_ca).read_bytes() if s.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )
