"""The one composition root: `build_app(settings)` constructs every object and
passes dependencies in constructors. Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from memoryd.api import reflection as api_reflection
from memoryd.api import tracing
from memoryd.api.admin import AdminServicer
from memoryd.api.call import CallProjects
from memoryd.api.keys import KeyServicer
from memoryd.api.memory import MemoryServicer
from memoryd.api.observe import CallbackCounters, CallLogger, Metrics
from memoryd.api.pipeline import Pipeline
from memoryd.api.steps import CallObserver, RequestLimits
from memoryd.auth.authenticator import Authenticator
from memoryd.auth.hashing import Argon2Hasher
from memoryd.config import Settings
from memoryd.domain.audit import Auditor
from memoryd.domain.bootstrap import Bootstrapped, bootstrap_org
from memoryd.domain.clock import Clock, SystemClock
from memoryd.domain.control import ControlStore
from memoryd.domain.errors import DomainError
from memoryd.domain.keys import KeyManager
from memoryd.domain.memories import Defaults, MemoryService
from memoryd.domain.memory import Embedder, Filter, VectorStore
from memoryd.domain.ports import SecretHasher
from memoryd.domain.project_cache import ProjectCache
from memoryd.domain.projects import Ceilings, ProjectManager
from memoryd.domain.tenancy import Tenant
from memoryd.domain.usage import UsageReporter
from memoryd.embeddings import build_embedder
from memoryd.ratelimit import (
    FailoverRateLimiter,
    Limit,
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    is_org_key_bucket,
)
from memoryd.ratelimit.admission import COSTS, STREAM_COSTS, RateLimitAdmission
from memoryd.storage.audit_file import JsonLinesAuditFile
from memoryd.storage.disk import MIB, check_free_space
from memoryd.storage.redis import make_redis
from memoryd.storage.revocation import LocalRevocationBus, RedisRevocationBus, RevocationBus
from memoryd.storage.sql import SqlControlStore
from memoryd.storage.vectors.edge import EdgeVectorStore
from memoryd.usage import LocalUsageMeter, RedisUsageMeter, UsageMeter, UsageRecorder
from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)

log = logging.getLogger("memoryd")

LIVENESS_SERVICE = "liveness"
_HEALTH_TENANT = Tenant("_health", "_health", "_health")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StartupError(Exception):
    """Start-up cannot go on; the message names the cause in one line."""


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
    metrics: Metrics
    memories: MemoryService
    vectors: VectorStore
    port: int = 0
    bootstrapped: Bootstrapped | None = None
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    # set to probe health now rather than at the next interval
    _recheck: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        # health follows the database at once, not at the next 5 s probe
        self.store.on_reachability_change(lambda _reachable: self._recheck.set())
        await self.server.start()
        await self._set_health(await self._probe())
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch_health()))
        log.info("memoryd serving on %s:%d", self.settings.host, self.port)

    async def stop(self, grace: float | None = None) -> None:
        """Health goes NOT_SERVING first (calls are still served for
        `shutdown_delay_s`), then new calls are refused and in-flight ones get
        `grace` seconds, then the stores close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.health.enter_graceful_shutdown()
        if self.settings.shutdown_delay_s > 0:
            await asyncio.sleep(self.settings.shutdown_delay_s)
        grace = self.settings.grace_period_s if grace is None else grace
        await self.server.stop(grace)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        for close in reversed(self._closers):
            try:
                await close()
            except Exception:
                log.exception("error while closing")
        log.info("memoryd stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def _probe(self) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        """SERVING only when the control store and the vector store answer,
        and the data directory's disk has room for writes."""
        try:
            if _uses_data_dir(self.settings):
                await asyncio.to_thread(
                    check_free_space, self.settings.data_dir, _min_free_bytes(self.settings)
                )
            sql_ok = await asyncio.wait_for(self.store.ping(), 2.0)
            await asyncio.wait_for(self.vectors.count(_HEALTH_TENANT, Filter(), _EPOCH), 2.0)
        except DomainError as err:
            # a full or hung disk: said once by the state change, no traceback
            log.debug("health probe: %s", err)
            return health_pb2.HealthCheckResponse.NOT_SERVING
        except Exception:
            log.warning("health probe failed", exc_info=True)
            return health_pb2.HealthCheckResponse.NOT_SERVING
        if not sql_ok:
            return health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse.SERVING

    async def _watch_health(self) -> None:
        last = None
        while not self._stopped.is_set():
            self._recheck.clear()
            status = await self._probe()
            if status != last and not self._stopped.is_set():
                await self._set_health(status)
                if last is not None:
                    log.warning(
                        "health changed to %s",
                        health_pb2.HealthCheckResponse.ServingStatus.Name(status),
                    )
                last = status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck.wait(), 5.0)

    def recheck_health(self) -> None:
        """Probes health now instead of at the next interval (a store saw
        its state change)."""
        self._recheck.set()

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        # `liveness` stays SERVING while the process runs: a liveness probe on
        # it does not restart pods because a backend is down.
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", status)
        for name in SERVICE_NAMES:
            await self.health.set(name, status)


async def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    hasher: SecretHasher | None = None,
    bootstrap_if_empty: bool = True,
    embedder: Embedder | None = None,
    tracer_provider: Any = None,
) -> App:
    """Builds the whole server from settings. Tests may inject a clock, a
    faster hasher, an embedder or a tracer provider; everything else comes
    from `settings`."""
    clock = clock or SystemClock()
    hasher = hasher or Argon2Hasher()
    await asyncio.to_thread(_check_data_dir, Path(settings.data_dir))
    if _uses_data_dir(settings):
        # before anything writes there: a full disk is one clear error
        await asyncio.to_thread(
            check_free_space, settings.data_dir, _min_free_bytes(settings), what="start-up"
        )
    closers: list[Callable[[], Awaitable[None]]] = [_run_sync(hasher.close)]
    metrics = Metrics()

    try:
        return await _build(
            settings, clock, hasher, bootstrap_if_empty, embedder, metrics, closers, tracer_provider
        )
    except BaseException:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()
        raise


async def _build(
    settings: Settings,
    clock: Clock,
    hasher: SecretHasher,
    bootstrap_if_empty: bool,
    embedder: Embedder | None,
    metrics: Metrics,
    closers: list[Callable[[], Awaitable[None]]],
    tracer_provider: Any,
) -> App:
    # --- control plane ----------------------------------------------------------
    store = SqlControlStore(settings.resolved_database_url)
    await store.open()
    closers.append(store.close)
    control: ControlStore = metrics.timed("sql", store)

    # --- Redis or in-process: limits, usage, revocation fan-out ------------------------
    redis = None
    limiter: RateLimiter
    meter: UsageMeter
    bus: RevocationBus
    if settings.redis_url:
        timeout = settings.redis_timeout_ms / 1000
        redis = make_redis(settings.redis_url, timeout)
        closers.append(redis.aclose)
        limiter = FailoverRateLimiter(
            RedisRateLimiter(redis, timeout_s=timeout),
            LocalRateLimiter(clock),
            clock=clock,
            policy=settings.rate_limit_failure_policy,
            failure_threshold=settings.rate_limit_failure_threshold,
            max_probe_interval_s=settings.rate_limit_max_probe_interval_s,
            skew_tolerance_s=timeout,
            # org keys stay usable under fail-closed, so a leaked key can be revoked
            local_when_down=is_org_key_bucket,
        )
        meter = RedisUsageMeter(make_redis(settings.redis_url, 2.0), clock)
        bus = RedisRevocationBus(make_redis(settings.redis_url, 2.0))
        log.info("rate limits, usage and key revocation: Redis (%s)", limiter.backend_name)
    else:
        limiter = LocalRateLimiter(clock)
        meter = LocalUsageMeter(clock)
        bus = LocalRevocationBus()
        log.info("rate limits, usage and key revocation: in-process (one replica only)")
    closers.append(meter.close)

    authenticator = Authenticator(
        control,
        hasher,
        clock,
        cache_ttl_s=settings.key_cache_ttl_s,
        cache_size=settings.key_cache_size,
        failures_per_minute=settings.auth_failures_per_minute,
    )
    closers.append(authenticator.close)
    await bus.start(authenticator.evict, on_resubscribed=authenticator.clear)
    closers.append(bus.close)

    # --- memories -------------------------------------------------------------------
    if embedder is None:
        embedder = await asyncio.to_thread(
            build_embedder,
            settings.embedding_provider,
            model_dir=settings.embedding_model_dir,
            dimension=settings.embedding_dimension,
            openai_base_url=settings.openai_base_url,
            openai_api_key=settings.openai_api_key,
            openai_model=settings.openai_model,
            timeout_s=settings.embedding_timeout_s,
            threads=settings.embedding_threads,
            batch_texts=settings.embedding_batch_texts,
            batch_chars=settings.embedding_batch_chars,
            queued_texts=settings.embedding_queue_texts,
        )
    closers.append(embedder.close)
    # the App does not exist yet: the store tells it through this hook
    recheck: list[Callable[[], None]] = []

    def vectors_changed() -> None:
        for f in recheck:
            f()

    vectors = _vector_store(settings, on_change=vectors_changed)
    await vectors.open(embedder.model_id, embedder.dimension)
    closers.append(vectors.close)

    audit_file = JsonLinesAuditFile(settings.audit_log) if settings.audit_log else None
    auditor = Auditor(control, clock, audit_file)
    projects_cache = ProjectCache(control, clock, stale_s=settings.project_cache_stale_s)
    # a call's project is read once, for the rate limiter and the memory rules alike
    call_projects = CallProjects(projects_cache)
    ceilings = _ceilings(settings)
    memories = MemoryService(
        metrics.timed("qdrant", vectors),
        metrics.timed("embedder", embedder),
        call_projects,
        clock,
        Defaults(
            max_memories_per_environment=settings.max_memories_per_environment,
            max_content_bytes=settings.max_content_bytes,
            max_metadata_bytes=settings.max_metadata_bytes,
            max_memories_per_environment_override=ceilings.max_memories_per_environment,
        ),
        meter=_WriteMeter(meter),
        on_environment_count=metrics.environment_memories.observe,
        max_query_chars=settings.max_query_chars,
        auditor=auditor,
    )

    # --- control-plane services ---------------------------------------------------------
    keys = KeyManager(control, hasher, auditor, clock, bus.publish)

    projects = ProjectManager(
        control,
        auditor,
        clock,
        bus.publish,
        memories.delete_scope,
        on_change=projects_cache.forget,
        ceilings=ceilings,
    )

    # --- the gRPC server ------------------------------------------------------------------
    admission = RateLimitAdmission(
        limiter,
        call_projects,
        key_limit=Limit(settings.key_requests_per_second, settings.key_burst),
        project_limit=Limit(settings.project_requests_per_second, settings.project_burst),
        ceiling=Limit(ceilings.requests_per_second, ceilings.burst),
    )
    observers: list[CallObserver] = [metrics, CallLogger()]
    pipeline = Pipeline(
        authenticator,
        admission=admission,
        observers=observers,
        costs=COSTS,
        stream_costs=STREAM_COSTS,
        usage=UsageRecorder(meter),
        limits=RequestLimits(
            default=settings.max_request_bytes,
            per_method={
                "/memoryd.v1.MemoryService/BatchCreateMemories": settings.max_batch_request_bytes
            },
        ),
        stream_idle_timeout_s=settings.stream_idle_timeout_s,
        clock=clock,
    )
    interceptors: list[Any] = []
    if tracer_provider is None and settings.otel_tracing:
        tracer_provider = tracing.tracer_provider()
        closers.append(_run_sync(tracer_provider.shutdown))
    if tracer_provider is not None:
        # an interceptor runs before the handlers, so a span covers the whole pipeline
        interceptors.append(tracing.server_interceptor(tracer_provider))
    server = aio.server(interceptors=interceptors or None, options=_server_options(settings))
    # The pipeline (request id, auth, limits, errors, usage, metrics) wraps
    # every method of the three services; health and reflection stay open.
    pipeline.register(
        memory_pb2_grpc.add_MemoryServiceServicer_to_server, MemoryServicer(memories), server
    )
    pipeline.register(
        keys_pb2_grpc.add_KeyServiceServicer_to_server, KeyServicer(keys, clock), server
    )
    pipeline.register(
        admin_pb2_grpc.add_AdminServiceServicer_to_server,
        AdminServicer(projects, auditor, UsageReporter(meter, clock)),
        server,
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    api_reflection.enable(server, SERVICE_NAMES)
    port = _listen(server, settings)

    metrics.add_collector(
        CallbackCounters(
            {
                "memoryd_key_cache_hits": (
                    "verified-key cache hits",
                    lambda: authenticator.cache_hits,
                ),
                "memoryd_key_cache_misses": (
                    "verified-key cache misses",
                    lambda: authenticator.cache_misses,
                ),
                "memoryd_rate_limit_backend_failures": (
                    "rate-limit checks that Redis failed (answered by the fallback or refused)",
                    lambda: getattr(limiter, "primary_failures", 0),
                ),
                "memoryd_rate_limit_fallback_checks": (
                    "rate-limit checks answered by the in-process limiter while Redis was down",
                    lambda: getattr(limiter, "fallback_checks", 0),
                ),
            }
        )
    )
    if settings.metrics_port:
        metrics.serve(settings.metrics_host, settings.metrics_port)
        closers.append(_run_sync(metrics.stop))

    # Last, once the port, the model and the stores are in hand: an owner key
    # made before a step that then failed would never be shown.
    bootstrapped = await _bootstrap(store, hasher, clock, bootstrap_if_empty)

    app = App(
        settings=settings,
        server=server,
        health=health,
        store=store,
        authenticator=authenticator,
        port=port,
        bootstrapped=bootstrapped,
        metrics=metrics,
        memories=memories,
        vectors=vectors,
    )
    app._closers = closers
    recheck.append(app.recheck_health)
    app._tasks.append(
        asyncio.get_running_loop().create_task(_sweeper(memories, settings.sweep_interval_s))
    )
    return app


async def _bootstrap(
    store: SqlControlStore, hasher: SecretHasher, clock: Clock, bootstrap_if_empty: bool
) -> Bootstrapped | None:
    """The first organization on an empty store; on a non-empty one, a
    warning for each organization left without an owner key."""
    if await store.count_orgs() == 0:
        return await bootstrap_org(store, hasher, clock) if bootstrap_if_empty else None
    for org in await store.orgs_without_owner_key():
        log.warning(
            "organization '%s' (%s) has no usable owner key; to mint one: "
            "memoryd bootstrap --new-owner-key %s",
            org.name,
            org.id,
            org.id,
        )
    return None


def _check_data_dir(path: Path) -> None:
    """Fails start-up at once, naming the directory and the cause, when the
    data dir cannot be created or written (read-only, not permitted, full)."""
    probe = path / f".memoryd-write-check-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as f:
            f.write(bytes(4096))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise StartupError(f"the data directory {path} is not writable: {_why(err)}") from err
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _why(err: OSError) -> str:
    reasons = {
        errno.EROFS: "it is on a read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is exceeded",
    }
    return reasons.get(err.errno or 0, err.strerror or str(err))


def _listen(server: aio.Server, settings: Settings) -> int:
    """Binds the gRPC port, or raises StartupError naming the address.
    The port is tried with a plain socket first: gRPC's own failure is a
    generic RuntimeError plus a log line of its C core on stderr."""
    address = f"{settings.host}:{settings.port}"
    if settings.port:
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


def _vector_store(settings: Settings, on_change: Callable[[], None]) -> VectorStore:
    if settings.qdrant_url:
        # imported here: qdrant-client takes most of a second to import, and
        # the embedded default does not need it
        from qdrant_client import AsyncQdrantClient

        from memoryd.storage.vectors.qdrant import QdrantVectorStore

        client = AsyncQdrantClient(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key or None,
            timeout=10,
            # the version check is a blocking request at construction
            check_compatibility=False,
        )
        return QdrantVectorStore(client)
    return EdgeVectorStore(
        Path(settings.data_dir) / "vectors",
        sync_writes=settings.vector_sync_writes,
        min_free_bytes=_min_free_bytes(settings),
        timeout_s=settings.storage_timeout_s,
        on_change=on_change,
        process=settings.vector_engine_process,
    )


def _uses_data_dir(settings: Settings) -> bool:
    """Whether an embedded store (Qdrant Edge, SQLite) keeps its files there."""
    return not settings.qdrant_url or not settings.database_url


def _min_free_bytes(settings: Settings) -> int:
    return settings.min_free_disk_mb * MIB


async def _sweeper(memories: MemoryService, interval_s: float) -> None:
    """Removes expired memories in the background (they are invisible already)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            removed = await memories.sweep_expired()
            if removed:
                log.info("swept %d expired memories", removed)
        except DomainError as err:  # a full or hung disk: said, not a traceback
            log.warning("sweep of expired memories failed: %s", err)
        except Exception:
            log.exception("sweep of expired memories failed")


class _WriteMeter:
    def __init__(self, meter: UsageMeter) -> None:
        self._meter = meter

    async def memories_written(self, tenant: Tenant, count: int, content_bytes: int) -> None:
        await self._meter.record(
            tenant.org_id,
            tenant.project_id,
            tenant.environment_id,
            memories_written=count,
            bytes_stored=content_bytes,
        )


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


def _ceilings(settings: Settings) -> Ceilings:
    """What an organization may grant itself: the `max_*_override` settings,
    never below the server's own defaults; content and metadata sizes are hard
    limits at the server's setting."""
    return Ceilings(
        requests_per_second=max(
            settings.max_requests_per_second_override,
            settings.key_requests_per_second,
            settings.project_requests_per_second,
        ),
        burst=max(settings.max_burst_override, settings.key_burst, settings.project_burst),
        max_memories_per_environment=max(
            settings.max_memories_per_environment_override, settings.max_memories_per_environment
        ),
        max_content_bytes=settings.max_content_bytes,
        max_metadata_bytes=settings.max_metadata_bytes,
    )
