"""The one composition root: `build_app(settings)` constructs every object and
passes dependencies in constructors. Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from memoryd.api.admin import AdminServicer
from memoryd.api.interceptor import CallInterceptor
from memoryd.api.keys import KeyServicer
from memoryd.auth.authenticator import Authenticator
from memoryd.auth.hashing import SecretHasher
from memoryd.config import Settings
from memoryd.domain.audit import Auditor
from memoryd.domain.bootstrap import Bootstrapped, bootstrap_org
from memoryd.domain.clock import Clock, SystemClock
from memoryd.domain.keys import KeyManager
from memoryd.domain.projects import ProjectManager
from memoryd.storage.sql import SqlControlStore
from memoryd.v1 import admin_pb2, admin_pb2_grpc, keys_pb2, keys_pb2_grpc, memory_pb2

log = logging.getLogger("memoryd")

SERVICE_NAMES = (
    memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name,
    keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


@dataclass
class App:
    """A built server: `start()`, then `wait()` or `stop()`."""

    settings: Settings
    server: aio.Server
    health: HealthServicer
    store: SqlControlStore
    authenticator: Authenticator
    port: int = 0
    bootstrapped: Bootstrapped | None = None
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        await self.server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("memoryd serving on %s:%d", self.settings.host, self.port)

    async def stop(self, grace: float | None = None) -> None:
        """Health goes NOT_SERVING first, then in-flight calls get `grace`
        seconds, then the stores close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.health.enter_graceful_shutdown()
        grace = self.settings.grace_period_s if grace is None else grace
        await self.server.stop(grace)
        for task in self._tasks:
            task.cancel()
        for close in reversed(self._closers):
            try:
                await close()
            except Exception:
                log.exception("error while closing")
        log.info("memoryd stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        await self.health.set("", status)
        for name in SERVICE_NAMES:
            await self.health.set(name, status)


async def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    hasher: SecretHasher | None = None,
    bootstrap_if_empty: bool = True,
) -> App:
    clock = clock or SystemClock()
    hasher = hasher or SecretHasher()
    await asyncio.to_thread(Path(settings.data_dir).mkdir, parents=True, exist_ok=True)

    store = SqlControlStore(settings.resolved_database_url)
    await store.open()
    closers: list[Callable[[], Awaitable[None]]] = [store.close]

    bootstrapped = None
    if bootstrap_if_empty and await store.count_orgs() == 0:
        bootstrapped = await bootstrap_org(store, hasher, clock)

    authenticator = Authenticator(
        store,
        hasher,
        clock,
        cache_ttl_s=settings.key_cache_ttl_s,
        cache_size=settings.key_cache_size,
        failures_per_minute=settings.auth_failures_per_minute,
    )
    closers.append(authenticator.close)

    async def invalidate_key(key_id: str) -> None:
        authenticator.evict(key_id)

    auditor = Auditor(store, clock, settings.audit_log)
    keys = KeyManager(store, hasher, auditor, clock, invalidate_key)
    projects = ProjectManager(store, auditor, clock, invalidate_key)

    interceptor = CallInterceptor(authenticator)
    server = aio.server(
        interceptors=[interceptor],
        options=_server_options(settings),
        maximum_concurrent_rpcs=None,
    )
    keys_pb2_grpc.add_KeyServiceServicer_to_server(KeyServicer(keys, clock), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(projects, auditor, _NoUsage()), server
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, "grpc.health.v1.Health", reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.port}"
    if settings.tls_enabled:
        port = server.add_secure_port(address, _credentials(settings))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    closers.append(_run_sync(hasher.close))

    app = App(
        settings=settings,
        server=server,
        health=health,
        store=store,
        authenticator=authenticator,
        port=port,
        bootstrapped=bootstrapped,
    )
    app._closers = closers
    return app


class _NoUsage:
    async def report(self, *args: object) -> list[object]:
        return []


def _run_sync(fn: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        fn()

    return run


def _server_options(s: Settings) -> list[tuple[str, int]]:
    opts = [
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.so_reuseport", 0),
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
