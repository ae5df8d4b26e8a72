"""Prometheus metrics for the gateway (per hop) and for each replica (per endpoint).

Each process gets its own registry and, when `metrics=True` on the gateway spec, its own scrape port
(chosen by the parent and shown in `status()`); the HTTP gateway also serves `/metrics`. Names:

* gateway: `orchestra_gateway_requests_total`, `orchestra_gateway_errors_total`,
  `orchestra_gateway_inflight`, `orchestra_gateway_hop_seconds` — labelled by executor and endpoint.
* replica: `orchestra_executor_requests_total`, `orchestra_executor_errors_total`,
  `orchestra_executor_docs_total`, `orchestra_executor_inflight`, `orchestra_executor_seconds` —
  labelled by executor and endpoint.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExecutorMetrics", "GatewayMetrics", "serve_metrics"]


class GatewayMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ["executor", "endpoint"]
        self.requests = Counter("orchestra_gateway_requests", "Requests sent to an executor", labels,
                                registry=self.registry)
        self.errors = Counter("orchestra_gateway_errors", "Hops that failed", labels, registry=self.registry)
        self.inflight = Gauge("orchestra_gateway_inflight", "Requests in flight to an executor", ["executor"],
                              registry=self.registry)
        self.seconds = Histogram("orchestra_gateway_hop_seconds", "Time of one hop, retries included", labels,
                                 registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


class ExecutorMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ["executor", "endpoint"]
        self.requests = Counter("orchestra_executor_requests", "Requests handled", labels, registry=self.registry)
        self.errors = Counter("orchestra_executor_errors", "Requests whose handler raised", labels,
                              registry=self.registry)
        self.docs = Counter("orchestra_executor_docs", "Documents processed", labels, registry=self.registry)
        self.inflight = Gauge("orchestra_executor_inflight", "Requests being handled", ["executor"],
                              registry=self.registry)
        self.seconds = Histogram("orchestra_executor_seconds", "Handler time", labels, registry=self.registry)


def serve_metrics(registry: Any, host: str, port: int) -> None:
    """Serve a registry on its own port from a daemon thread (prometheus-client's own server)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=registry)
