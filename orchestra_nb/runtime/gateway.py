"""Inside the gateway process: the gRPC front door, the HTTP front door, and the router between them.

Both front doors run on one event loop. The gRPC front door speaks the same `Call` as an executor, so a
`Client` talks to a Deployment and a Flow alike. With a token set (always when exposed), every gRPC call
must carry `authorization: Bearer <token>` metadata; it is compared in constant time before anything of
the request is looked at (the payload is parsed as a protobuf message by then, never decoded or run).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from orchestra_nb._version import __version__
from orchestra_nb.logs import get_logger
from orchestra_nb.runtime.child import Status, install_stop_handler, on_control
from orchestra_nb.runtime.topology import Router
from orchestra_nb.runtime.worker import STATUS_OK, orchestra_server
from orchestra_nb.spec.models import FlowSpec
from orchestra_nb.wire._generated.orchestra_pb2 import InfoRequest, InfoResponse
from orchestra_nb.wire.frame import Frame

__all__ = ["Gateway", "run_gateway"]

log = get_logger("gateway")


class Gateway:
    """State of the gateway process, shared by both front doors."""

    def __init__(self, spec: FlowSpec, addresses: dict[str, list[list[str]]]) -> None:
        self.spec = spec
        self.router = Router(spec, addresses)
        self.executor_infos: dict[str, dict[str, Any]] = {}
        self.started = time.time()
        self.requests = 0
        self.token: str | None = spec.gateway.token
        self.metrics_port: int | None = None
        self.tracing: Any = None  # orchestra_nb.tracing.Tracing with tracing=True
        self._admission = asyncio.Semaphore(spec.gateway.prefetch) if spec.gateway.prefetch else None

    async def control(self, message: dict[str, Any]) -> None:
        """Messages from the parent: `set_token` turns auth on (or off with None); `set_addresses`
        replaces an executor's replica addresses (scaling, rolling reloads), draining removed ones."""
        cmd = message.get("cmd")
        if cmd == "set_token":
            token = message.get("token")
            self.token = token if isinstance(token, str) and token else None
            log.info("token auth %s", "on" if self.token else "off")
        elif cmd == "set_addresses":
            await self.router.set_addresses(message["executor"], message["addresses"])

    async def authorize(self, context: Any) -> None:
        """With a token set, refuse a call without it (in constant time) before looking at anything else.

        Checked in the handler rather than by a server interceptor: grpc.aio interceptors cost every
        call, token or not. Health checks are a separate service and stay open."""
        token = self.token
        if not token or context is None:
            return
        given = b""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value if isinstance(value, bytes) else value.encode()
        if given[:7].lower() == b"bearer ":
            given = given[7:]
        if not hmac.compare_digest(given, token.encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "a valid token is required: send metadata ('authorization', 'Bearer <token>')")

    async def call(self, request: Frame, context: Any) -> Frame:
        await self.authorize(context)
        self.requests += 1
        if self.tracing is None:
            return await self._admit(request)
        # the caller's trace continues here: the Header's map, else gRPC metadata
        carrier = dict(request.header.trace)
        if not carrier and context is not None:
            carrier = {k: v for k, v in context.invocation_metadata() or () if k in ("traceparent", "tracestate")}
        endpoint = request.header.endpoint
        with self.tracing.span(endpoint, carrier, kind="server", endpoint=endpoint) as span:
            reply = await self._admit(request)
            if reply.header.status != STATUS_OK:
                self.tracing.error(span, reply.header.error.type, reply.header.error.message)
            return reply

    async def _admit(self, request: Frame) -> Frame:
        if self._admission is None:
            return await self.router.route(request)
        async with self._admission:  # back-pressure: at most `prefetch` requests in the graph at once
            return await self.router.route(request)

    async def info(self, request: InfoRequest, context: Any) -> InfoResponse:
        await self.authorize(context)
        return InfoResponse(info=json.dumps(await self.status()).encode())

    async def ready(self) -> dict[str, bool]:
        infos = await self.router.executor_info(timeout=1.0)
        return {name: all(r["state"] == "ready" for r in reps) for name, reps in infos.items()}

    async def status(self) -> dict[str, Any]:
        infos = await self.router.executor_info(timeout=1.0)
        for reps in infos.values():
            for rep in reps:
                if "endpoints" in rep:
                    rep["endpoints"] = {ep: {"input": e["input"], "output": e["output"]}
                                        for ep, e in rep["endpoints"].items()}
        return {
            "name": self.spec.name, "version": __version__, "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3), "requests": self.requests,
            "decoded_payloads": self.router.decoded, "metrics_port": self.metrics_port,
            "protocols": self.spec.gateway.protocol,
            "topology": {n: {"needs": node.needs, "floating": n in self.router.floating,
                             "shards": len(node.shards), "replicas": node.spec.replicas}
                         for n, node in self.router.nodes.items()},
            "executors": infos,
        }


@contextlib.contextmanager
def _no_signal_capture() -> Iterator[None]:
    yield


async def run_gateway(config: dict[str, Any], status: Status) -> None:
    spec: FlowSpec = config["spec"]
    stop = asyncio.Event()
    install_stop_handler(stop)
    gateway = Gateway(spec, config["addresses"])
    gw = spec.gateway
    host = config.get("host", gw.host)
    ports: dict[str, int] = config["ports"]
    deadline = time.monotonic() + gw.timeout_ready
    on_control(gateway.control, status)
    if config.get("metrics_port"):
        from orchestra_nb.runtime.metrics import GatewayMetrics, serve_metrics

        gateway.router.metrics = GatewayMetrics()
        serve_metrics(gateway.router.metrics.registry, host, config["metrics_port"])
        gateway.metrics_port = config["metrics_port"]
    if config.get("tracing"):
        from orchestra_nb.tracing import Tracing

        gateway.tracing = gateway.router.tracing = Tracing(config["tracing"]["service"],
                                                           config["tracing"]["endpoint"])
    grpc_server = None
    if "grpc" in gw.protocol:
        grpc_server, health_servicer = orchestra_server(gateway.call, gateway.info, gw.max_message_size)
        if gw.ssl_certfile and gw.ssl_keyfile:
            with open(gw.ssl_keyfile, "rb") as key, open(gw.ssl_certfile, "rb") as cert:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            grpc_server.add_secure_port(f"{host}:{ports['grpc']}", credentials)
        else:
            grpc_server.add_insecure_port(f"{host}:{ports['grpc']}")
        await grpc_server.start()
    status.send("phase", phase="serving", detail="waiting for executors")
    # the typed HTTP routes need every executor's schemas: wait until each answers Info
    waiting = asyncio.ensure_future(gateway.router.wait_info(deadline))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():  # stopped while starting (an executor failed): leave at once
        waiting.cancel()
        await gateway.router.close()
        return
    stopping.cancel()
    gateway.executor_infos = waiting.result()
    gateway.router.set_endpoints(gateway.executor_infos)
    http_server = None
    http_task = None
    if "http" in gw.protocol:
        import uvicorn

        from orchestra_nb.runtime.http import build_app

        app = build_app(gateway)
        uv_config = uvicorn.Config(app, host=host, port=ports["http"], log_level="warning", lifespan="off",
                                   access_log=False, ssl_certfile=gw.ssl_certfile, ssl_keyfile=gw.ssl_keyfile,
                                   timeout_graceful_shutdown=2)
        http_server = uvicorn.Server(uv_config)
        http_server.capture_signals = _no_signal_capture  # type: ignore[method-assign]
        http_task = asyncio.ensure_future(http_server.serve())
        while not http_server.started:
            if http_task.done():
                http_task.result()
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.005)
    if grpc_server is not None:
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("gateway ready: %s", ", ".join(f"{p} on {host}:{ports[p]}" for p in gw.protocol))
    status.send("ready", ports=ports, pid=os.getpid())
    await stop.wait()
    if http_server is not None and http_task is not None:
        http_server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(http_task, 5)
    if grpc_server is not None:
        await grpc_server.stop(grace=1.0)
    await gateway.router.close()
    if gateway.tracing is not None:
        gateway.tracing.shutdown()  # export what is queued
    status.send("stopped")
