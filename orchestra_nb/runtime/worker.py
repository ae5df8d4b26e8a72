"""Inside a replica process: build the executor and serve it over gRPC.

`__init__`, sync handlers and `close()` run in one dedicated executor thread, so the event loop keeps
answering health checks while a model computes and objects bound to their creating thread keep working;
async handlers run on the loop (they skip the thread hop, about 60 us per call on this machine).

Every request is answered: an exception becomes an error status carrying type, message and traceback;
documents that do not fit the handler's schema, an unknown endpoint or a payload that is not ours
become a bad-request status. Nothing received is unpickled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import time
import traceback
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import ValidationError

from orchestra_nb.executor import DEFAULT, Executor, Handler, RuntimeArgs, construct
from orchestra_nb.logs import get_logger
from orchestra_nb.runtime.child import Status, install_stop_handler
from orchestra_nb.runtime.devices import gpu_memory
from orchestra_nb.runtime.resolve import resolve_executor_class
from orchestra_nb.spec.models import ExecutorSpec
from orchestra_nb.wire import codec, grpc_options
from orchestra_nb.wire._generated.orchestra_pb2 import InfoRequest, InfoResponse
from orchestra_nb.wire.frame import Frame, deserialize, serialize

__all__ = ["STATUS_BAD_REQUEST", "STATUS_ERROR", "STATUS_OK", "STATUS_UNAVAILABLE", "WorkerServicer", "orchestra_server", "run_worker", "server_options"]

STATUS_OK, STATUS_ERROR, STATUS_BAD_REQUEST, STATUS_UNAVAILABLE = 0, 1, 2, 3
log = get_logger("worker")


def server_options(max_message: int) -> list[tuple[str, Any]]:
    return [*grpc_options(max_message), ("grpc.so_reuseport", 0)]


def orchestra_server(call: Any, info: Any, max_message: int) -> tuple[Any, Any]:
    """A grpc.aio server with the `orchestra.Orchestra` service (Call, Info) and the standard health
    service: what every replica and the gateway serve."""
    server = grpc.aio.server(options=server_options(max_message))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("orchestra.Orchestra", {
        "Call": grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=deserialize, response_serializer=serialize),
        "Info": grpc.unary_unary_rpc_method_handler(
            info, request_deserializer=InfoRequest.FromString,
            response_serializer=InfoResponse.SerializeToString),
    })])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


class Stats:
    """Per-replica counters and a window of latencies, reported through Info."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies: list[float] = []

    def record(self, seconds: float, ok: bool) -> None:
        self.requests += 1
        self.errors += 0 if ok else 1
        self.latencies.append(seconds)
        if len(self.latencies) > 2048:
            del self.latencies[:1024]

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies[-1024:])
        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else None
        return {"requests": self.requests, "errors": self.errors, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


class WorkerServicer:
    """Serves one executor instance."""

    def __init__(self, spec: ExecutorSpec, executor: Executor, stop: asyncio.Event,
                 pool: concurrent.futures.ThreadPoolExecutor | None = None) -> None:
        self.spec = spec
        self.name = spec.name or "executor"
        self.executor = executor
        self.handlers: dict[str, Handler] = executor.handlers(spec.uses_requests)
        self.pool = pool or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="orchestra-nb-executor")
        self.stop = stop
        self.stats = Stats()
        self.tracing: Any = None  # orchestra_nb.tracing.Tracing with tracing=True
        self.metrics: Any = None
        self.metrics_port: int | None = None
        self.last_docs = 0

    def _reply(self, request: Frame, status: int, *, exc_type: str = "", message: str = "",
               tb: str = "") -> Frame:
        out = Frame()
        out.header.CopyFrom(request.header)
        out.header.status = status
        out.header.error.type = exc_type
        out.header.error.message = message
        out.header.error.traceback = tb
        out.header.error.executor = self.name
        out.header.error.endpoint = request.header.endpoint
        return out

    def _parameters(self, raw: bytes) -> dict[str, Any]:
        params = json.loads(raw) if raw else {}
        if not isinstance(params, dict):
            raise ValueError("parameters must be a JSON object")
        # 'encoder__top_k' is for the executor named 'encoder' only
        prefix = f"{self.name}__"
        own = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
        common = {k: v for k, v in params.items() if "__" not in k}
        return {**common, **own}

    async def call(self, request: Frame, context: Any) -> Frame:
        started = time.perf_counter()
        metrics = self.metrics
        if metrics is not None:
            metrics.inflight.labels(self.name).inc()
        try:
            if self.tracing is None or request.header.endpoint == "/_dry_run":
                reply = await self._call(request)
            else:
                reply = await self._traced(request)
        finally:
            if metrics is not None:
                metrics.inflight.labels(self.name).dec()
        elapsed = time.perf_counter() - started
        ok = reply.header.status == STATUS_OK
        self.stats.record(elapsed, ok)
        if metrics is not None and request.header.endpoint != "/_dry_run":
            labels = (self.name, request.header.endpoint)
            metrics.requests.labels(*labels).inc()
            metrics.seconds.labels(*labels).observe(elapsed)
            if not ok:
                metrics.errors.labels(*labels).inc()
            else:
                metrics.docs.labels(*labels).inc(self.last_docs)
        return reply

    async def _traced(self, request: Frame) -> Frame:
        endpoint = request.header.endpoint
        with self.tracing.span(f"{self.name} {endpoint}", request.header.trace, kind="server",
                               executor=self.name, endpoint=endpoint) as span:
            reply = await self._call(request)
            if reply.header.status != STATUS_OK:
                self.tracing.error(span, reply.header.error.type, reply.header.error.message)
            return reply

    async def _call(self, request: Frame) -> Frame:
        endpoint = request.header.endpoint
        if endpoint == "/_dry_run":
            return request
        handler = self.handlers.get(endpoint) or self.handlers.get(DEFAULT)
        if handler is None:
            if not self.handlers:  # an executor without handlers forwards the docs unchanged
                return request
            served = sorted(ep for ep in self.handlers if ep != DEFAULT)
            return self._reply(request, STATUS_BAD_REQUEST, exc_type="UnknownEndpoint",
                               message=f"executor {self.name!r} has no handler for endpoint {endpoint!r}; "
                                       f"its endpoints are {served}")
        try:
            parameters = self._parameters(request.header.parameters)
            docs = [handler.input_type.model_validate(d) for d in codec.decode(request.docs)]
            self.last_docs = len(docs)
        except ValidationError as exc:
            return self._reply(request, STATUS_BAD_REQUEST, exc_type="ValidationError",
                               message=f"docs do not match {handler.input_type.__name__}: {_short(exc)}")
        except Exception as exc:  # WireError, bad parameters
            return self._reply(request, STATUS_BAD_REQUEST, exc_type=type(exc).__name__, message=str(exc))
        kwargs: dict[str, Any] = {}
        if handler.takes_docs:
            kwargs["docs"] = docs
        if handler.takes_parameters:
            kwargs["parameters"] = parameters
        try:
            if handler.is_async:
                result = await handler.func(**kwargs)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self.pool, lambda: handler.func(**kwargs))
            out = Frame()
            out.header.CopyFrom(request.header)
            if isinstance(result, dict):
                out.header.results[self.name] = json.dumps(result, default=_jsonable).encode()
                result = None
            out.docs = codec.encode(docs if result is None else _as_docs(result))
            return out
        except Exception as exc:
            tb = traceback.format_exc()
            log.error("handler for %s raised %s: %s", endpoint, type(exc).__name__, exc)
            if type(exc).__name__ in self.spec.exit_on_exceptions:
                log.error("%s is in exit_on_exceptions: this replica stops", type(exc).__name__)
                asyncio.get_running_loop().call_later(0.05, self.stop.set)
            return self._reply(request, STATUS_ERROR, exc_type=type(exc).__name__, message=str(exc), tb=tb)

    async def info(self, request: InfoRequest, context: Any) -> InfoResponse:
        return InfoResponse(info=json.dumps(self.describe()).encode())

    def describe(self) -> dict[str, Any]:
        ra = self.executor.runtime_args
        endpoints = {}
        for ep, h in self.handlers.items():
            endpoints[ep] = {
                "input": h.input_type.__name__, "output": h.output_type.__name__,
                "input_schema": _schema(h.input_type), "output_schema": _schema(h.output_type),
            }
        return {"name": self.name, "class": type(self.executor).__name__, "pid": os.getpid(),
                "replica": ra.replica_id, "shard": ra.shard_id, "device": ra.device,
                "endpoints": endpoints, "stats": self.stats.summary(),
                "gpus": gpu_memory() if ra.device == "cuda" else [],
                "metrics_port": self.metrics_port}


def _schema(model: type[Any]) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema


def _short(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(parts) + (f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else "")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def _as_docs(result: Any) -> list[Any]:
    if hasattr(result, "model_dump"):
        return [result]
    if isinstance(result, (list, tuple)):
        return list(result)
    raise TypeError(f"a handler returns docs (a list of Doc), None or a dict, not {type(result).__name__}")


async def run_worker(config: dict[str, Any], status: Status) -> None:
    spec: ExecutorSpec = config["spec"]
    stop = asyncio.Event()
    install_stop_handler(stop)
    cls, extra_with = resolve_executor_class(spec.uses, spec.py_modules, config.get("base_dir"))
    runtime_args = RuntimeArgs(
        name=spec.name or cls.__name__, replica_id=config.get("replica_id", 0), replicas=spec.replicas,
        shard_id=config.get("shard_id", 0), shards=spec.shards,
        device=config.get("device", "cpu"), workspace=spec.workspace, metas=dict(spec.uses_metas))
    status.send("phase", phase="loading")
    # __init__, sync handlers and close() all run in one executor thread, so objects that must stay on
    # the thread that made them (sqlite connections, some GPU contexts) work; the loop stays free
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="orchestra-nb-executor")
    loop = asyncio.get_running_loop()
    executor = await loop.run_in_executor(
        pool, lambda: construct(cls, runtime_args, {**extra_with, **spec.uses_with}))
    servicer = WorkerServicer(spec, executor, stop, pool)
    server, health_servicer = orchestra_server(servicer.call, servicer.info, spec.max_message_size)
    if config.get("metrics_port"):
        from orchestra_nb.runtime.metrics import ExecutorMetrics, serve_metrics

        servicer.metrics = ExecutorMetrics()
        servicer.metrics_port = config["metrics_port"]
        serve_metrics(servicer.metrics.registry, config.get("host", "127.0.0.1"), config["metrics_port"])
    if config.get("tracing"):
        from orchestra_nb.tracing import Tracing

        servicer.tracing = Tracing(config["tracing"]["service"], config["tracing"]["endpoint"])
    address = f"{config.get('host', '127.0.0.1')}:{config['port']}"
    port = server.add_insecure_port(address)
    await server.start()
    status.send("phase", phase="serving")
    stream_server = None
    if config.get("stream_path"):
        from orchestra_nb.runtime.stream import serve_stream

        stream_server = await serve_stream(config["stream_path"], lambda frame: servicer.call(frame, None),
                                           spec.max_message_size)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on %s (pid %d, device %s)", runtime_args.name, address, os.getpid(), runtime_args.device)
    status.send("ready", port=port, pid=os.getpid(), endpoints=sorted(servicer.handlers))
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    if stream_server is not None:
        await stream_server.close(grace=2.0)
    await server.stop(grace=2.0)
    try:
        await loop.run_in_executor(pool, executor.close)
    finally:
        servicer.pool.shutdown(wait=False)
        if servicer.tracing is not None:
            servicer.tracing.shutdown()  # export what is queued
    status.send("stopped")
