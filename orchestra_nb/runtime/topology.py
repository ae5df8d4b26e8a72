"""The router inside the gateway: walks a Flow's DAG per request.

Independent branches run concurrently; a node waits for everything in its `needs`. The docs payload is
forwarded as opaque bytes along a linear chain; it is decoded only where the gateway must look inside:
a join of branches that changed the docs (merged by id, see merge.py), a `when` filter, or a shard reduce
(polling ALL). `decoded` counts those decodes; tests use it to prove a linear chain decodes nothing.

An executor that does not serve the request's endpoint passes the docs on untouched (so one Flow can
serve several endpoints); only when no executor serves it does the client get an error listing them.

Replicas are chosen by least outstanding requests; a replica that fails with a transport error is
skipped for a moment and the request is retried on another one (`retries`, -1 = each replica once, plus
one more try after a short wait when there is a single replica).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from orchestra_nb.logs import get_logger
from orchestra_nb.runtime.merge import merge_docs, sort_matches
from orchestra_nb.runtime.stream import StreamChannel, StreamError
from orchestra_nb.runtime.when import compile_when
from orchestra_nb.runtime.worker import STATUS_BAD_REQUEST, STATUS_OK, STATUS_UNAVAILABLE
from orchestra_nb.spec.models import ExecutorSpec, FlowSpec
from orchestra_nb.wire import codec, grpc_options
from orchestra_nb.wire._generated.orchestra_pb2 import InfoRequest, InfoResponse
from orchestra_nb.wire.frame import Frame, deserialize, serialize

__all__ = ["Replica", "Router"]

log = get_logger("gateway")
DRY_RUN = "/_dry_run"  # reaches every executor, which answers without calling a handler
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
              grpc.StatusCode.INTERNAL}


@dataclass
class Replica:
    address: str
    channel: grpc.aio.Channel
    call: Any
    info_call: Any
    outstanding: int = 0
    down_until: float = 0.0
    key: str = ""

    async def close(self) -> None:
        if isinstance(self.call, StreamChannel):
            await self.call.close()
        await self.channel.close()


@dataclass
class Node:
    spec: ExecutorSpec
    shards: list[list[Replica]]
    needs: list[str]
    when: Any = None
    successors: list[str] = field(default_factory=list)
    endpoints: set[str] | None = None  # None until known; an empty set means a pass-through

    def serves(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints or "*" in self.endpoints

    @property
    def name(self) -> str:
        return self.spec.name or "executor"


def channel_options(max_message: int) -> list[tuple[str, Any]]:
    return [
        *grpc_options(max_message),
        ("grpc.enable_retries", 0),
        # an address that resolves to several pods (a headless Kubernetes Service) gets every one of them
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def _replica(key: str, max_message: int) -> Replica:
    """A replica from its address: `host:port` (gRPC), optionally `#/path.sock` for the local stream hop."""
    address, _, stream_path = key.partition("#")
    channel = grpc.aio.insecure_channel(address, options=channel_options(max_message))
    call: Any = channel.unary_unary("/orchestra.Orchestra/Call", request_serializer=serialize,
                                    response_deserializer=deserialize)
    if stream_path:
        call = StreamChannel(stream_path)
    info = channel.unary_unary("/orchestra.Orchestra/Info", request_serializer=InfoRequest.SerializeToString,
                               response_deserializer=InfoResponse.FromString)
    return Replica(address, channel, call, info, key=key)


class Router:
    """Routes requests through the DAG; one per gateway process."""

    def __init__(self, spec: FlowSpec, addresses: dict[str, list[list[str]]]) -> None:
        self.spec = spec
        self.decoded = 0
        self.metrics: Any = None
        self.tracing: Any = None  # orchestra_nb.tracing.Tracing with tracing=True
        self.floating_tasks: set[asyncio.Task[Any]] = set()
        self.nodes: dict[str, Node] = {}
        for ex in spec.executors:
            name = ex.name or "executor"
            shards = [[_replica(a, ex.max_message_size) for a in shard] for shard in addresses[name]]
            self.nodes[name] = Node(ex, shards, list(ex.needs) or ["gateway"],
                                    compile_when(ex.when) if ex.when else None)
        for node in self.nodes.values():
            for need in node.needs:
                if need in self.nodes:
                    self.nodes[need].successors.append(node.name)
        self.order = _topological(self.nodes)
        floating = {n for n, node in self.nodes.items() if node.spec.floating}
        floating |= {n for n in self.order if any(d in floating for d in self.nodes[n].needs)}
        self.floating = floating
        self.sinks = [n for n in self.order if n not in floating
                      and not any(s not in floating for s in self.nodes[n].successors)]
        # a plain chain (each node needs only the one before it) is walked without tasks or futures
        self.linear = not floating and all(
            self.nodes[n].needs == ([self.order[i - 1]] if i else ["gateway"]) and self.nodes[n].when is None
            for i, n in enumerate(self.order))

    def set_endpoints(self, infos: dict[str, dict[str, Any]]) -> None:
        """Record which endpoints each executor serves (from their Info)."""
        for name, info in infos.items():
            self.nodes[name].endpoints = set(info.get("endpoints", {}))

    def _bad_request(self, request: Frame, exc_type: str, message: str) -> Frame:
        out = Frame()
        out.header.CopyFrom(request.header)
        out.header.status = STATUS_BAD_REQUEST
        out.header.error.type = exc_type
        out.header.error.endpoint = request.header.endpoint
        out.header.error.message = message
        return out

    def _target(self, request: Frame) -> tuple[re.Pattern[str] | None, Frame | None]:
        """`target_executor` compiled, or a bad-request reply (bad pattern, or it matches no executor)."""
        pattern = request.header.target_executor
        try:
            target = re.compile(pattern)
        except re.error as exc:
            return None, self._bad_request(request, "BadTarget", f"target_executor {pattern!r} is not a valid "
                                           f"regular expression ({exc}); the executors are {list(self.nodes)}")
        if not any(target.search(name) for name in self.nodes):
            return None, self._bad_request(request, "BadTarget", f"target_executor {pattern!r} matches no "
                                           f"executor; the executors are {list(self.nodes)}")
        return target, None

    def unknown_endpoint(self, request: Frame) -> Frame | None:
        """An error reply when no executor serves the endpoint (and some serve others)."""
        endpoint = request.header.endpoint
        if endpoint == DRY_RUN:
            return None
        known = [n.endpoints for n in self.nodes.values()]
        if any(e is None for e in known) or not any(known):
            return None
        if any(n.serves(endpoint) for n in self.nodes.values()):
            return None
        served = sorted({ep for eps in known if eps for ep in eps if ep != "*"})
        out = self._bad_request(request, "UnknownEndpoint",
                                f"no executor serves endpoint {endpoint!r}; the endpoints are {served}")
        out.header.error.executor = ", ".join(self.nodes)
        return out

    async def set_addresses(self, name: str, addresses: list[list[str]]) -> None:
        """Swap an executor's replicas; a removed replica's channel closes once its requests finish."""
        node = self.nodes[name]
        old = {r.key: r for shard in node.shards for r in shard}
        node.shards = [[old.get(a) or _replica(a, node.spec.max_message_size) for a in shard]
                       for shard in addresses]
        kept = {a for shard in addresses for a in shard}
        for address, rep in old.items():
            if address not in kept:
                task = asyncio.ensure_future(self._drain(rep))
                self.floating_tasks.add(task)
                task.add_done_callback(self.floating_tasks.discard)

    async def _drain(self, rep: Replica) -> None:
        deadline = time.monotonic() + 30
        while rep.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await rep.close()

    async def close(self) -> None:
        for task in list(self.floating_tasks):
            task.cancel()
        for node in self.nodes.values():
            for shard in node.shards:
                for rep in shard:
                    await rep.close()

    async def route(self, request: Frame) -> Frame:
        header = request.header
        error = self.unknown_endpoint(request)
        if error is not None:
            return error
        target = None
        if header.target_executor:
            target, error = self._target(request)
            if error is not None:
                return error
        if self.linear:
            for name in self.order:
                request = await self._run_node(self.nodes[name], None, target, request)
                if request.header.status != STATUS_OK:
                    break
            return request
        results: dict[str, asyncio.Future[Frame]] = {}
        loop = asyncio.get_running_loop()
        start: asyncio.Future[Frame] = loop.create_future()
        start.set_result(request)
        results["gateway"] = start
        for name in self.order:
            node = self.nodes[name]
            inputs = [results[n] for n in node.needs]
            task = asyncio.ensure_future(self._run_node(node, inputs, target))
            results[name] = task
            if name in self.floating:
                self.floating_tasks.add(task)
                task.add_done_callback(self._floating_done)
        if not self.sinks:
            return request
        outs = [await results[n] for n in self.sinks]
        return self._join(outs)

    def _floating_done(self, task: asyncio.Task[Any]) -> None:
        self.floating_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("floating executor failed: %s", task.exception())

    async def _run_node(self, node: Node, inputs: list[asyncio.Future[Frame]] | None,
                        target: re.Pattern[str] | None, given: Frame | None = None) -> Frame:
        if inputs is None:
            assert given is not None
            request = given
        else:
            received = [await f for f in inputs]
            request = self._join(received) if len(received) > 1 else received[0]
        if request.header.status != STATUS_OK:
            return request
        if target is not None and not target.search(node.name):
            return request
        if not node.serves(request.header.endpoint) and request.header.endpoint != DRY_RUN:
            return request  # executors that do not serve an endpoint pass its docs on
        if node.when is not None:
            request = self._filter(request, node.when)
        polling = node.spec.polling_for(request.header.endpoint)
        if len(node.shards) == 1 or polling == "ANY":
            shards = sorted(node.shards, key=lambda s: min(r.outstanding for r in s))[:1]
        else:
            shards = node.shards
        replies = await asyncio.gather(*(self._measured(node, shard, request) for shard in shards))
        if len(replies) == 1:
            return replies[0]
        return self._join(list(replies), reduce=True)

    def _filter(self, request: Frame, predicate: Any) -> Frame:
        self.decoded += 1
        docs = codec.decode(request.docs)
        kept = [d for d in docs if predicate(d)]
        if len(kept) == len(docs):
            return request
        out = Frame()
        out.header.CopyFrom(request.header)
        out.docs = codec.encode(kept)
        return out

    def _join(self, replies: list[Frame], reduce: bool = False) -> Frame:
        for reply in replies:
            if reply.header.status != STATUS_OK:
                return reply
        out = Frame()
        out.header.CopyFrom(replies[0].header)
        for reply in replies[1:]:
            for key, value in reply.header.results.items():
                out.header.results[key] = value
        first = replies[0].docs
        if all(r.docs == first for r in replies[1:]) and not reduce:
            out.docs = first  # every branch left the docs as they were: nothing to merge
            return out
        self.decoded += 1
        merged = merge_docs([codec.decode(r.docs) for r in replies])
        out.docs = codec.encode(sort_matches(merged) if reduce else merged)
        return out

    async def _measured(self, node: Node, shard: list[Replica], request: Frame) -> Frame:
        tracing = self.tracing
        if tracing is None or request.header.endpoint == DRY_RUN:
            return await self._hop(node, shard, request)
        with tracing.span(f"hop {node.name}", kind="client", executor=node.name,
                          endpoint=request.header.endpoint) as span:
            hop = Frame(docs=request.docs)  # parallel branches share `request`: each hop gets its header
            hop.header.CopyFrom(request.header)
            hop.header.trace.clear()
            tracing.inject(hop.header.trace)
            reply = await self._hop(node, shard, hop)
            if reply.header.status != STATUS_OK:
                tracing.error(span, reply.header.error.type, reply.header.error.message)
            reply.header.trace.clear()
            return reply

    async def _hop(self, node: Node, shard: list[Replica], request: Frame) -> Frame:
        metrics = self.metrics
        if metrics is None or request.header.endpoint == DRY_RUN:
            return await self._send(node, shard, request)
        labels = (node.name, request.header.endpoint)
        metrics.inflight.labels(node.name).inc()
        started = time.perf_counter()
        try:
            reply = await self._send(node, shard, request)
        finally:
            metrics.inflight.labels(node.name).dec()
        metrics.requests.labels(*labels).inc()
        metrics.seconds.labels(*labels).observe(time.perf_counter() - started)
        if reply.header.status != STATUS_OK:
            metrics.errors.labels(*labels).inc()
        return reply

    def _pick(self, shard: list[Replica], tried: set[int]) -> Replica | None:
        now = time.monotonic()
        candidates = [r for r in shard if id(r) not in tried]
        if not candidates:
            return None
        healthy = [r for r in candidates if r.down_until <= now] or candidates
        low = min(r.outstanding for r in healthy)
        return random.choice([r for r in healthy if r.outstanding == low])

    async def _send(self, node: Node, shard: list[Replica], request: Frame) -> Frame:
        retries = node.spec.retries if node.spec.retries >= 0 else max(len(shard), 2)
        tried: set[int] = set()
        last_error = ""
        for attempt in range(retries + 1):
            replica = self._pick(shard, tried)
            if replica is None:
                tried.clear()
                await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))
                replica = self._pick(shard, tried)
                if replica is None:
                    break
            tried.add(id(replica))
            replica.outstanding += 1
            try:
                return await replica.call(request, timeout=node.spec.timeout_send, wait_for_ready=False)  # type: ignore[no-any-return]
            except (StreamError, asyncio.TimeoutError) as exc:  # not the builtin TimeoutError before 3.11
                if isinstance(exc, asyncio.TimeoutError):
                    last_error = f"no answer within timeout_send={node.spec.timeout_send} s"
                    break
                last_error = f"UNAVAILABLE: {exc}"
                replica.down_until = time.monotonic() + 0.5
                log.warning("replica %s of %s failed (%s); retrying on another", replica.address, node.name,
                            last_error)
            except grpc.aio.AioRpcError as exc:
                last_error = f"{exc.code().name}: {exc.details()}"
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    last_error = f"no answer within timeout_send={node.spec.timeout_send} s"
                    break
                if exc.code() not in _RETRYABLE:
                    break
                replica.down_until = time.monotonic() + 0.5
                log.warning("replica %s of %s failed (%s); retrying on another", replica.address, node.name,
                            last_error)
            finally:
                replica.outstanding -= 1
        out = Frame()
        out.header.CopyFrom(request.header)
        out.header.status = STATUS_UNAVAILABLE
        out.header.error.type = "Unavailable"
        out.header.error.executor = node.name
        out.header.error.endpoint = request.header.endpoint
        out.header.error.message = f"executor {node.name!r} could not be reached: {last_error}"
        return out

    async def executor_info(self, timeout: float = 2.0) -> dict[str, list[dict[str, Any]]]:
        """Info of every replica, by executor (unreachable replicas are reported as such)."""
        import json

        async def one(rep: Replica) -> dict[str, Any]:
            try:
                reply = await rep.info_call(InfoRequest(), timeout=timeout)
                info: dict[str, Any] = json.loads(reply.info)
                info["address"] = rep.address
                info["state"] = "ready"
                return info
            except grpc.aio.AioRpcError as exc:
                return {"address": rep.address, "state": "unreachable", "error": exc.code().name}

        out: dict[str, list[dict[str, Any]]] = {}
        for name, node in self.nodes.items():
            reps = [r for shard in node.shards for r in shard]
            out[name] = list(await asyncio.gather(*(one(r) for r in reps)))
        return out

    async def wait_info(self, deadline: float) -> dict[str, dict[str, Any]]:
        """One replica's Info per executor, waiting until each is reachable."""
        import json

        out: dict[str, dict[str, Any]] = {}
        for name, node in self.nodes.items():
            rep = node.shards[0][0]
            remaining = max(0.1, deadline - time.monotonic())
            reply = await rep.info_call(InfoRequest(), timeout=remaining, wait_for_ready=True)
            out[name] = json.loads(reply.info)
        return out


def _topological(nodes: dict[str, Node]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name) == 2:
            return
        state[name] = 1
        for need in nodes[name].needs:
            if need != "gateway":
                visit(need)
        state[name] = 2
        order.append(name)

    for name in nodes:
        visit(name)
    return order
