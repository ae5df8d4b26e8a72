"""OpenTelemetry tracing (issue 9, the `tracing` extra).

`Tracing` itself is tested here directly: trace context carried between two providers as it is between
two processes, errors recorded, nothing global changed, and real OTLP/gRPC export to a collector that
the test runs (a `TraceService` server on port 0, the outermost boundary). The end-to-end test through a
Flow skips until the gateway spec has a `tracing` field (wiring described in the issue-9 audit).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed")
pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                    reason="the tracing extra is not installed")

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestra_nb.errors import MissingExtraError
from orchestra_nb.tracing import Tracing
from tests.helpers import poll_for


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector on 127.0.0.1: keeps (service name, span) for every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((attrs.get("service.name", ""), s) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


def test_trace_context_crosses_a_process_boundary_in_a_header() -> None:
    gateway_spans, replica_spans = InMemorySpanExporter(), InMemorySpanExporter()
    gateway = Tracing("search/gateway", exporter=gateway_spans)
    replica = Tracing("search/encoder/0", exporter=replica_spans)
    with gateway.span("/search", kind="server", endpoint="/search"), \
            gateway.span("hop encoder", kind="client", executor="encoder"):
        header = dict(gateway.inject())  # what the Header's trace map would carry
    assert set(header) >= {"traceparent"}
    with replica.span("encoder /search", carrier=header, kind="server"):
        pass
    gateway.shutdown()
    replica.shutdown()
    (served,) = replica_spans.get_finished_spans()
    hop, request = gateway_spans.get_finished_spans()  # the inner span ends first
    assert served.context.trace_id == hop.context.trace_id == request.context.trace_id
    assert served.parent is not None and served.parent.span_id == hop.context.span_id
    assert hop.parent is not None and hop.parent.span_id == request.context.span_id and request.parent is None
    assert served.resource.attributes["service.name"] == "search/encoder/0"
    assert (request.kind.name, hop.kind.name, served.kind.name) == ("SERVER", "CLIENT", "SERVER")
    assert dict(hop.attributes or {}) == {"executor": "encoder"}


def test_errors_are_recorded_and_nothing_global_changes() -> None:
    from opentelemetry import trace

    provider_before = trace.get_tracer_provider()
    spans = InMemorySpanExporter()
    tracing = Tracing("t", exporter=spans)
    with pytest.raises(ValueError, match="bad"), tracing.span("raises"):
        raise ValueError("bad")
    with tracing.span("answered") as span:
        Tracing.error(span, "KeyError", "missing")
    with pytest.raises(ValueError, match="span kind must be one of"), tracing.span("x", kind="consumer"):
        pass
    tracing.shutdown()
    raised, answered = spans.get_finished_spans()
    assert raised.status.status_code.name == "ERROR" and raised.events[0].name == "exception"
    assert answered.status.status_code.name == "ERROR" and answered.status.description == "KeyError: missing"
    assert answered.attributes["orchestra.error.type"] == "KeyError"
    assert trace.get_tracer_provider() is provider_before


def test_spans_are_exported_over_otlp_grpc(collector: tuple[Collector, str]) -> None:
    servicer, address = collector
    tracing = Tracing("flow/gateway", address)
    with tracing.span("/index", kind="server", docs=3):
        pass
    tracing.shutdown()  # flushes the batch
    poll_for(lambda: servicer.spans, timeout=10, what="the span at the collector")
    ((service, span),) = servicer.spans
    assert (service, span.name) == ("flow/gateway", "/index")
    assert [(a.key, a.value.int_value) for a in span.attributes] == [("docs", 3)]


def test_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'orchestra-nb\[tracing\]'"):
        Tracing("x")


def test_importing_the_module_imports_no_opentelemetry() -> None:
    code = "import sys, orchestra_nb.tracing; print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_flow_request_is_one_trace_across_gateway_and_replicas(collector: tuple[Collector, str]) -> None:
    from orchestra_nb import Doc, Flow
    from orchestra_nb.spec.models import GatewaySpec
    from tests.executors import Tagger

    if "tracing" not in GatewaySpec.model_fields:
        pytest.skip("Flow(tracing=True) is not wired into the runtime yet (see the issue-9 audit patch)")
    servicer, address = collector
    with Flow(name="traced", tracing=True, traces_endpoint=address).add(uses=Tagger, name="a") \
            .add(uses=Tagger, name="b") as f:
        f.post("/x", [Doc(text="t")])
    # every process flushes its spans when it stops
    poll_for(lambda: {s for s, _ in servicer.spans} >= {"traced/gateway", "traced/a/0", "traced/b/0"},
             timeout=20, what="spans from the gateway and both replicas")
    spans = [(service, span) for service, span in servicer.spans if span.name != "/_dry_run"]
    assert len({span.trace_id for _, span in spans}) == 1, spans
    by_id = {span.span_id: (service, span) for service, span in spans}
    for service in ("traced/a/0", "traced/b/0"):
        (served,) = [span for s, span in spans if s == service]
        parent_service, hop = by_id[served.parent_span_id]
        assert parent_service == "traced/gateway" and hop.kind == hop.SPAN_KIND_CLIENT


def test_an_http_callers_traceparent_continues_through_the_flow(collector: tuple[Collector, str]) -> None:
    import httpx

    from orchestra_nb import Flow
    from tests.executors import Tagger

    servicer, address = collector
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with Flow(name="httptraced", protocol="http", tracing=True, traces_endpoint=address).add(uses=Tagger, name="a") as f:
        r = httpx.post(f"http://127.0.0.1:{f.ports['http']}/post", timeout=30,
                       json={"on": "/x", "docs": [{"text": "t"}]},
                       headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        assert r.status_code == 200
    poll_for(lambda: {s for s, _ in servicer.spans} >= {"httptraced/gateway", "httptraced/a/0"},
             timeout=20, what="spans from the gateway and the replica")
    spans = [span for service, span in servicer.spans if service.startswith("httptraced/")
             and span.name != "/_dry_run"]
    assert spans and {span.trace_id.hex() for span in spans} == {trace_id}
