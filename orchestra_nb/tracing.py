"""OpenTelemetry tracing, the `tracing` extra: one span per request at the gateway, one per hop, one per
handler call in each replica, exported over OTLP/gRPC.

Decisions:

* **One `Tracing` object per process, no global state.** Each gateway and replica process builds its own
  `TracerProvider` (service name `<flow>/gateway`, `<flow>/<executor>/<replica>`) and never installs it as
  OpenTelemetry's global provider: importing or configuring orchestra-nb must not change what a user's
  own instrumentation does (the same rule as for signals and logging).
* **W3C trace context travels in the request header.** Between the gateway and the replicas there is no
  gRPC metadata on the local stream hop, so the `traceparent`/`tracestate` pair rides in the `Header`
  (a string map) and is read back with the standard propagator; at the front door the client's own
  `traceparent` (gRPC metadata or HTTP header) becomes the parent, so a caller's trace continues through
  the Flow.
* **OTLP/gRPC, batched.** Spans leave in a background thread (`BatchSpanProcessor`); `shutdown()` flushes
  them when the process stops. The endpoint is the `traces_endpoint` given, else the standard
  `OTEL_EXPORTER_OTLP_ENDPOINT`, else the exporter's default (localhost:4317). Plain-text gRPC unless
  the endpoint says `https://`: a collector beside a notebook rarely has a certificate.
* **Lazy and optional.** Nothing here imports OpenTelemetry until a `Tracing` is built; without the
  packages the error names the `pip install` to run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from orchestra_nb.errors import MissingExtraError

__all__ = ["INSTALL", "Tracing"]

INSTALL = "pip install 'orchestra-nb[tracing]'  (opentelemetry-sdk and opentelemetry-exporter-otlp-proto-grpc)"

_KINDS = ("internal", "server", "client")


class Tracing:
    """Spans for one process, exported to an OTLP collector (or to `exporter`, e.g. in tests)."""

    def __init__(self, service_name: str, endpoint: str | None = None, *, exporter: Any = None) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise MissingExtraError(f"tracing=True needs OpenTelemetry ({exc}); {INSTALL}") from None
        if exporter is None:
            exporter = _otlp_exporter(endpoint)
        self.service_name = service_name
        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self._provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
        self._tracer = self._provider.get_tracer("orchestra_nb")
        self._propagator = TraceContextTextMapPropagator()

    @contextlib.contextmanager
    def span(self, name: str, carrier: Mapping[str, str] | None = None, *, kind: str = "internal",
             **attributes: str | int | float | bool) -> Iterator[Any]:
        """A span named `name`, the child of the trace context in `carrier` (if any) or of the current
        span; an exception leaving the block is recorded on it and re-raised."""
        from opentelemetry.trace import SpanKind

        if kind not in _KINDS:
            raise ValueError(f"span kind must be one of {_KINDS}, got {kind!r}")
        context = self._propagator.extract(dict(carrier)) if carrier else None
        with self._tracer.start_as_current_span(name, context=context, kind=getattr(SpanKind, kind.upper()),
                                                attributes=attributes) as span:
            yield span

    def inject(self, carrier: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
        """Write the current span's trace context (`traceparent`, `tracestate`) into `carrier`."""
        carrier = {} if carrier is None else carrier
        self._propagator.inject(carrier)
        return carrier

    @staticmethod
    def error(span: Any, exc_type: str, message: str) -> None:
        """Mark `span` failed with a handler error that was answered rather than raised."""
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, f"{exc_type}: {message}"))
        span.set_attribute("orchestra.error.type", exc_type)

    def shutdown(self) -> None:
        """Export what is still queued and stop; call once when the process stops."""
        self._provider.shutdown()


def _otlp_exporter(endpoint: str | None) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise MissingExtraError(f"tracing=True needs the OTLP exporter ({exc}); {INSTALL}") from None
    if endpoint is None:
        return OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317
    return OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
