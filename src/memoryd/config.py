"""Settings: the one place that reads the environment.

Every setting is a field of the frozen `Settings` dataclass, readable from an
environment variable `MEMORYD_<NAME>` and a command-line option `--<name>`.
Values are validated at start-up; a bad one raises `ConfigError` naming the
variable and saying what is expected.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting has a bad value. The message names the variable."""


def _setting(
    default: Any, help: str, *, choices: tuple[str, ...] = (), secret: bool = False
) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "secret": secret})


# Settings that must be above zero (the rest may be 0, meaning "off" or "default").
_POSITIVE = (
    "embedding_dimension",
    "max_message_bytes",
    "key_cache_size",
    "key_burst",
    "project_burst",
    "max_content_bytes",
    "max_metadata_bytes",
    "max_memories_per_environment",
    "embedding_threads",
    "embedding_batch_texts",
    "embedding_batch_chars",
    "embedding_queue_texts",
    "max_query_chars",
    "search_rrf_k",
    "search_candidates",
    "search_keyword_saturation",
    "key_requests_per_second",
    "project_requests_per_second",
    "sweep_interval_s",
    "redis_timeout_ms",
    "embedding_timeout_s",
    "storage_timeout_s",
    "rate_limit_failure_threshold",
    "rate_limit_max_probe_interval_s",
    "llm_timeout_s",
    "llm_candidates",
    "job_workers",
    "job_workers_per_project",
    "job_lease_s",
    "job_max_attempts",
    "job_poll_interval_s",
    "operation_retention_hours",
    "export_retention_hours",
    "export_max_memories",
    "knowledge_max_upload_bytes",
    "knowledge_fetch_timeout_s",
    "change_retention_hours",
    "watch_poll_interval_s",
    "watch_max_streams",
    "webhook_timeout_s",
    "webhook_max_age_hours",
    "webhook_retry_base_s",
    "webhook_retry_max_s",
    "webhook_workers",
    "webhook_workers_per_webhook",
    "webhook_workers_per_environment",
    "webhook_poll_interval_s",
    "webhook_max_per_environment",
    "webhook_delivery_retention_hours",
    "alert_rate_limited_s",
    "alert_quiet_s",
    "encryption_key_cache",
    "kms_timeout_s",
)


@dataclass(frozen=True)
class Settings:
    """Every knob of the server. See `memoryd serve --help`."""

    # --- network ---------------------------------------------------------------
    host: str = _setting("127.0.0.1", "Address to listen on (0.0.0.0 for all interfaces).")
    port: int = _setting(50051, "gRPC port (0 picks a free one).")
    grace_period_s: float = _setting(
        10.0, "On SIGTERM/SIGINT: seconds in-flight calls get to finish before they are cancelled."
    )
    shutdown_delay_s: float = _setting(
        2.0,
        "On SIGTERM/SIGINT: seconds health reports NOT_SERVING while calls are still served, "
        "so load balancers and probes stop sending new ones before the drain.",
    )
    max_message_bytes: int = _setting(16 * 1024 * 1024, "Largest request or response message.")
    max_concurrent_streams: int = _setting(256, "Concurrent HTTP/2 streams per connection.")
    # --- request pipeline: sizes and idle streams ---
    max_request_bytes: int = _setting(
        256 * 1024,
        "Largest request body of a method (and message of an ImportMemories stream), refused "
        "with INVALID_ARGUMENT before it is decoded. Must hold one memory of max_content_bytes "
        "plus max_metadata_bytes; the default leaves 5x room for a memory at the default quotas.",
    )
    max_batch_request_bytes: int = _setting(
        8 * 1024 * 1024,
        "Largest BatchCreateMemories request body (up to 1,000 memories), refused with "
        "INVALID_ARGUMENT before it is decoded; at most max_message_bytes.",
    )
    stream_idle_timeout_s: float = _setting(
        30.0,
        "Close an ImportMemories stream with DEADLINE_EXCEEDED (STREAM_IDLE_TIMEOUT) when no "
        "message arrives for this long; what was read before is stored.",
    )
    keepalive_time_s: float = _setting(30.0, "Send a keepalive ping after this much idle time.")
    keepalive_timeout_s: float = _setting(
        10.0, "Close a connection whose ping is not answered in time."
    )
    max_connection_age_s: float = _setting(
        0.0, "Close connections after this age so load balancers rebalance (0: never)."
    )
    max_connection_age_grace_s: float = _setting(
        30.0, "Time in-flight calls get after max_connection_age."
    )
    tls_cert: str = _setting("", "PEM server certificate chain; with tls_key enables TLS.")
    tls_key: str = _setting("", "PEM private key of tls_cert.", secret=True)
    tls_client_ca: str = _setting(
        "", "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."
    )

    # --- storage -----------------------------------------------------------------
    data_dir: str = _setting(
        "data", "Directory of the embedded stores (SQLite file, Qdrant Edge shard)."
    )
    database_url: str = _setting(
        "",
        "Control-plane database, SQLAlchemy URL: sqlite+aiosqlite:///path or "
        "postgresql+asyncpg://user:pass@host/db. Empty: SQLite in data_dir.",
        secret=True,
    )
    qdrant_url: str = _setting(
        "",
        "Qdrant server or cluster URL (http[s]://host:6333). "
        "Empty: embedded Qdrant Edge in data_dir.",
    )
    qdrant_api_key: str = _setting("", "API key of the Qdrant server.", secret=True)
    vector_sync_writes: bool = _setting(
        False,
        "Embedded Qdrant Edge: flush every write to disk before answering, so acknowledged "
        "writes survive a power loss too (about 20 ms per write). Without it they survive a "
        "crash of the process (kill -9), not of the machine.",
    )
    vector_search_threads: int = _setting(
        1,
        "Embedded Qdrant Edge: threads one search may spread over the store's segments (0: the "
        "engine's default, one per segment up to its pool). A search of a tenant's points is "
        "sub-millisecond work, so each extra thread costs more CPU in wake-ups than it saves; "
        "raise it only for tenants of hundreds of thousands of memories in a compacted store "
        "on a machine with idle cores.",
    )
    min_free_disk_mb: int = _setting(
        256,
        "Embedded stores: writes are refused (RESOURCE_EXHAUSTED, reason DISK_FULL) and health "
        "is NOT_SERVING while less than this many MiB are free on the data directory's file "
        "system; start-up fails below it. The engine's memory-mapped files die with SIGBUS "
        "on a full disk, so keep it above one write (max_message_bytes) plus SQLite's growth. "
        "0: no floor.",
    )
    storage_timeout_s: float = _setting(
        10.0,
        "A vector-store call that takes longer answers UNAVAILABLE (reason STORAGE_TIMEOUT); "
        "while one is stuck, further calls are refused at once and health is NOT_SERVING "
        "(liveness stays SERVING).",
    )
    vector_engine_process: bool = _setting(
        True,
        "Embedded Qdrant Edge: run the engine in a child process that owns the shard, so an "
        "engine call stuck on a hung disk cannot freeze the server (health and liveness keep "
        "answering). Off: the engine runs on a thread of the server (no child process; a hung "
        "disk then freezes the whole server).",
    )
    workers: int = _setting(
        1,
        "Server processes sharing the gRPC port (SO_REUSEPORT), one per core. 1: one process, "
        "as before. More: a parent supervises N workers (restarting one that dies) and, for "
        "the embedded store, hosts the Qdrant Edge engine that they share; needs "
        "MEMORYD_REDIS_URL (rate limits, usage and key revocation must hold across workers). "
        "Only the first worker serves the MCP and metrics ports.",
    )
    engine_socket_dir: str = _setting(
        "",
        "Set by `serve --workers N` for its workers, not by hand: the directory of the Unix "
        "sockets of the shared embedded engines (empty: this process runs its own).",
    )
    # --- encryption at rest ---
    encryption: bool = _setting(
        True,
        "Seal content at rest (memory text and revisions, conversation messages, document "
        "text, operation payloads, change events, webhook payloads, cached responses; not "
        "export files nor the upload spool) with a data key per environment (AES-256-GCM), "
        "wrapped by the organization's key-encryption key. Off: new content is written in "
        "clear; sealed content stays readable while its keys are.",
    )
    kek_file: str = _setting(
        "",
        "The local key-encryption key file (made with permissions 0600 on first start; the "
        "server refuses a file others can read). Back it up apart from the data: without it "
        "nothing sealed can be read. Empty: data_dir/kek.key.",
    )
    encryption_key_cache: int = _setting(
        10_000, "Unwrapped data keys kept in memory (one per environment in use)."
    )
    kms_endpoint_url: str = _setting(
        "",
        "AWS KMS endpoint for organizations whose key is 'aws-kms:<key>' (empty: the "
        "region's AWS endpoint). Credentials come from the usual AWS_* variables or role.",
    )
    kms_region: str = _setting("us-east-1", "AWS KMS region.")
    kms_timeout_s: float = _setting(5.0, "Timeout of one AWS KMS call.")
    redis_url: str = _setting(
        "",
        "Redis for rate limits, usage and key-revocation fan-out (redis://host:6379/0). "
        "Empty: in-process (one replica only).",
        secret=True,
    )
    redis_timeout_ms: float = _setting(
        250.0,
        "Timeout of one Redis rate-limit check. Covers Redis under load and a busy event loop "
        "(measured p99 28 ms, max 188 ms on 2 busy cores: scripts/redis_check_latency.py).",
    )
    rate_limit_failure_policy: str = _setting(
        "fail-open",
        "When Redis is unreachable: fail-open (limit locally) or fail-closed (UNAVAILABLE; "
        "org keys are still limited locally, so keys can be managed during an outage).",
        choices=("fail-open", "fail-closed"),
    )
    rate_limit_failure_threshold: int = _setting(
        3,
        "Consecutive failed Redis checks before Redis counts as down and the failure policy "
        "applies (checks failed together by one stall count once); a failed check below it "
        "is answered by the in-process limiter.",
    )
    rate_limit_max_probe_interval_s: float = _setting(
        1.0,
        "While Redis is down: longest wait between two attempts to reach it again (the wait "
        "doubles from 0.1 s up to this); Redis takes over again on the first success.",
    )
    project_cache_stale_s: float = _setting(
        300.0,
        "While the control-plane database is unreachable, memory calls keep using a project's "
        "last known settings if they were read at most this many seconds ago (0: never).",
    )

    # --- embeddings ------------------------------------------------------------------
    embedding_provider: str = _setting(
        "fastembed",
        "fastembed (local model), openai (any OpenAI-compatible /v1/embeddings), "
        "none (clients send vectors) or hashing (tests only).",
        choices=("fastembed", "openai", "none", "hashing"),
    )
    embedding_model_dir: str = _setting(
        "models/all-MiniLM-L6-v2", "Directory of the local model (made by `make models`)."
    )
    embedding_dimension: int = _setting(384, "Vector dimension (must match the model).")
    embedding_threads: int = _setting(
        2, "Threads of the local model for a batch of 3 texts or more (fewer run on one)."
    )
    embedding_cache_size: int = _setting(
        4096,
        "Search query vectors kept per server (LRU, about 3 KiB each), keyed by organization "
        "and exact query text, so a repeated query skips the model; 0 turns it off.",
    )
    embedding_timeout_s: float = _setting(10.0, "Timeout of one remote embedding call.")
    openai_base_url: str = _setting(
        "https://api.openai.com/v1", "Base URL of the embeddings endpoint."
    )
    openai_api_key: str = _setting("", "API key of the embeddings endpoint.", secret=True)
    openai_model: str = _setting("text-embedding-3-small", "Model name sent to the endpoint.")
    # fair share of the local model, and the bound of embedded free text
    embedding_batch_texts: int = _setting(
        64,
        "Local model: most texts in one model call. Calls are filled from the organizations "
        "waiting in turn, so one organization's large batch delays another's search by at "
        "most one model call.",
    )
    embedding_batch_chars: int = _setting(
        16384, "Local model: most characters in one model call (one longer text goes alone)."
    )
    embedding_queue_texts: int = _setting(
        4096,
        "Local model: most texts one organization may have waiting; more is refused with "
        "RESOURCE_EXHAUSTED (reason EMBEDDING_QUEUE_FULL) and a retry delay.",
    )
    max_query_chars: int = _setting(
        4096,
        "Longest SearchMemories query text, in characters (the model reads at most 512 word "
        "pieces of it anyway); longer is refused with INVALID_ARGUMENT.",
    )
    search_default_mode: str = _setting(
        "semantic",
        "How SearchMemories ranks when the request names no mode and gives a query text: "
        "semantic (embeddings), keyword (BM25) or hybrid (both, fused). With only a "
        "query_embedding it is always semantic.",
        choices=("semantic", "keyword", "hybrid"),
    )
    search_fusion: str = _setting(
        "dbsf",
        "How HYBRID fuses its semantic and keyword results: rrf (reciprocal rank fusion, "
        "weighted), dbsf (distribution-based score fusion, unweighted) or sum (semantic "
        "weight x cosine similarity + keyword weight x bm25 / (bm25 + saturation)).",
        choices=("rrf", "dbsf", "sum"),
    )
    search_rrf_k: int = _setting(
        60, "RRF's k: a result at rank r scores weight / (k + r); larger k flattens the ranks."
    )
    search_semantic_weight: float = _setting(1.0, "RRF weight of HYBRID's semantic results.")
    search_keyword_weight: float = _setting(1.0, "RRF weight of HYBRID's keyword results.")
    search_keyword_saturation: float = _setting(
        3.0,
        "Fusion sum: the BM25 score at which the keyword part reaches half of its weight.",
    )
    search_candidates: int = _setting(
        100,
        "Candidates each part of a search hands on (each HYBRID leg, and the pool that "
        "recency and diversity re-rank); at least the request's top_k.",
    )

    bootstrap: bool = _setting(
        True,
        "On start with an empty control store, create an organization and print its owner key "
        "once. Set false on replicas (use `memoryd bootstrap` once instead).",
    )

    # --- auth ----------------------------------------------------------------------
    key_cache_ttl_s: float = _setting(
        30.0,
        "How long a verified key stays cached; bounds staleness if a revocation message is lost.",
    )
    key_cache_size: int = _setting(10_000, "Most verified keys cached.")
    auth_failures_per_minute: int = _setting(
        30, "Failed authentications allowed per (client address, key id) pair per minute."
    )

    # --- limits and quotas -----------------------------------------------------------
    key_requests_per_second: float = _setting(100.0, "Default sustained rate per API key.")
    key_burst: int = _setting(200, "Default burst per API key.")
    project_requests_per_second: float = _setting(500.0, "Default sustained rate per project.")
    project_burst: int = _setting(1000, "Default burst per project.")
    max_memories_per_environment: int = _setting(
        1_000_000, "Default quota of memories per environment."
    )
    max_content_bytes: int = _setting(
        32_768,
        "Bytes of one memory's content: the default and a hard limit "
        "(a project may set a lower quota, never a higher one).",
    )
    max_metadata_bytes: int = _setting(
        16_384,
        "Bytes of one memory's metadata as JSON: the default and a hard limit "
        "(a project may set a lower quota, never a higher one).",
    )
    max_requests_per_second_override: float = _setting(
        5000.0,
        "Highest rate (requests per second) an organization may set for a project or its keys "
        "(UpdateProject rate_limits; higher is refused). Never below the default rates.",
    )
    max_burst_override: int = _setting(
        10_000,
        "Highest burst an organization may set for a project or its keys. "
        "Never below the default bursts.",
    )
    max_memories_per_environment_override: int = _setting(
        10_000_000,
        "Highest quota of memories per environment an organization may set. "
        "Never below the default quota.",
    )
    sweep_interval_s: float = _setting(60.0, "Seconds between sweeps of expired memories.")

    # --- conversations (AddMessages) ---------------------------------------------------
    extractor: str = _setting(
        "verbatim",
        "How AddMessages with infer=true finds facts: verbatim (each user message, no model) "
        "or llm (an OpenAI-compatible chat completions endpoint).",
        choices=("verbatim", "llm"),
    )
    llm_base_url: str = _setting(
        "https://api.openai.com/v1", "Base URL of the chat completions endpoint (…/v1)."
    )
    llm_api_key: str = _setting("", "API key of the chat completions endpoint.", secret=True)
    llm_model: str = _setting("gpt-4o-mini", "Model name sent to the chat completions endpoint.")
    llm_timeout_s: float = _setting(30.0, "Timeout of one chat completions call.")
    llm_max_retries: int = _setting(
        3, "Retries of one model call after a 429, a 5xx, a timeout or malformed output."
    )
    llm_max_retry_after_s: float = _setting(
        30.0, "Longest Retry-After of a 429 the server waits for within one attempt."
    )
    llm_candidates: int = _setting(
        5, "Current memories (most similar, same tenant and end user) shown per fact."
    )
    llm_context_messages: int = _setting(
        10, "Earlier messages of the thread given to the extractor as context."
    )
    llm_tokens_per_day: int = _setting(
        0, "Default model tokens per project per UTC day for AddMessages (0: unlimited)."
    )
    job_workers: int = _setting(4, "Operations one server process runs at once.")
    job_workers_per_project: int = _setting(
        2, "Operations of one project running at once in one process (fairness)."
    )
    job_lease_s: float = _setting(
        30.0, "A running operation's lease; a crashed worker's job is taken over after it."
    )
    job_max_attempts: int = _setting(
        5, "Attempts of an operation (model unavailable, crash) before it fails."
    )
    job_poll_interval_s: float = _setting(
        1.0, "Seconds between looks for work queued by other replicas."
    )
    operation_retention_hours: float = _setting(
        24.0 * 7, "Finished operations (and their stored messages) are kept this long."
    )
    deletion_retention_days: int = _setting(
        30,
        "Days a deleted project or environment stays restorable (Undelete) before it is "
        "erased; 0: erased at once. A project's settings.deletion_retention_days overrides it.",
    )
    # --- knowledge (KnowledgeService) ------------------------------------------------
    knowledge_max_upload_bytes: int = _setting(
        50 * 1024 * 1024,
        "The largest document accepted (an upload, a text, or a URL's body), in bytes.",
    )
    knowledge_max_documents_per_environment: int = _setting(
        10_000, "Documents an environment may hold (0: no limit)."
    )
    knowledge_max_bytes_per_environment: int = _setting(
        1024**3, "Bytes of source documents an environment may hold (0: no limit)."
    )
    knowledge_chunk_tokens: int = _setting(
        0,
        "Tokens per chunk (the embedding model's own); 0: the model's input limit "
        "(126 for all-MiniLM-L6-v2).",
    )
    knowledge_chunk_overlap: int = _setting(
        24, "Tokens two consecutive chunks of a document share."
    )
    knowledge_fetch_timeout_s: float = _setting(
        30.0, "The time a URL ingest may take to download its document."
    )
    export_retention_hours: float = _setting(
        72.0,
        "An export's file (CreateExport) can be downloaded this long after it is complete, "
        "then it is deleted (its operation stays until the operation retention).",
    )
    export_max_memories: int = _setting(
        1_000_000, "At most this many memories in one export; a larger one fails (narrow it)."
    )

    # --- change events (WatchMemories) ------------------------------------------------
    change_retention_hours: float = _setting(
        24.0 * 7,
        "Change events are kept this long; a WatchMemories resume_token or start_time older "
        "than that answers OUT_OF_RANGE (the client re-reads the state, then watches from now).",
    )
    watch_poll_interval_s: float = _setting(
        0.2,
        "Seconds between looks at the change log for changes made by other replicas (this "
        "process's own changes wake its watchers at once).",
    )
    watch_max_streams: int = _setting(
        1000, "WatchMemories streams one server process serves at once (more: RESOURCE_EXHAUSTED)."
    )
    # --- webhooks and outbound HTTP ------------------------------------------------------
    outbound_allow_networks: str = _setting(
        "",
        "Comma-separated networks (CIDR) the server may call although they are private, "
        "loopback, link-local or metadata addresses (webhook URLs are refused or not sent "
        "otherwise), e.g. 10.20.0.0/16. A listed network is allowed whole: never list "
        "169.254.0.0/16. Empty: public addresses only.",
    )
    webhook_timeout_s: float = _setting(
        10.0,
        "Time one webhook attempt may take, DNS, connection and answer included; "
        "longer is a failed attempt.",
    )
    webhook_max_age_hours: float = _setting(
        24.0,
        "A webhook delivery is retried (exponential backoff, full jitter) until this long "
        "after it was queued or redelivered, then it FAILED.",
    )
    webhook_retry_base_s: float = _setting(
        5.0,
        "Backoff of webhook retries: the n-th retry waits a random time up to "
        "base * 2^(n-1) seconds, at most webhook_retry_max_s.",
    )
    webhook_retry_max_s: float = _setting(3600.0, "Longest wait between two webhook attempts.")
    webhook_disable_after_failures: int = _setting(
        20,
        "A webhook whose deliveries FAILED this many times in a row is disabled (audit event "
        "webhook.disabled; state DISABLED_BY_FAILURES) until it is enabled again. 0: never.",
    )
    webhook_workers: int = _setting(16, "Webhook attempts one server process makes at once.")
    webhook_workers_per_webhook: int = _setting(
        4,
        "Attempts to one webhook one server process makes at once (a slow endpoint holds "
        "at most this many senders).",
    )
    webhook_workers_per_environment: int = _setting(
        8,
        "Attempts to the webhooks of one environment one server process makes at once (a "
        "tenant's many slow endpoints hold at most this many senders).",
    )
    webhook_poll_interval_s: float = _setting(
        1.0, "Seconds between looks at the change log and for due webhook retries."
    )
    webhook_max_per_environment: int = _setting(
        25, "Most webhooks an environment may have (every event is matched against each)."
    )
    webhook_delivery_retention_hours: float = _setting(
        24.0 * 7, "Finished webhook deliveries (and their attempts) are kept this long."
    )

    # --- alerts (change events sent to webhooks that name them) ----------------------------
    alert_rearm_percent: float = _setting(
        5.0,
        "A quota alert (80% and 100% of an environment's memory quota) is raised once per "
        "crossing and armed again when the usage falls this many percentage points of the "
        "quota below its threshold (0 to 50).",
    )
    alert_rate_limited_s: float = _setting(
        60.0,
        "An environment whose calls the rate limiter refuses for this many seconds (no gap of "
        "alert_quiet_s between two refusals) raises one RATE_LIMITED alert.",
    )
    alert_quiet_s: float = _setting(
        120.0,
        "Seconds without a refused call that end an episode of rate limiting; the next "
        "episode may raise a new alert.",
    )

    # --- observability -------------------------------------------------------------
    log_level: str = _setting("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _setting(
        "json", "json (one object per line) or text.", choices=("json", "text")
    )
    audit_log: str = _setting(
        "", "Also append audit events as JSON lines to this file (for a SIEM)."
    )
    otel_tracing: bool = _setting(
        False,
        "Export OpenTelemetry traces of every call over OTLP/gRPC (endpoint and options from "
        "the standard OTEL_EXPORTER_OTLP_* variables). Needs: pip install 'memoryd[otel]'.",
    )
    metrics_port: int = _setting(0, "Prometheus metrics on this HTTP port (0: off).")
    metrics_host: str = _setting("127.0.0.1", "Address of the metrics endpoint.")

    # --- MCP (AI agents) -------------------------------------------------------------------
    mcp_port: str = _setting(
        "",
        "Port of the MCP endpoint for AI agents (streamable HTTP at /mcp, memoryd's API keys). "
        "Empty: off; 0 picks a free one.",
    )
    mcp_host: str = _setting("127.0.0.1", "Address of the MCP endpoint (0.0.0.0 for all).")
    mcp_add_messages_wait_s: float = _setting(
        5.0,
        "MCP add_messages: seconds to wait for the operation to finish before answering with "
        "its id and state (0: answer at once; at most 60).",
    )

    # --- derived -----------------------------------------------------------------------

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{Path(self.data_dir).resolve() / 'memoryd.db'}"

    @property
    def mcp_port_number(self) -> int | None:
        """The MCP endpoint's port (0: any free one), None when it is off."""
        return int(self.mcp_port) if self.mcp_port else None

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert)

    @property
    def min_free_bytes(self) -> int:
        """The free-space floor of the data dir's file system, in bytes."""
        return self.min_free_disk_mb * 1024 * 1024

    def redacted(self) -> dict[str, Any]:
        """The settings with secrets masked, for logs."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            out[f.name] = value
        return out

    # --- loading -------------------------------------------------------------------------

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Settings from `MEMORYD_*` variables, then `overrides` (CLI options).
        Raises ConfigError naming the first bad value."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            var = env_name(f.name)
            if var in env:
                values[f.name] = _parse(f, env[var], var)
        for name, raw in (overrides or {}).items():
            if raw is None:
                continue
            f = _FIELDS[name]
            values[name] = (
                _parse(f, raw, f"--{name.replace('_', '-')}") if isinstance(raw, str) else raw
            )
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{env_name(name)}: {why}")

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise bad(f.name, f"must be one of {', '.join(choices)}, not {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise bad(f.name, f"must be a finite number, got {value}")
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise bad(f.name, f"must not be negative, got {value}")
        if not 0 <= self.port <= 65535:
            raise bad("port", f"must be a port number 0..65535, got {self.port}")
        if self.metrics_port > 65535:
            raise bad("metrics_port", f"must be a port number 0..65535, got {self.metrics_port}")
        mcp = self.mcp_port
        if mcp and not (mcp.isascii() and mcp.isdigit() and int(mcp) <= 65535):
            raise bad("mcp_port", f"must be empty (off) or a port number 0..65535, got {mcp!r}")
        if self.deletion_retention_days > 3650:
            raise bad("deletion_retention_days", "must be at most 3650 days")
        if not 1 <= self.workers <= 64:
            raise bad("workers", f"must be 1..64, got {self.workers}")
        if self.workers > 1 and not self.redis_url:
            raise bad(
                "workers",
                "more than one worker needs MEMORYD_REDIS_URL: rate limits, usage and key "
                "revocation are per process without it",
            )
        if self.mcp_add_messages_wait_s > 60:
            raise bad("mcp_add_messages_wait_s", "must be at most 60 seconds")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise bad(name, "must be positive")
        self._validate_request_limits(bad)
        self._validate_tls(bad)
        self._validate_urls(bad)
        self._validate_webhooks(bad)

    def _validate_tls(self, bad: Any) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise bad(
                "tls_key" if self.tls_cert else "tls_cert", "tls_cert and tls_key go together"
            )
        if self.tls_client_ca and not self.tls_cert:
            raise bad("tls_client_ca", "mTLS needs TLS: set tls_cert and tls_key too")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise bad(name, f"no such file: {path}")

    def _validate_urls(self, bad: Any) -> None:
        url = self.database_url
        if url and not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise bad(
                "database_url",
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg://",
            )
        if self.qdrant_url and not self.qdrant_url.startswith(("http://", "https://")):
            raise bad("qdrant_url", "must start with http:// or https://")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise bad("redis_url", "must start with redis://, rediss:// or unix://")

    def _validate_webhooks(self, bad: Any) -> None:
        for part in (p.strip() for p in self.outbound_allow_networks.split(",")):
            try:
                if part:
                    ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise bad(
                    "outbound_allow_networks",
                    f"{part!r} is not a network: give CIDRs such as 10.0.0.0/8, comma-separated",
                ) from None
        if self.webhook_retry_max_s < self.webhook_retry_base_s:
            raise bad("webhook_retry_max_s", "must be at least webhook_retry_base_s")
        if self.alert_rearm_percent >= 50:
            raise bad("alert_rearm_percent", "must be below 50 (percentage points)")

    def _validate_request_limits(self, bad: Any) -> None:
        if self.stream_idle_timeout_s <= 0:
            raise bad("stream_idle_timeout_s", "must be positive")
        one_memory = self.max_content_bytes + self.max_metadata_bytes
        if self.max_request_bytes < one_memory:
            raise bad(
                "max_request_bytes",
                f"must be at least max_content_bytes + max_metadata_bytes ({one_memory}) so that "
                f"a memory of the largest allowed size fits, got {self.max_request_bytes}",
            )
        if not self.max_request_bytes <= self.max_batch_request_bytes <= self.max_message_bytes:
            raise bad(
                "max_batch_request_bytes",
                f"must be between max_request_bytes ({self.max_request_bytes}) and "
                f"max_message_bytes ({self.max_message_bytes}), got {self.max_batch_request_bytes}",
            )


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def env_name(field_name: str) -> str:
    return "MEMORYD_" + field_name.upper()


def setting_fields() -> list[dataclasses.Field[Any]]:
    """The settings, in declaration order (for `--help`)."""
    return list(dataclasses.fields(Settings))


def _parse(f: dataclasses.Field[Any], raw: str, where: str) -> Any:
    kind: type = type(f.default)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw.strip().replace("_", ""))
        if kind is float:
            return float(raw.strip())
    except ValueError:
        raise ConfigError(f"{where}: expected {kind.__name__}, got {raw!r}") from None
    return raw
