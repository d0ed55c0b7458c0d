"""The one composition root: `build_app(settings)` constructs every object and
passes dependencies in constructors. Nothing here runs at import time.

Read `_build` top to bottom: each area has its own short builder, and every
resource registers its close on one `AsyncExitStack` where it is opened, so a
failure half-way closes what was opened, in reverse order, and `App.stop`
closes the rest the same way. The order is a rule: the data directory first;
the first organization last, once the port, the model and the stores are in
hand (an owner key made before a step that then failed would never be shown).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from grpc import aio

from memoryd.api import tracing
from memoryd.api.admin import AdminServicer
from memoryd.api.call import CallProjects
from memoryd.api.conversations import AddMessagesView
from memoryd.api.erasure import describe_erasure
from memoryd.api.exports import ExportEndpoints, ExportView, export_line
from memoryd.api.health import Check, Health, store_checks
from memoryd.api.keys import KeyServicer
from memoryd.api.knowledge import IngestView, KnowledgeServicer
from memoryd.api.memory import MemoryServicer
from memoryd.api.memory import memory as memory_pb
from memoryd.api.observe import CallbackCounters, CallLogger, Metrics
from memoryd.api.operations import Describe, OperationsServicer
from memoryd.api.operations import add_to_server as operations_add_to_server
from memoryd.api.pipeline import Pipeline
from memoryd.api.server import SERVICE_NAMES, add_open_services, listen, new_server
from memoryd.api.steps import CallObserver, RequestLimits
from memoryd.api.webhooks import WebhookServicer
from memoryd.auth.authenticator import Authenticator
from memoryd.auth.hashing import Argon2Hasher
from memoryd.config import Settings
from memoryd.crypto.kek import AwsKms, KekProviders, LocalKeyFile
from memoryd.crypto.sealer import Sealer
from memoryd.documents import Reader, splitter_for
from memoryd.domain.alerts import AlertMonitor, Resource
from memoryd.domain.audit import Auditor
from memoryd.domain.bootstrap import Bootstrapped, bootstrap_org
from memoryd.domain.changes import WatchLog
from memoryd.domain.clock import Clock, SystemClock
from memoryd.domain.control import ControlStore
from memoryd.domain.conversations.extraction import Extractor
from memoryd.domain.conversations.job import AddMessagesJob
from memoryd.domain.conversations.model import KIND
from memoryd.domain.conversations.service import ConversationService
from memoryd.domain.encryption import EncryptionKeys
from memoryd.domain.erasure import KIND as ERASE_KIND
from memoryd.domain.erasure import Erasable, EraseJob, ErasureService, HoldCheck, WatchWindow
from memoryd.domain.errors import DomainError
from memoryd.domain.exports import KIND as EXPORT
from memoryd.domain.exports import ExportJob, ExportService
from memoryd.domain.holds import HoldGuard, LegalHolds
from memoryd.domain.idempotency import Idempotency
from memoryd.domain.keys import KeyManager
from memoryd.domain.knowledge.job import IngestJob
from memoryd.domain.knowledge.model import KIND as INGEST
from memoryd.domain.knowledge.service import KnowledgeService
from memoryd.domain.knowledge.service import Limits as KnowledgeLimits
from memoryd.domain.memories import Defaults, MemoryService
from memoryd.domain.memories.recording import ChangeRecorder
from memoryd.domain.memory import Embedder, SearchMode, VectorStore
from memoryd.domain.operation_service import KindScopes, OperationService, Waiters
from memoryd.domain.operations import JobHandler
from memoryd.domain.ports import SecretHasher
from memoryd.domain.project_cache import ProjectCache
from memoryd.domain.projects import Ceilings, ProjectManager
from memoryd.domain.prompts import PromptManager, PromptStore
from memoryd.domain.tenancy import Scope
from memoryd.domain.usage import UsageReporter
from memoryd.domain.watch import WatchHub, WatchService
from memoryd.domain.webhooks import Courier, Dispatcher, RetryPolicy, WebhookManager
from memoryd.embeddings import build_embedder
from memoryd.extraction.llm import LlmExtractor
from memoryd.extraction.verbatim import VerbatimExtractor
from memoryd.fetch import UrlFetcher
from memoryd.jobs import JobRunner
from memoryd.jobs.webhooks import WebhookRunner
from memoryd.outbound import AddressGuard, AddressPolicy, GuardedClient, parse_networks
from memoryd.ratelimit import (
    FailoverRateLimiter,
    Limit,
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    is_org_key_bucket,
)
from memoryd.ratelimit.admission import COSTS, STREAM_COSTS, RateLimitAdmission
from memoryd.storage import erasables
from memoryd.storage.audit_file import JsonLinesAuditFile
from memoryd.storage.disk import check_free_space, check_writable
from memoryd.storage.export_files import LocalExportFiles
from memoryd.storage.redis import make_redis
from memoryd.storage.revocation import LocalRevocationBus, RedisRevocationBus, RevocationBus
from memoryd.storage.spool import LocalSpool
from memoryd.storage.sql import SqlControlStore
from memoryd.storage.vectors.edge import EdgeVectorStore
from memoryd.storage.vectors.edge_backends import HeadStart
from memoryd.storage.vectors.embedded import (
    KNOWLEDGE,
    MEMORIES,
    configured_identity,
    existing_store,
    store_options,
    store_path,
)
from memoryd.storage.vectors.lazy import LazyVectorStore
from memoryd.storage.vectors.point_store import PointStore
from memoryd.storage.vectors.ranking import Fusion, Tuning
from memoryd.usage import (
    LocalUsageMeter,
    RedisUsageMeter,
    UsageMeter,
    UsageRecorder,
    WriteRecorder,
)
from memoryd.v1 import (
    admin_pb2_grpc,
    keys_pb2_grpc,
    knowledge_pb2_grpc,
    memory_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

if TYPE_CHECKING:
    from memoryd.api.mcp.endpoint import McpEndpoint

log = logging.getLogger("memoryd")

# WebhookService's methods, and the largest request body each takes.
WEBHOOK_METHODS = tuple(
    f"/memoryd.v1.WebhookService/{m.name}"
    for m in webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"].methods
)
WEBHOOK_REQUEST_BYTES = 64 * 1024

Readers = dict[str, Callable[[], float]]
"""Counters kept by a part, by metric name (see `memoryd.api.observe.COUNTERS`)."""


@dataclass
class App:
    """A built server: `start()`, then `wait()` or `stop()`."""

    settings: Settings
    server: aio.Server
    health: Health
    store: SqlControlStore
    authenticator: Authenticator
    metrics: Metrics
    memories: MemoryService
    vectors: VectorStore
    port: int = 0
    bootstrapped: Bootstrapped | None = None
    watchers: WatchHub | None = None
    mcp: McpEndpoint | None = None
    # the knowledge chunks' vector store (tests read it)
    chunks: VectorStore | None = None
    # projects and environments (tests run the purge sweep with it)
    projects: ProjectManager | None = None
    _health_checks: Sequence[Check] = ()
    _resources: AsyncExitStack = field(default_factory=AsyncExitStack)
    _stopped: bool = False

    async def start(self) -> None:
        await self.server.start()
        await self.health.start(self._health_checks)
        if self.mcp is not None:
            await self.mcp.start()
        log.info("memoryd serving on %s:%d", self.settings.host, self.port)

    async def stop(self, grace: float | None = None) -> None:
        """Health goes NOT_SERVING first (calls are still served for
        `shutdown_delay_s`), then new calls are refused and in-flight ones get
        `grace` seconds, then the stores close."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        if self.settings.shutdown_delay_s > 0:
            await asyncio.sleep(self.settings.shutdown_delay_s)
        grace = self.settings.grace_period_s if grace is None else grace
        if self.watchers is not None:
            # streams end with UNAVAILABLE (clients resume elsewhere), not cancelled
            await self.watchers.close()
        if self.mcp is not None:  # its calls in flight still need the gRPC server
            await self.mcp.stop(grace)
        await self.server.stop(grace)
        await self.health.close()
        await self._resources.aclose()
        log.info("memoryd stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    def recheck_health(self) -> None:
        """Probes health now instead of at the next interval (a store saw
        its state change)."""
        self.health.recheck()


async def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    hasher: SecretHasher | None = None,
    bootstrap_if_empty: bool = True,
    embedder: Embedder | None = None,
    tracer_provider: Any = None,
    engine_head_start: HeadStart | None = None,
) -> App:
    """Builds the whole server from settings. Tests may inject a clock, a
    faster hasher, an embedder or a tracer provider; everything else comes
    from `settings`. `engine_head_start`: the memories' store's engine,
    already opening (`memoryd serve` begins it before importing this
    module); the caller discards it if the build does not adopt it."""
    # before anything writes there: an unwritable or full disk is one clear error
    await _check_disk(settings)
    async with AsyncExitStack() as stack:
        return await _build(
            stack,
            settings,
            clock or SystemClock(),
            hasher or Argon2Hasher(),
            embedder,
            tracer_provider,
            bootstrap_if_empty,
            engine_head_start,
        )


async def _build(
    stack: AsyncExitStack,
    settings: Settings,
    clock: Clock,
    hasher: SecretHasher,
    embedder: Embedder | None,
    tracer_provider: Any,
    bootstrap_if_empty: bool,
    head_start: HeadStart | None = None,
) -> App:
    """Everything opened registers its close on `stack`; the returned App
    takes what is left on it."""
    _on_close(stack, hasher.close)
    metrics = Metrics()
    health = Health(SERVICE_NAMES)
    store = await _control_plane(stack, settings, on_change=health.recheck)
    control: ControlStore = metrics.timed("sql", store)
    sealer = _sealer(settings, store)
    store.seal_with(sealer)
    early = _open_vectors_early(stack, settings, embedder, sealer, health.recheck, head_start)
    limits = _limits(stack, settings, clock)
    watchers = _watch_hub(settings, metrics, store)
    authenticator = await _authenticator(
        stack, settings, control, hasher, clock, limits.bus, watchers
    )
    embedder = await _embedder(stack, settings, embedder)
    if early is None:
        vectors = await _vectors(stack, settings, _identity(embedder), sealer, health.recheck)
    else:
        opening, identity = early
        vectors = await opening
        if _identity(embedder) != identity:
            raise RuntimeError(
                f"the embedder is {embedder.model_id} ({embedder.dimension}-d), but the "
                f"vector store was opened for {identity[0]} ({identity[1]}-d)"
            )
    chunks = await _vectors(stack, settings, _identity(embedder), sealer, health.recheck, KNOWLEDGE)
    domain = _services(
        settings,
        store,
        control,
        hasher,
        clock,
        limits,
        metrics,
        embedder,
        vectors,
        watchers,
        chunks,
        sealer,
    )
    _on_close(stack, domain.projects_cache.close)
    idempotency = Idempotency(metrics.timed("sql", store), clock)
    pipeline = _pipeline(settings, authenticator, domain, limits, metrics, clock)
    server = _server(stack, settings, pipeline, domain, idempotency, health, clock, tracer_provider)
    port = listen(server, settings)
    mcp = _mcp_endpoint(stack, settings, server, authenticator)
    _metrics_endpoint(
        stack,
        settings,
        metrics,
        {
            **limits.counters,
            **_key_cache(authenticator),
            **_job_counts(domain.jobs),
            "memoryd_watch_streams_started": lambda: domain.watchers.joined,
            "memoryd_purges_held": lambda: domain.projects.purges_held,
            "memoryd_watch_poll_failures": lambda: domain.watchers.poll_failures,
            **_webhook_counts(domain.webhook_runner),
        },
    )
    # Last, once the port, the model and the stores are in hand: an owner key
    # made before a step that then failed would never be shown.
    bootstrapped = await _bootstrap(store, hasher, clock, bootstrap_if_empty)
    _start_sweeper(
        stack, "expired memories", domain.memories.sweep_expired, settings.sweep_interval_s
    )
    _start_sweeper(stack, "expired request ids", idempotency.sweep, settings.sweep_interval_s)
    _start_sweeper(
        stack,
        "deleted projects and environments",
        domain.projects.purge_due,
        settings.sweep_interval_s,
    )
    _start_jobs(stack, domain.jobs, store, settings, clock)
    _start_export_sweep(stack, domain.export_files, settings, clock)
    _start_watching(stack, domain.watchers, store, settings, clock)
    _start_webhooks(stack, domain, store, settings, clock)
    return App(
        settings=settings,
        server=server,
        health=health,
        store=store,
        authenticator=authenticator,
        metrics=metrics,
        memories=domain.memories,
        vectors=vectors,
        chunks=chunks,
        port=port,
        bootstrapped=bootstrapped,
        watchers=domain.watchers,
        mcp=mcp,
        projects=domain.projects,
        _health_checks=_health_checks(settings, store, vectors),
        _resources=stack.pop_all(),
    )


# --- data directory -------------------------------------------------------------------


async def _check_disk(settings: Settings) -> None:
    await asyncio.to_thread(check_writable, Path(settings.data_dir))
    if _uses_data_dir(settings):
        await asyncio.to_thread(
            check_free_space, settings.data_dir, settings.min_free_bytes, what="start-up"
        )


def _uses_data_dir(settings: Settings) -> bool:
    """Whether an embedded store (Qdrant Edge, SQLite) keeps its files there."""
    return not settings.qdrant_url or not settings.database_url


# --- control plane, limits, keys ------------------------------------------------------


async def _control_plane(
    stack: AsyncExitStack, settings: Settings, on_change: Callable[[], None]
) -> SqlControlStore:
    store = SqlControlStore(settings.resolved_database_url)
    await store.open()
    _on_close(stack, store.close)
    # health follows the database at once, not at the next probe
    store.on_reachability_change(lambda _reachable: on_change())
    return store


@dataclass(frozen=True)
class _Limits:
    """Rate limits, usage metering and key-revocation fan-out, with the
    counters they keep: all in Redis, or all in this process."""

    limiter: RateLimiter
    meter: UsageMeter
    bus: RevocationBus
    counters: Readers


def _limits(stack: AsyncExitStack, settings: Settings, clock: Clock) -> _Limits:
    local = LocalRateLimiter(clock)
    if settings.redis_url:
        limits = _redis_limits(stack, settings, clock, local)
        log.info("rate limits, usage and key revocation: Redis (%s)", limits.limiter.backend_name)
    else:
        limits = _Limits(local, LocalUsageMeter(clock), LocalRevocationBus(), {})
        log.info("rate limits, usage and key revocation: in-process (one replica only)")
    _on_close(stack, limits.meter.close)
    evictions: Readers = {"memoryd_rate_limit_local_evictions": lambda: local.evicted_live}
    return _Limits(limits.limiter, limits.meter, limits.bus, {**limits.counters, **evictions})


def _redis_limits(
    stack: AsyncExitStack, settings: Settings, clock: Clock, local: LocalRateLimiter
) -> _Limits:
    timeout = settings.redis_timeout_ms / 1000
    redis = make_redis(settings.redis_url, timeout)
    _on_close(stack, redis.aclose)
    shared = RedisRateLimiter(redis, timeout_s=timeout)
    limiter = FailoverRateLimiter(
        shared,
        local,
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
    counters: Readers = {
        "memoryd_rate_limit_backend_failures": lambda: limiter.primary_failures,
        "memoryd_rate_limit_fallback_checks": lambda: limiter.fallback_checks,
        "memoryd_rate_limit_backend_transitions": lambda: limiter.transitions,
        "memoryd_rate_limit_script_loads": lambda: shared.script_loads,
        "memoryd_usage_flush_failures": lambda: meter.flush_failures,
        "memoryd_usage_dropped_keys": lambda: meter.dropped_keys,
        "memoryd_revocation_publish_failures": lambda: bus.publish_failures,
        "memoryd_revocation_reconnects": lambda: bus.reconnects,
    }
    return _Limits(limiter, meter, bus, counters)


async def _authenticator(
    stack: AsyncExitStack,
    settings: Settings,
    control: ControlStore,
    hasher: SecretHasher,
    clock: Clock,
    bus: RevocationBus,
    watchers: WatchHub,
) -> Authenticator:
    authenticator = Authenticator(
        control,
        hasher,
        clock,
        cache_ttl_s=settings.key_cache_ttl_s,
        cache_size=settings.key_cache_size,
        failures_per_minute=settings.auth_failures_per_minute,
    )
    _on_close(stack, authenticator.close)

    # a changed key ends its WatchMemories streams too: they outlive calls
    def revoked(key_id: str) -> None:
        authenticator.evict(key_id)
        watchers.key_changed(key_id)

    def resubscribed() -> None:
        authenticator.clear()
        watchers.keys_unknown()

    await bus.start(revoked, on_resubscribed=resubscribed)
    _on_close(stack, bus.close)
    return authenticator


def _watch_hub(settings: Settings, metrics: Metrics, store: SqlControlStore) -> WatchHub:
    """The WatchMemories streams of this process and the recent change log
    they share (started with the other background work)."""
    return WatchHub(
        metrics.timed("sql", store),
        poll_interval_s=settings.watch_poll_interval_s,
        max_watchers=settings.watch_max_streams,
    )


def _job_counts(runner: JobRunner) -> Readers:
    def reader(name: str) -> Callable[[], float]:
        return lambda: float(runner.counts[name])

    names = ("started", "succeeded", "failed", "cancelled", "retried", "leases_lost")
    return {f"memoryd_operations_{name}": reader(name) for name in names}


def _webhook_counts(runner: WebhookRunner) -> Readers:
    def reader(name: str) -> Callable[[], float]:
        return lambda: float(runner.counts[name])

    names = ("attempts", "succeeded", "attempts_failed")
    return {f"memoryd_webhook_{name}": reader(name) for name in names}


def _key_cache(authenticator: Authenticator) -> Readers:
    return {
        "memoryd_key_cache_hits": lambda: authenticator.cache_hits,
        "memoryd_key_cache_misses": lambda: authenticator.cache_misses,
        "memoryd_key_cache_refreshes": lambda: authenticator.refreshes,
    }


# --- memories: the embedder and the vector store ----------------------------------------


async def _embedder(
    stack: AsyncExitStack, settings: Settings, injected: Embedder | None
) -> Embedder:
    embedder = injected
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
            cache_size=settings.embedding_cache_size,
        )
    _on_close(stack, embedder.close)
    return embedder


def _sealer(settings: Settings, store: SqlControlStore) -> Sealer:
    """Seals content with per-environment data keys wrapped by each
    organization's key-encryption key (local key file or AWS KMS)."""
    local = LocalKeyFile(Path(settings.kek_file or Path(settings.data_dir) / "kek.key"))
    kms = AwsKms(settings.kms_endpoint_url, settings.kms_region, settings.kms_timeout_s)
    return Sealer(
        store,
        KekProviders(local, kms),
        enabled=settings.encryption,
        cache_size=settings.encryption_key_cache,
    )


def _open_vectors_early(
    stack: AsyncExitStack,
    settings: Settings,
    injected: Embedder | None,
    sealer: Sealer,
    on_change: Callable[[], None],
    head_start: HeadStart | None = None,
) -> tuple[asyncio.Task[VectorStore], tuple[str, int]] | None:
    """Starts opening an existing embedded vector store while the rest of
    the server (the embedding model above all) is built, and answers the
    opening and the model identity it was opened for; None when there is
    nothing to gain or something to risk (see below).

    The engine loads a shard in its own process, and a large one takes
    seconds (1M memories: ~9 s on a 2-core box), so the two overlap. Only an
    existing store (its model marker present): opening one only checks the
    marker, whereas a new store would be marked for the model before the
    model had loaded, and a model that then failed to load would leave the
    store marked for it. A Qdrant server is opened in turn, as before."""
    if existing_store(settings) is None:
        return None
    identity = _identity(injected) if injected is not None else configured_identity(settings)
    opening = asyncio.create_task(
        _vectors(stack, settings, identity, sealer, on_change, head_start=head_start),
        name="memoryd-open-vectors",
    )

    async def settle() -> None:
        # a start that failed meanwhile: stop the opening (it closes what it
        # started); one that finished has put its own close on the stack
        if not opening.done():
            opening.cancel()
        with contextlib.suppress(BaseException):
            await opening

    stack.push_async_callback(settle)
    return opening, identity


def _identity(embedder: Embedder) -> tuple[str, int]:
    """The (model id, dimension) a vector store is opened for."""
    return embedder.model_id, embedder.dimension


async def _vectors(
    stack: AsyncExitStack,
    settings: Settings,
    identity: tuple[str, int],
    sealer: Sealer,
    on_change: Callable[[], None],
    name: str = MEMORIES,
    head_start: HeadStart | None = None,
) -> VectorStore:
    """The memories' vector store, or (`name` "knowledge") the documents'
    chunks' own, made at its first use (an embedded server that never
    ingests a document has none: no directory, no engine process). Opened
    for the model `identity` (model id, dimension); the memories' store
    adopts `head_start` when it matches."""
    path = store_path(settings, name)
    vectors: VectorStore = (
        _vector_store(settings, on_change, sealer=sealer, head_start=head_start)
        if name == MEMORIES
        else LazyVectorStore(
            lambda: _vector_store(settings, on_change, name, sealer),
            lambda: bool(settings.qdrant_url) or path.exists(),
        )
    )
    await vectors.open(*identity)
    _on_close(stack, vectors.close)
    return vectors


async def model_identity(settings: Settings) -> tuple[str, int]:
    """The (model id, dimension) of the configured embedder (loading it)."""
    async with AsyncExitStack() as stack:
        embedder = await _embedder(stack, settings, None)
        return embedder.model_id, embedder.dimension


async def open_vector_store(settings: Settings) -> VectorStore:
    """The configured vector store, opened (and so upgraded) for the
    configured model. The caller closes it."""
    model_id, dimension = await model_identity(settings)
    vectors = _vector_store(settings, lambda: None)
    await vectors.open(model_id, dimension)
    return vectors


def _vector_store(
    settings: Settings,
    on_change: Callable[[], None],
    name: str = MEMORIES,
    sealer: Sealer | None = None,
    head_start: HeadStart | None = None,
) -> VectorStore:
    """The memories' vector store ("vectors"), or another of the same
    engine: the knowledge chunks' ("knowledge", a directory or a collection
    of its own, so a memory call can never reach a chunk)."""
    tuning = search_tuning(settings)
    if settings.qdrant_url:
        from memoryd.storage.vectors.qdrant import QdrantVectorStore

        prefix = "memoryd" if name == MEMORIES else f"memoryd_{name}"
        return QdrantVectorStore(
            qdrant_client(settings), collection_prefix=prefix, tuning=tuning, sealer=sealer
        )
    return EdgeVectorStore(
        store_path(settings, name),
        **store_options(settings),
        timeout_s=settings.storage_timeout_s,
        on_change=on_change,
        process=settings.vector_engine_process,
        tuning=tuning,
        sealer=sealer,
        engine_socket=engine_socket(settings, name),
        head_start=head_start,
    )


def engine_socket(settings: Settings, name: str) -> str:
    """The Unix socket of the shared engine of store `name` (a worker of
    `serve --workers N`), or "" (this process runs its own)."""
    if not settings.engine_socket_dir:
        return ""
    return str(Path(settings.engine_socket_dir) / f"{name}.sock")


def qdrant_client(settings: Settings) -> Any:
    """The `AsyncQdrantClient` of `settings.qdrant_url`."""
    # imported here: qdrant-client takes most of a second to import, and
    # the embedded default does not need it
    from qdrant_client import AsyncQdrantClient

    return AsyncQdrantClient(
        url=settings.qdrant_url,
        api_key=settings.qdrant_api_key or None,
        timeout=10,
        # the version check is a blocking request at construction
        check_compatibility=False,
    )


def search_tuning(settings: Settings) -> Tuning:
    return Tuning(
        fusion=cast(Fusion, settings.search_fusion),
        rrf_k=settings.search_rrf_k,
        semantic_weight=settings.search_semantic_weight,
        keyword_weight=settings.search_keyword_weight,
        candidates=settings.search_candidates,
        saturation=settings.search_keyword_saturation,
    )


# --- the domain services ----------------------------------------------------------------


@dataclass(frozen=True)
class _Services:
    memories: MemoryService
    keys: KeyManager
    projects: ProjectManager
    projects_cache: ProjectCache
    # a call's project is read once, for the rate limiter and the memory rules alike
    call_projects: CallProjects
    auditor: Auditor
    usage: UsageReporter
    ceilings: Ceilings
    prompts: PromptManager
    conversations: ConversationService
    operations: OperationService
    jobs: JobRunner
    describe: Mapping[str, Describe]
    watchers: WatchHub
    watch: WatchService
    webhooks: WebhookManager
    webhook_runner: WebhookRunner
    webhook_sender: GuardedClient
    alerts: AlertMonitor
    exports: ExportService
    export_files: LocalExportFiles
    knowledge: KnowledgeService
    erasure: ErasureService
    legal_holds: LegalHolds
    encryption_keys: EncryptionKeys


def _services(
    settings: Settings,
    store: SqlControlStore,
    control: ControlStore,
    hasher: SecretHasher,
    clock: Clock,
    limits: _Limits,
    metrics: Metrics,
    embedder: Embedder,
    vectors: VectorStore,
    watchers: WatchHub,
    chunks: VectorStore,
    sealer: Sealer,
) -> _Services:
    audit_file = JsonLinesAuditFile(settings.audit_log) if settings.audit_log else None
    auditor = Auditor(control, clock, audit_file)
    projects_cache = ProjectCache(control, clock, stale_s=settings.project_cache_stale_s)
    call_projects = CallProjects(projects_cache)
    ceilings = _ceilings(settings)
    changes: WatchLog = metrics.timed("sql", store)
    recorder = ChangeRecorder(changes, clock, on_append=watchers.appended)
    alerts = AlertMonitor(
        store,
        clock,
        rearm_percent=settings.alert_rearm_percent,
        rate_limited_s=settings.alert_rate_limited_s,
        quiet_s=settings.alert_quiet_s,
        on_append=watchers.appended,
    )
    holds = HoldGuard(metrics.timed("sql", store))
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
        meter=WriteRecorder(limits.meter),
        on_environment_count=metrics.environment_memories.observe,
        max_query_chars=settings.max_query_chars,
        auditor=auditor,
        default_search_mode=SearchMode(settings.search_default_mode),
        changes=recorder,
        on_memory_level=lambda t, used, limit, exact: alerts.quota(
            t, Resource.MEMORIES, used, limit, exact=exact
        ),
        holds=holds,
    )
    keys = KeyManager(control, hasher, auditor, clock, limits.bus.publish)
    export_files = LocalExportFiles(
        Path(settings.data_dir) / "exports", settings.min_free_bytes, sealer
    )

    async def delete_scope(
        org_id: str, project_id: str, environment_id: str | None
    ) -> dict[str, int]:
        """Erases a scope's vectors, files and data keys (its rows go after,
        with their cascades); answers the counts of the purge's receipt."""
        counts = await store.scope_counts(org_id, project_id, environment_id)
        counts["memories"] = await memories.delete_scope(org_id, project_id, environment_id)
        counts["chunks"] = await chunks.delete_scope(org_id, project_id, environment_id)
        counts["export_files"] = export_files.remove_scope(org_id, project_id, environment_id)
        # crypto-shredding, last: whatever copy of the scope's sealed content
        # is left (a backup, a write-ahead log) can no longer be opened. The
        # environments' rows cascade to their data keys already; this also
        # covers a store that keeps the rows (and drops cached keys).
        counts["data_keys"] = await store.drop_data_keys(org_id, project_id, environment_id)
        sealer.forget(org_id, project_id, environment_id)
        # verification: nothing of the scope is left in either vector store
        left = await memories.count_scope(org_id, project_id, environment_id)
        left += await chunks.count_scope(org_id, project_id, environment_id)
        counts["left"] = left
        return counts

    projects = ProjectManager(
        control,
        auditor,
        clock,
        limits.bus.publish,
        delete_scope,
        on_change=projects_cache.forget,
        ceilings=ceilings,
        holds=holds,
        retention_days=settings.deletion_retention_days,
    )
    usage = UsageReporter(limits.meter, clock, tokens=store)
    prompt_store: PromptStore = metrics.timed("sql", store)
    prompts = PromptManager(prompt_store, control, auditor, clock)
    export_job = ExportJob(memories, export_files, export_line, clock, settings.export_max_memories)
    knowledge, ingest_job = _knowledge(
        settings, store, chunks, memories, embedder, clock, auditor, lambda: jobs.wake(), recorder
    )
    erase = _erase_job(store, vectors, chunks, clock, holds, auditor, watchers, export_files)
    more_jobs: dict[str, tuple[JobHandler, KindScopes]] = {
        EXPORT: (export_job, KindScopes(read=Scope.EXPORT_READ, manage=Scope.EXPORT_WRITE)),
        INGEST: (ingest_job, KindScopes(read=Scope.INGEST_READ, manage=Scope.INGEST_WRITE)),
        ERASE_KIND: (erase, KindScopes(read=Scope.MEMORY_DELETE, manage=Scope.MEMORY_DELETE)),
    }
    conversations, operations, jobs = _conversations(
        settings,
        store,
        memories,
        metrics.timed("embedder", embedder),
        clock,
        prompts,
        alerts,
        more_jobs,
    )
    exports = ExportService(
        memories,
        store,
        operations,
        export_files,
        clock,
        timedelta(hours=settings.export_retention_hours),
        on_stored=jobs.wake,
    )
    erasure = ErasureService(store, control, clock, holds, on_stored=jobs.wake)
    describe: dict[str, Describe] = {
        KIND: AddMessagesView(memories, memory_pb),
        EXPORT: ExportView(exports),
        INGEST: IngestView(knowledge),
        ERASE_KIND: describe_erasure,
    }
    retention = timedelta(hours=settings.change_retention_hours)
    watch = WatchService(memories, changes, watchers, retention)
    webhooks, webhook_runner, webhook_sender = _webhooks(settings, store, auditor, clock)
    return _Services(
        memories,
        keys,
        projects,
        projects_cache,
        call_projects,
        auditor,
        usage,
        ceilings,
        prompts,
        conversations,
        operations,
        jobs,
        describe,
        watchers,
        watch,
        webhooks,
        webhook_runner,
        webhook_sender,
        alerts,
        exports,
        export_files,
        knowledge,
        erasure,
        LegalHolds(store, control, auditor, clock),
        EncryptionKeys(
            store, sealer.wrapper, auditor, clock, encryption_enabled=settings.encryption
        ),
    )


def _knowledge(
    settings: Settings,
    store: SqlControlStore,
    chunks: VectorStore,
    memories: MemoryService,
    embedder: Embedder,
    clock: Clock,
    auditor: Auditor,
    wake: Callable[[], None],
    changes: ChangeRecorder,
) -> tuple[KnowledgeService, IngestJob]:
    """KnowledgeService and its ingest job: the parsers and the splitter
    (sized by the embedding model's tokenizer), the spool, URL downloads
    through the outbound guard."""
    data = Path(settings.data_dir)
    reader = Reader()
    model_dir = Path(settings.embedding_model_dir) if settings.embedding_model_dir else None
    splitter = splitter_for(
        model_dir, settings.knowledge_chunk_tokens, settings.knowledge_chunk_overlap
    )
    spool = LocalSpool(data / "uploads", settings.min_free_bytes)
    limits = KnowledgeLimits(
        max_upload_bytes=settings.knowledge_max_upload_bytes,
        max_documents=settings.knowledge_max_documents_per_environment,
        max_bytes=settings.knowledge_max_bytes_per_environment,
    )
    knowledge = KnowledgeService(
        store,
        chunks,
        memories,
        reader,
        spool,
        clock,
        limits,
        auditor=auditor,
        on_stored=wake,
        changes=changes,
    )
    guard = _outbound_guard(settings)
    fetcher = UrlFetcher(
        guard,
        max_bytes=settings.knowledge_max_upload_bytes,
        timeout_s=settings.knowledge_fetch_timeout_s,
    )
    job = IngestJob(
        knowledge,
        store,
        chunks,
        embedder,
        reader,
        splitter,
        spool,
        fetcher,
        clock,
        max_attempts=settings.job_max_attempts,
    )
    return knowledge, job


def _erase_job(
    store: SqlControlStore,
    vectors: VectorStore,
    chunks: VectorStore,
    clock: Clock,
    holds: HoldCheck,
    auditor: Auditor,
    watchers: WatchHub,
    export_files: LocalExportFiles,
) -> EraseJob:
    """EraseEndUser's job over every store that keeps end-user data, in the
    order it erases them (see `memoryd.storage.erasables`); a new store
    adds its adapter here."""
    if not isinstance(vectors, PointStore):
        raise TypeError("EraseEndUser needs a memoryd vector store")
    stores: list[Erasable] = [
        erasables.ExportFiles(store, export_files),
        erasables.Operations(store),
        erasables.Memories(vectors),
        erasables.Knowledge(store, chunks),
        erasables.WebhookDeliveries(store),
        erasables.ChangeEvents(store),
        erasables.IdempotencyEntries(store),
        WatchWindow(watchers.window),
    ]
    if isinstance(vectors, EdgeVectorStore):
        return EraseJob(stores, clock, holds, auditor, vacuum=vectors.optimize)
    reason = "not run: the Qdrant server vacuums deleted points on its optimizer's schedule"
    return EraseJob(stores, clock, holds, auditor, no_vacuum_reason=reason)


def _outbound_guard(settings: Settings) -> AddressGuard:
    """The one address policy of every outbound call (webhooks, URL ingest)."""
    return AddressGuard(AddressPolicy(parse_networks(settings.outbound_allow_networks)))


def _webhooks(
    settings: Settings, store: SqlControlStore, auditor: Auditor, clock: Clock
) -> tuple[WebhookManager, WebhookRunner, GuardedClient]:
    """WebhookService, and the fan-out and senders of this process, all
    calling out through the one guarded client."""
    guard = _outbound_guard(settings)
    sender = GuardedClient(
        guard,
        timeout_s=settings.webhook_timeout_s,
        connections_per_target=settings.webhook_workers,
    )
    retry = RetryPolicy(
        base_s=settings.webhook_retry_base_s,
        max_s=settings.webhook_retry_max_s,
        max_age=timedelta(hours=settings.webhook_max_age_hours),
        disable_after=settings.webhook_disable_after_failures,
    )
    manager = WebhookManager(
        store,
        guard,
        auditor,
        clock,
        store.last,
        max_per_environment=settings.webhook_max_per_environment,
        max_age=retry.max_age,
    )
    runner = WebhookRunner(
        Dispatcher(store, store, clock, retry),
        store,
        Courier(store, sender, clock, retry, auditor),
        clock,
        workers=settings.webhook_workers,
        per_webhook=settings.webhook_workers_per_webhook,
        per_environment=settings.webhook_workers_per_environment,
        timeout_s=settings.webhook_timeout_s,
        poll_interval_s=settings.webhook_poll_interval_s,
    )
    return manager, runner, sender


def _conversations(
    settings: Settings,
    store: SqlControlStore,
    memories: MemoryService,
    embedder: Embedder,
    clock: Clock,
    prompts: PromptManager,
    alerts: AlertMonitor,
    more_jobs: Mapping[str, tuple[JobHandler, KindScopes]],
) -> tuple[ConversationService, OperationService, JobRunner]:
    """AddMessages: the service that stores operations, the job that runs
    them, the runner of this process and the Operations it answers;
    `more_jobs` are the other kinds of operations (handler, scopes)."""
    verbatim = VerbatimExtractor()
    inferring: Extractor = verbatim
    if settings.extractor == "llm":
        inferring = LlmExtractor(
            settings.llm_base_url,
            settings.llm_api_key,
            settings.llm_model,
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            max_retry_after_s=settings.llm_max_retry_after_s,
        )
    job = AddMessagesJob(
        store,
        memories,
        embedder,
        clock,
        verbatim=verbatim,
        inferring=inferring,
        prompts=prompts,
        ledger=store,
        candidates=settings.llm_candidates,
        context_messages=settings.llm_context_messages,
        default_tokens_per_day=settings.llm_tokens_per_day,
        on_token_level=lambda t, used, limit: alerts.quota(t, Resource.LLM_TOKENS, used, limit),
    )
    waiters = Waiters()
    runner = JobRunner(
        store,
        {KIND: job, **{kind: handler for kind, (handler, _) in more_jobs.items()}},
        clock,
        workers=settings.job_workers,
        per_project=settings.job_workers_per_project,
        lease_s=settings.job_lease_s,
        max_attempts=settings.job_max_attempts,
        poll_interval_s=settings.job_poll_interval_s,
        on_done=waiters.notify,
    )
    conversations = ConversationService(
        store,
        memories,
        clock,
        infer_uses_model=inferring is not verbatim,
        ledger=store,
        default_tokens_per_day=settings.llm_tokens_per_day,
        on_stored=runner.wake,
    )
    kinds = {
        KIND: KindScopes(read=Scope.MEMORY_READ, manage=Scope.MEMORY_ADD),
        **{kind: scopes for kind, (_, scopes) in more_jobs.items()},
    }
    return conversations, OperationService(store, kinds, waiters), runner


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


# --- the wire: the call pipeline and the gRPC server ------------------------------------


def _pipeline(
    settings: Settings,
    authenticator: Authenticator,
    domain: _Services,
    limits: _Limits,
    metrics: Metrics,
    clock: Clock,
) -> Pipeline:
    admission = RateLimitAdmission(
        limits.limiter,
        domain.call_projects,
        key_limit=Limit(settings.key_requests_per_second, settings.key_burst),
        project_limit=Limit(settings.project_requests_per_second, settings.project_burst),
        ceiling=Limit(domain.ceilings.requests_per_second, domain.ceilings.burst),
        on_refused=domain.alerts.rate_limited,
    )
    observers: list[CallObserver] = [metrics, CallLogger()]
    return Pipeline(
        authenticator,
        admission=admission,
        observers=observers,
        costs=COSTS,
        stream_costs=STREAM_COSTS,
        usage=UsageRecorder(limits.meter),
        limits=RequestLimits(
            default=settings.max_request_bytes,
            per_method={
                "/memoryd.v1.MemoryService/BatchCreateMemories": settings.max_batch_request_bytes,
                "/memoryd.v1.MemoryService/AddMessages": settings.max_batch_request_bytes,
                # a webhook is a URL, a filter and a few words
                **dict.fromkeys(
                    WEBHOOK_METHODS, min(WEBHOOK_REQUEST_BYTES, settings.max_request_bytes)
                ),
            },
        ),
        stream_idle_timeout_s=settings.stream_idle_timeout_s,
        clock=clock,
    )


def _server(
    stack: AsyncExitStack,
    settings: Settings,
    pipeline: Pipeline,
    domain: _Services,
    idempotency: Idempotency,
    health: Health,
    clock: Clock,
    tracer_provider: Any,
) -> aio.Server:
    server = new_server(settings, _tracing(stack, settings, tracer_provider))
    # The pipeline (request id, auth, limits, errors, usage, metrics) wraps
    # every method of memoryd's services; health and reflection stay open.
    pipeline.register(
        memory_pb2_grpc.add_MemoryServiceServicer_to_server,
        MemoryServicer(
            domain.memories,
            idempotency,
            domain.conversations,
            domain.describe[KIND],
            domain.watch,
            ExportEndpoints(domain.exports, ExportView(domain.exports)),
            domain.erasure,
        ),
        server,
    )
    pipeline.register(
        knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server,
        KnowledgeServicer(domain.knowledge, domain.describe[INGEST]),
        server,
    )
    pipeline.register(
        operations_add_to_server,
        OperationsServicer(domain.operations, domain.describe, clock),
        server,
    )
    pipeline.register(
        keys_pb2_grpc.add_KeyServiceServicer_to_server, KeyServicer(domain.keys, clock), server
    )
    pipeline.register(
        admin_pb2_grpc.add_AdminServiceServicer_to_server,
        AdminServicer(
            domain.projects,
            domain.auditor,
            domain.usage,
            domain.prompts,
            domain.legal_holds,
            domain.encryption_keys,
        ),
        server,
    )
    pipeline.register(
        webhooks_pb2_grpc.add_WebhookServiceServicer_to_server,
        WebhookServicer(domain.webhooks),
        server,
    )
    add_open_services(server, health)
    return server


def _mcp_endpoint(
    stack: AsyncExitStack, settings: Settings, server: aio.Server, authenticator: Authenticator
) -> McpEndpoint | None:
    """The MCP endpoint, when `mcp_port` is set: its tools call this server
    over a private socket, so they run the gRPC pipeline (endpoint.py)."""
    if settings.mcp_port_number is None:
        return None
    # Imported here: the MCP SDK takes ~0.5 s to import, a third of a
    # server's start, and the endpoint is off unless configured.
    from memoryd.api.mcp.endpoint import GrpcSideChannel, McpEndpoint, Tls
    from memoryd.api.mcp.knowledge import knowledge_tools
    from memoryd.api.mcp.tools import memory_tools

    side = GrpcSideChannel()
    _on_close(stack, side.close)
    side.add_to(server)
    tools = (*memory_tools(settings.mcp_add_messages_wait_s), *knowledge_tools())
    endpoint = McpEndpoint(
        authenticator.authenticate,
        side,
        tools,
        host=settings.mcp_host,
        port=settings.mcp_port_number,
        max_request_bytes=settings.max_batch_request_bytes,
        tls=Tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        if settings.tls_enabled
        else None,
    )
    _on_close(stack, lambda: endpoint.stop(0))
    return endpoint


def _tracing(stack: AsyncExitStack, settings: Settings, tracer_provider: Any) -> list[Any]:
    if tracer_provider is None and settings.otel_tracing:
        tracer_provider = tracing.tracer_provider()
        _on_close(stack, tracer_provider.shutdown)
    if tracer_provider is None:
        return []
    # an interceptor runs before the handlers, so a span covers the whole pipeline
    return [tracing.server_interceptor(tracer_provider)]


def _metrics_endpoint(
    stack: AsyncExitStack, settings: Settings, metrics: Metrics, counters: Readers
) -> None:
    metrics.add_collector(CallbackCounters(counters))
    if settings.metrics_port:
        metrics.serve(settings.metrics_host, settings.metrics_port)
        _on_close(stack, metrics.stop)


def _health_checks(settings: Settings, store: SqlControlStore, vectors: VectorStore) -> list[Check]:
    if not _uses_data_dir(settings):
        return store_checks(store, vectors)
    floor = settings.min_free_bytes
    return store_checks(store, vectors, lambda: check_free_space(settings.data_dir, floor))


# --- the first organization, background work, closing ------------------------------------


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


def _start_sweeper(
    stack: AsyncExitStack, what: str, sweep: Callable[[], Awaitable[int]], interval_s: float
) -> None:
    task = asyncio.get_running_loop().create_task(_sweeper(what, sweep, interval_s))

    async def cancel() -> None:
        task.cancel()
        await asyncio.wait([task], timeout=5.0)

    _on_close(stack, cancel)


async def _sweeper(what: str, sweep: Callable[[], Awaitable[int]], interval_s: float) -> None:
    """Removes `what` in the background (expired memories and request ids are
    invisible already)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            removed = await sweep()
            if removed:
                log.info("swept %d %s", removed, what)
        except DomainError as err:  # a full or hung disk: said, not a traceback
            log.warning("sweep of %s failed: %s", what, err)
        except Exception:
            log.exception("sweep of %s failed", what)


def _start_jobs(
    stack: AsyncExitStack,
    runner: JobRunner,
    store: SqlControlStore,
    settings: Settings,
    clock: Clock,
) -> None:
    """The job runner of this process, and the sweep of finished operations
    past their retention. Both stop before the stores close."""
    runner.start()
    _on_close(stack, runner.stop)
    retention = timedelta(hours=settings.operation_retention_hours)

    async def sweep() -> int:
        return await store.sweep_operations(clock.now() - retention, 1000)

    _start_sweeper(stack, "finished operations", sweep, settings.sweep_interval_s)


def _start_export_sweep(
    stack: AsyncExitStack, files: LocalExportFiles, settings: Settings, clock: Clock
) -> None:
    """Deletes export files past their retention."""
    retention = timedelta(hours=settings.export_retention_hours)

    async def sweep() -> int:
        return await asyncio.to_thread(files.sweep, clock.now() - retention)

    _start_sweeper(stack, "expired export files", sweep, settings.sweep_interval_s)


def _start_watching(
    stack: AsyncExitStack, hub: WatchHub, log: WatchLog, settings: Settings, clock: Clock
) -> None:
    """The watchers' poll of the change log (changes of other replicas),
    and the trim of events past their retention."""
    hub.start()
    _on_close(stack, hub.close)
    retention = timedelta(hours=settings.change_retention_hours)

    async def trim() -> int:
        return await log.trim(clock.now() - retention)

    _start_sweeper(stack, "change events", trim, settings.sweep_interval_s)


def _start_webhooks(
    stack: AsyncExitStack,
    domain: _Services,
    store: SqlControlStore,
    settings: Settings,
    clock: Clock,
) -> None:
    """The webhook fan-out and senders of this process (stopped before the
    outbound client and the stores close), and the sweep of finished
    deliveries past their retention."""
    _on_close(stack, domain.webhook_sender.close)
    _on_close(stack, domain.alerts.close)
    domain.webhook_runner.start()
    _on_close(stack, domain.webhook_runner.stop)
    retention = timedelta(hours=settings.webhook_delivery_retention_hours)

    async def sweep() -> int:
        return await store.sweep_deliveries(clock.now() - retention, 1000)

    _start_sweeper(stack, "finished webhook deliveries", sweep, settings.sweep_interval_s)


def _on_close(stack: AsyncExitStack, close: Callable[[], object]) -> None:
    """Runs `close` (sync or async) when `stack` unwinds. A failure is logged,
    not raised: the other resources still close, and a start-up error keeps
    its own message."""

    async def run() -> None:
        try:
            result = close()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("error while closing")

    stack.push_async_callback(run)
