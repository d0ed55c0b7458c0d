"""What operators see: one structured log line per call, and Prometheus
metrics on a side HTTP port.

Log lines carry method, code, duration, request id, key id, project and
environment; never a secret nor memory content. Metrics have bounded label
sets: service, method, code, reason, backend, operation; no tenant labels.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from memoryd.api.call import CallState

call_log = logging.getLogger("memoryd.access")

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BUCKET_NAMES = (*(floatToGoString(b) for b in _LATENCY_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]


class CallLogger:
    """One JSON line per call (with the JSON log format) at INFO."""

    def call_finished(self, call: CallState, duration_s: float) -> None:
        if not call_log.isEnabledFor(logging.INFO):
            return
        p = call.principal
        call_log.info(
            "%s %s",
            call.method,
            call.code,
            extra={
                "fields": {
                    "method": call.method,
                    "code": call.code,
                    "duration_ms": round(duration_s * 1000, 3),
                    "request_id": call.request_id,
                    "peer": call.peer,
                    "key_id": p.key_id if p else "",
                    "project_id": p.project_id if p else "",
                    "environment_id": p.environment_id if p else "",
                    **({"reason": call.reason} if call.reason else {}),
                }
            },
        )


class _Latency:
    """One (service, method)'s latency histogram: a count per bucket of
    `_LATENCY_BUCKETS` and one past the last (+Inf), and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.sum = 0.0


class _Line:
    """One (method, code)'s count and its method's histogram."""

    __slots__ = ("count", "labels", "latency")

    def __init__(self, labels: tuple[str, str, str], latency: _Latency) -> None:
        self.labels = labels  # service, method, code
        self.latency = latency
        self.count = 0


class CallFamilies(Collector):
    """`memoryd_requests`, `memoryd_request_duration_seconds` and
    `memoryd_rate_limit_decisions`: counted in plain attributes on the event
    loop and turned into samples when scraped. prometheus-client's own
    metrics take a lock per increment, four per call; on a cheap call that
    was a measurable share (docs/performance.md). Only the loop writes; a
    scrape (another thread) copies each dict and list whole under the GIL,
    and a histogram's count is the sum of its buckets, so it is consistent
    (its sum may lag one call behind)."""

    def __init__(self) -> None:
        self._lines: dict[tuple[str, str], _Line] = {}  # (method, code)
        self._latency: dict[tuple[str, str], _Latency] = {}  # (service, method)
        self.allowed = 0
        self.denied = 0

    def count(self, call: CallState, duration_s: float) -> None:
        line = self._lines.get((call.method, call.code))
        if line is None:
            line = self._line(call.method, call.code)
        line.count += 1
        latency = line.latency
        latency.counts[bisect.bisect_left(_LATENCY_BUCKETS, duration_s)] += 1
        latency.sum += duration_s
        if call.reason == "RATE_LIMITED":
            self.denied += 1
        elif call.principal is not None and call.trailers:
            self.allowed += 1

    def _line(self, full_method: str, code: str) -> _Line:
        service, _, method = full_method.lstrip("/").rpartition("/")
        service = service.rsplit(".", 1)[-1]
        latency = self._latency.setdefault((service, method), _Latency())
        line = self._lines[(full_method, code)] = _Line((service, method, code), latency)
        return line

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "memoryd_requests",
            "gRPC calls by service, method and status code",
            labels=["service", "method", "code"],
        )
        for line in list(self._lines.values()):
            requests.add_metric(list(line.labels), line.count)
        yield requests
        latency = HistogramMetricFamily(
            "memoryd_request_duration_seconds", "gRPC call latency", labels=["service", "method"]
        )
        for (service, method), histogram in list(self._latency.items()):
            counts, total = list(histogram.counts), histogram.sum
            latency.add_metric(
                [service, method],
                list(zip(_BUCKET_NAMES, itertools.accumulate(counts), strict=True)),
                total,
            )
        yield latency
        decisions = CounterMetricFamily(
            "memoryd_rate_limit_decisions", "rate-limit decisions", labels=["decision"]
        )
        decisions.add_metric(["allowed"], self.allowed)
        decisions.add_metric(["denied"], self.denied)
        yield decisions


class Metrics:
    """The metric families of one server, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # requests, their latency and rate-limit decisions: counted per call
        self._calls = CallFamilies()
        r.register(self._calls)
        self.auth_failures = Counter(
            "memoryd_auth_failures", "refused authentications by reason", ["reason"], registry=r
        )
        self.backend_latency = Histogram(
            "memoryd_backend_duration_seconds",
            "latency of backend operations",
            ["backend", "operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_errors = Counter(
            "memoryd_backend_errors",
            "failed backend operations",
            ["backend", "operation"],
            registry=r,
        )
        self.environment_memories = Histogram(
            "memoryd_environment_memories",
            "memories per environment, observed when a write refreshes the quota count "
            "(a distribution, not per-tenant labels)",
            buckets=(10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000),
            registry=r,
        )
        self._server: Any = None

    def serve(self, host: str, port: int) -> None:
        self._server = start_http_server(port, addr=host, registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            thread.join(timeout=5)
            self._server = None

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def call_finished(self, call: CallState, duration_s: float) -> None:
        self._calls.count(call, duration_s)
        if call.code == "UNAUTHENTICATED":
            self.auth_failures.labels(call.reason or "UNKNOWN").inc()

    def timed(self, backend: str, target: Any) -> Any:
        """A proxy of `target` whose coroutine methods are timed."""
        return _Timed(self, backend, target)


class _Timed:
    def __init__(self, metrics: Metrics, backend: str, target: Any) -> None:
        self._metrics = metrics
        self._backend = backend
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr) or name.startswith("_"):
            return attr
        hist = self._metrics.backend_latency.labels(self._backend, name)
        errors = self._metrics.backend_errors.labels(self._backend, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if not isinstance(result, Awaitable):
                return result
            return _time(result, hist, errors)

        # found once per name: later look-ups find the attribute directly
        setattr(self, name, wrapper)
        return wrapper


async def _time(aw: Awaitable[Any], hist: Any, errors: Any) -> Any:
    started = time.perf_counter()
    try:
        return await aw
    except Exception:
        errors.inc()
        raise
    finally:
        hist.observe(time.perf_counter() - started)


COUNTERS: dict[str, str] = {
    "memoryd_key_cache_hits": "verified-key cache hits",
    "memoryd_key_cache_misses": "verified-key cache misses",
    "memoryd_key_cache_refreshes": "cached keys verified again ahead of their TTL",
    "memoryd_rate_limit_backend_failures": (
        "rate-limit checks that Redis failed (answered by the fallback or refused)"
    ),
    "memoryd_rate_limit_fallback_checks": (
        "rate-limit checks answered by the in-process limiter while Redis was down"
    ),
    "memoryd_rate_limit_backend_transitions": (
        "times the rate-limit backend (Redis) was marked down or up again"
    ),
    "memoryd_rate_limit_script_loads": (
        "times the rate-limit script was loaded into Redis again after NOSCRIPT"
    ),
    "memoryd_rate_limit_local_evictions": (
        "in-process rate-limit buckets dropped for room before they were full again "
        "(they restart with a full burst)"
    ),
    "memoryd_usage_flush_failures": "writes of usage counters to Redis that failed (retried)",
    "memoryd_usage_dropped_keys": (
        "usage counters dropped because too many were pending while Redis failed"
    ),
    "memoryd_revocation_publish_failures": (
        "key revocations that could not be published to the other replicas"
    ),
    "memoryd_revocation_reconnects": "times the key-revocation subscription was made again",
    "memoryd_operations_started": "operations this process took from the queue (attempts)",
    "memoryd_operations_succeeded": "operations this process ended SUCCEEDED",
    "memoryd_operations_failed": "operations this process ended FAILED",
    "memoryd_operations_cancelled": "operations this process ended CANCELLED",
    "memoryd_operations_retried": (
        "operations this process gave back to the queue for later (model or store unavailable)"
    ),
    "memoryd_operations_leases_lost": (
        "operations this process stopped because another worker took them over"
    ),
    "memoryd_watch_streams_started": "WatchMemories streams this process started",
    "memoryd_purges_held": "purges of deleted projects or environments skipped under a legal hold",
    "memoryd_watch_poll_failures": (
        "looks at the change log for other replicas' changes that failed (retried at the next)"
    ),
    "memoryd_webhook_attempts": "webhook delivery attempts this process made",
    "memoryd_webhook_succeeded": "webhook delivery attempts answered 2xx",
    "memoryd_webhook_attempts_failed": (
        "webhook delivery attempts not answered 2xx (refused, no answer, or another status)"
    ),
}
"""The counters other parts keep (name without `_total`: help text)."""


class CallbackCounters(Collector):
    """Every family of `COUNTERS`, read from `readers` at scrape time. A family
    without a reader (its part is not configured, e.g. no Redis) reads 0, so
    every family is always exported."""

    def __init__(self, readers: Mapping[str, Callable[[], float]]) -> None:
        unknown = readers.keys() - COUNTERS.keys()
        if unknown:
            raise ValueError(f"counters not in COUNTERS: {sorted(unknown)}")
        self._readers = readers

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, help_text in COUNTERS.items():
            read = self._readers.get(name)
            yield CounterMetricFamily(name, help_text, value=read() if read else 0)
