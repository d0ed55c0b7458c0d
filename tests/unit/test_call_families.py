"""The per-call metric families, counted in plain attributes and exported at
scrape time: the same names, labels and bucket rules as prometheus-client's
own Counter and Histogram."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from memoryd.api.call import CallState
from memoryd.api.observe import Metrics
from memoryd.domain.tenancy import KeyKind, Principal

_CREATE = "/memoryd.v1.MemoryService/CreateMemory"
_P = Principal("key_1", KeyKind.DATA, "org_1", frozenset(), "prj_1", "env_1")


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_calls_are_counted_by_method_and_code_and_timed_by_method() -> None:
    metrics = Metrics()
    ok = CallState(_CREATE, "r", "p", principal=_P, trailers=(("x-ratelimit-limit", "9"),))
    failed = CallState(_CREATE, "r", "p", code="INVALID_ARGUMENT")
    for duration in (0.0005, 0.0006, 30.0):  # on a bound, just past it, past the last
        metrics.call_finished(ok, duration)
    metrics.call_finished(failed, 0.002)
    s = _samples(metrics)
    labels = (("method", "CreateMemory"), ("service", "MemoryService"))
    assert s[("memoryd_requests_total", (("code", "OK"), *labels))] == 3
    assert s[("memoryd_requests_total", (("code", "INVALID_ARGUMENT"), *labels))] == 1

    def bucket(le: str) -> float:
        return s[("memoryd_request_duration_seconds_bucket", (("le", le), *labels))]

    assert bucket("0.0005") == 1  # le: a duration on the bound is in its bucket
    assert bucket("0.001") == 2
    assert bucket("0.0025") == 3
    assert bucket("10.0") == 3
    assert bucket("+Inf") == 4
    assert s[("memoryd_request_duration_seconds_count", labels)] == 4
    assert abs(s[("memoryd_request_duration_seconds_sum", labels)] - 30.0031) < 1e-9
    assert s[("memoryd_rate_limit_decisions_total", (("decision", "allowed"),))] == 3


def test_rate_limit_refusals_are_counted_and_every_family_is_always_exported() -> None:
    metrics = Metrics()
    s = _samples(metrics)
    assert s[("memoryd_rate_limit_decisions_total", (("decision", "allowed"),))] == 0
    assert s[("memoryd_rate_limit_decisions_total", (("decision", "denied"),))] == 0
    refused = CallState(_CREATE, "r", "p", principal=_P, code="RESOURCE_EXHAUSTED")
    refused.reason = "RATE_LIMITED"
    metrics.call_finished(refused, 0.001)
    s = _samples(metrics)
    assert s[("memoryd_rate_limit_decisions_total", (("decision", "denied"),))] == 1
    assert s[("memoryd_rate_limit_decisions_total", (("decision", "allowed"),))] == 0
