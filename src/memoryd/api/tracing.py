"""Optional OpenTelemetry tracing of every gRPC call (the `otel` extra).

Off unless `MEMORYD_OTEL_TRACING=true`; the exporter reads the standard
`OTEL_EXPORTER_OTLP_*` variables (endpoint, headers, TLS).
"""

from __future__ import annotations

from typing import Any

from memoryd import __version__
from memoryd.config import ConfigError


def tracer_provider() -> Any:
    """A TracerProvider exporting spans over OTLP/gRPC in batches."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as err:
        raise ConfigError(
            "MEMORYD_OTEL_TRACING: OpenTelemetry is not installed; pip install 'memoryd[otel]'"
        ) from err
    provider = TracerProvider(
        resource=Resource.create({"service.name": "memoryd", "service.version": __version__})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def server_interceptor(provider: Any) -> Any:
    """The instrumentation's grpc.aio server interceptor (a span per call)."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
