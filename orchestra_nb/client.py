"""Client: talk to a Deployment's or Flow's gateway over gRPC (or HTTP).

`AsyncClient` is the core; `Client` is its sync facade over a loop thread (DESIGN.md decision 2), so
`Client.post` works in a script and in a notebook cell alike, and `await client.post_async(...)` works
on any loop. Inputs are split into requests of `request_size` docs; up to `prefetch` of them are in
flight at once and the answers come back in input order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from orchestra_nb.docs import Doc, DocList
from orchestra_nb.errors import BadRequestError, ExecutorError, LifecycleError, TransportError

__all__ = ["AsyncClient", "Client", "GrpcPoster"]

DEFAULT_MAX_MESSAGE = 512 * 1024 * 1024


MAX_REQUEST_BYTES = 2 * 1024 * 1024


def _doc_bytes(doc: Any) -> int:
    """The array and bytes payload of a doc (what dominates its size on the wire)."""
    fields = getattr(doc, "__dict__", doc if isinstance(doc, dict) else {})
    total = 0
    for value in fields.values():
        nbytes = getattr(value, "nbytes", None)
        if isinstance(nbytes, int):
            total += nbytes
        elif isinstance(value, (bytes, bytearray)):
            total += len(value)
    return total


def _batches(inputs: Any, size: int, max_bytes: int = MAX_REQUEST_BYTES) -> Iterator[list[Any]]:
    """Split inputs into requests of at most `size` docs and (beyond one doc) about `max_bytes`.

    gRPC moves a few MB per message far faster than tens of MB (measured here: a 26 MB echo takes ~8x
    the time of a 2.6 MB one for 10x the bytes), so big tensors go in requests of about 2 MB.
    """
    if inputs is None:
        yield []
        return
    if isinstance(inputs, BaseModel):
        inputs = [inputs]
    batch: list[Any] = []
    nbytes = 0
    for doc in inputs:
        size_of = _doc_bytes(doc)
        if batch and (len(batch) >= size or nbytes + size_of > max_bytes):
            yield batch
            batch, nbytes = [], 0
        batch.append(doc)
        nbytes += size_of
    if batch:
        yield batch


def raise_for_header(header: Any) -> None:
    """Turn an error status in a reply header into the matching exception."""
    from orchestra_nb.runtime.worker import STATUS_BAD_REQUEST, STATUS_ERROR, STATUS_OK

    if header.status == STATUS_OK:
        return
    err = header.error
    if header.status == STATUS_ERROR:
        raise ExecutorError(err.message, executor=err.executor, endpoint=err.endpoint, exc_type=err.type,
                            remote_traceback=err.traceback)
    if header.status == STATUS_BAD_REQUEST:
        where = f"executor {err.executor!r}, endpoint {err.endpoint!r}: " if err.executor else ""
        raise BadRequestError(f"{where}{err.type}: {err.message}")
    raise TransportError(err.message or "the request could not be served")


def _check_post(on: str, request_size: int, target_executor: str | None = None) -> None:
    if not isinstance(on, str) or not on.startswith("/"):
        raise BadRequestError(f"endpoint {on!r} must be a string starting with '/', like '/index'")
    if request_size < 1:
        raise ValueError("request_size must be at least 1")
    if target_executor:
        import re

        try:
            re.compile(target_executor)
        except re.error as exc:
            raise BadRequestError(f"target_executor {target_executor!r} is not a valid regular expression "
                                  f"({exc}); it is matched against executor names") from None


def _request(on: str, batch: list[Any], params: dict[str, Any], target: str | None) -> Any:
    from orchestra_nb.wire import codec
    from orchestra_nb.wire.frame import Frame

    request = Frame()
    request.header.request_id = uuid.uuid4().hex
    request.header.endpoint = on
    try:
        request.header.parameters = json.dumps(params).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"parameters must be JSON (strings, numbers, lists, dicts): {exc}; e.g. use "
                        "float(x) for a numpy number") from None
    if target:
        request.header.target_executor = target
    request.docs = codec.encode(batch)
    return request


def _answer(reply: Any, return_type: type[BaseModel]) -> tuple[list[Any], dict[str, Any]]:
    from orchestra_nb.wire import codec

    raise_for_header(reply.header)
    docs = [return_type.model_validate(d) for d in codec.decode(reply.docs)]
    return docs, {k: json.loads(v) for k, v in reply.header.results.items()}


def _grpc_error(address: str, exc: Any) -> TransportError:
    """A failed gRPC call as a TransportError that says what to do about the common causes."""
    code = exc.code().name
    hint = ""
    if code == "RESOURCE_EXHAUSTED":
        hint = (" — a request or answer is over the message size limit: pass a larger max_message_size= "
                "to the Flow/Deployment (and the Client), or send fewer docs per request (request_size=)")
    elif code == "UNAVAILABLE":
        hint = " — is the Flow running, and is this its gRPC port (f.ports['grpc'])?"
    elif code == "UNAUTHENTICATED":
        hint = " — pass the gateway's token: Client(..., token=...)"
    return TransportError(f"gRPC call to {address} failed: {code}: {exc.details()}{hint}")


def _collect(answers: list[tuple[list[Any], dict[str, Any]]]) -> DocList[Any]:
    out: DocList[Any] = DocList(d for docs, _ in answers for d in docs)
    for _, results in answers:
        for name, value in results.items():
            if len(answers) == 1:
                out.results[name] = value
            else:
                out.results.setdefault(name, []).append(value)
    return out


def _grpc_channel(target: str, tls: bool, ca_file: str | None, max_message: int, aio: bool) -> Any:
    import grpc

    from orchestra_nb.wire import grpc_options

    options = grpc_options(max_message)
    module: Any = grpc.aio if aio else grpc
    if not tls:
        return module.insecure_channel(target, options=options)
    root = None
    if ca_file:
        with open(ca_file, "rb") as f:
            root = f.read()
    return module.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root), options=options)


def _verify(ca_file: str | None) -> Any:
    """httpx's `verify`: an SSL context trusting `ca_file`, else the system's CAs."""
    if ca_file is None:
        return True
    import ssl

    return ssl.create_default_context(cafile=ca_file)


def _json_doc(doc: Any) -> Any:
    """A doc as JSON for the HTTP door: arrays as lists, bytes as base64 (what the gateway expects)."""
    from orchestra_nb.wire.codec import decode_json, encode

    if not isinstance(doc, (BaseModel, dict)):
        return doc
    return decode_json(encode([doc]))[0]


class GrpcPoster:
    """Blocking gRPC posts without an event loop: grpcio's sync channel, with up to `prefetch`
    requests in flight as grpc futures. Sync `post()` calls use this: it saves the hop to a loop
    thread that the async client needs."""

    def __init__(self, host: str, port: int, *, token: str | None = None, tls: bool = False,
                 ca_file: str | None = None, max_message_size: int = DEFAULT_MAX_MESSAGE) -> None:
        from orchestra_nb.wire.frame import deserialize, serialize

        self.address = f"{host}:{port}"
        self.token = token
        self._channel = _grpc_channel(self.address, tls, ca_file, max_message_size, aio=False)
        self._call = self._channel.unary_unary("/orchestra.Orchestra/Call", request_serializer=serialize,
                                               response_deserializer=deserialize)

    def post(self, on: str, inputs: Any = None, parameters: dict[str, Any] | None = None, *,
             request_size: int = 100, target_executor: str | None = None, timeout: float | None = None,
             return_type: type[BaseModel] = Doc, prefetch: int = 8) -> DocList[Any]:
        import collections

        import grpc

        _check_post(on, request_size, target_executor)
        params = parameters or {}
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else None
        pending: collections.deque[Any] = collections.deque()
        answers: list[tuple[list[Any], dict[str, Any]]] = []

        def settle(future: Any) -> None:
            try:
                reply = future.result()
            except grpc.RpcError as exc:
                for other in pending:
                    other.cancel()
                raise _grpc_error(self.address, exc) from None
            answers.append(_answer(reply, return_type))

        batches = _batches(inputs, request_size)
        first = next(batches, None)
        if first is None:  # an empty list of inputs: nothing to send
            return DocList()
        second = next(batches, None)
        if second is None:  # one request: a plain blocking call is cheaper than a future
            try:
                reply = self._call(_request(on, first, params, target_executor), timeout=timeout,
                                   metadata=metadata, wait_for_ready=False)
            except grpc.RpcError as exc:
                raise _grpc_error(self.address, exc) from None
            return _collect([_answer(reply, return_type)])
        try:
            for batch in itertools.chain((first, second), batches):
                request = _request(on, batch, params, target_executor)
                if len(pending) >= max(1, prefetch):
                    settle(pending.popleft())
                pending.append(self._call.future(request, timeout=timeout, metadata=metadata,
                                                 wait_for_ready=False))
            while pending:
                settle(pending.popleft())
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        return _collect(answers)

    def close(self) -> None:
        self._channel.close()


class AsyncClient:
    """Async client for one gateway address."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, protocol: str = "grpc", *,
                 token: str | None = None, tls: bool = False, ca_file: str | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE) -> None:
        if port is None and "://" in host:  # 'grpc://127.0.0.1:54321', as Jina users write it
            scheme, _, rest = host.partition("://")
            host, _, port_text = rest.rstrip("/").rpartition(":")
            if not port_text.isdigit():
                raise ValueError(f"Client({scheme}://{rest!r}): the address has no port; "
                                 "write Client(host='127.0.0.1', port=PORT, protocol='grpc')")
            port = int(port_text)
            protocol = "http" if scheme in ("http", "https") else "grpc"
            tls = tls or scheme in ("https", "grpcs")
        if port is None:
            raise ValueError("Client needs a port: Client(host='127.0.0.1', port=PORT, protocol='grpc'), "
                             "or a URL like Client('grpc://127.0.0.1:PORT'); from the Flow itself, f.post()")
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.host, self.port, self.protocol = host, port, protocol
        self.token = token
        self.tls = tls or ca_file is not None
        self.ca_file = ca_file
        self.max_message_size = max_message_size
        self._channel: Any = None
        self._call: Any = None
        self._http: Any = None

    def _metadata(self) -> list[tuple[str, str]] | None:
        return [("authorization", f"Bearer {self.token}")] if self.token else None

    def _ensure(self) -> None:
        if self.protocol == "grpc" and self._channel is None:
            from orchestra_nb.wire.frame import deserialize, serialize

            self._channel = _grpc_channel(f"{self.host}:{self.port}", self.tls, self.ca_file,
                                          self.max_message_size, aio=True)
            self._call = self._channel.unary_unary(
                "/orchestra.Orchestra/Call", request_serializer=serialize,
                response_deserializer=deserialize)
        elif self.protocol == "http" and self._http is None:
            import httpx

            scheme = "https" if self.tls else "http"
            headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
            self._http = httpx.AsyncClient(base_url=f"{scheme}://{self.host}:{self.port}", headers=headers,
                                           timeout=None, verify=_verify(self.ca_file))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def post(self, on: str, inputs: Any = None, parameters: dict[str, Any] | None = None, *,
                   request_size: int = 100, target_executor: str | None = None,
                   timeout: float | None = None, return_type: type[BaseModel] = Doc,
                   prefetch: int = 8) -> DocList[Any]:
        """Send docs to endpoint `on`; returns the docs that come back, with `.results`."""
        _check_post(on, request_size, target_executor)
        if hasattr(inputs, "__aiter__"):  # an async iterator of docs: gather them first
            inputs = [doc async for doc in inputs]
        self._ensure()
        params = parameters or {}
        semaphore = asyncio.Semaphore(max(1, prefetch))

        async def one(batch: list[Any]) -> tuple[list[Any], dict[str, Any]]:
            async with semaphore:
                if self.protocol == "grpc":
                    return await self._post_grpc(on, batch, params, target_executor, timeout, return_type)
                return await self._post_http(on, batch, params, target_executor, timeout, return_type)

        tasks = [asyncio.ensure_future(one(b)) for b in _batches(inputs, request_size)]
        try:
            answers = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        return _collect(list(answers))

    async def _post_grpc(self, on: str, batch: list[Any], params: dict[str, Any], target: str | None,
                         timeout: float | None, return_type: type[BaseModel]) -> tuple[list[Any], dict[str, Any]]:
        import grpc

        request = _request(on, batch, params, target)
        try:
            reply = await self._call(request, timeout=timeout, metadata=self._metadata(), wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(f"{self.host}:{self.port}", exc) from None
        return _answer(reply, return_type)

    async def _post_http(self, on: str, batch: list[Any], params: dict[str, Any], target: str | None,
                         timeout: float | None, return_type: type[BaseModel]) -> tuple[list[Any], dict[str, Any]]:
        body: dict[str, Any] = {"on": on, "parameters": params,
                                "docs": [_json_doc(d) for d in batch]}
        if target:
            body["target_executor"] = target
        try:
            response = await self._http.post("/post", json=body, timeout=timeout)
        except Exception as exc:
            raise TransportError(f"HTTP call to {self.host}:{self.port} failed: {exc}") from None
        data = response.json()
        if response.status_code >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            message = err.get("message", response.text)
            if response.status_code == 500:
                raise ExecutorError(message, executor=err.get("executor", ""), endpoint=err.get("endpoint", ""),
                                    exc_type=err.get("type", ""), remote_traceback=err.get("traceback") or "")
            if response.status_code < 500:
                raise BadRequestError(f"HTTP {response.status_code}: {message}")
            raise TransportError(f"HTTP {response.status_code}: {message}")
        from orchestra_nb.wire.codec import from_json_docs

        return [return_type.model_validate(d) for d in from_json_docs(data["docs"])], data.get("results", {})

    async def info(self) -> dict[str, Any]:
        """The gateway's status: topology, replicas with pids, counters."""
        self._ensure()
        if self.protocol == "http":
            r = await self._http.get("/status")
            result: dict[str, Any] = r.json()
            return result
        from orchestra_nb.wire._generated.orchestra_pb2 import InfoRequest, InfoResponse

        call = self._channel.unary_unary("/orchestra.Orchestra/Info",
                                         request_serializer=InfoRequest.SerializeToString,
                                         response_deserializer=InfoResponse.FromString)
        reply = await call(InfoRequest(), metadata=self._metadata(), timeout=10)
        result = json.loads(reply.info)
        return result


class Client:
    """Sync client for a running Flow or Deployment, usable from scripts and notebook cells.

    Args:
        host: where the gateway runs; also a URL such as `'grpc://127.0.0.1:PORT'`.
        port: the gateway's port for `protocol` (`f.ports['grpc']` of a Flow).
        protocol: `'grpc'` or `'http'`.
        **kwargs: `token` (the gateway's token, sent as a bearer token), `tls=True` and `ca_file`
            (trust a self-signed certificate), `max_message_size`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, protocol: str = "grpc", **kwargs: Any) -> None:
        from orchestra_nb.runtime.loop import LoopThread

        self._async = AsyncClient(host, port, protocol, **kwargs)
        self._loop: LoopThread | None = LoopThread("orchestra-nb-client")
        a = self._async  # its host, port and protocol, parsed from a URL when one was given
        self._poster = GrpcPoster(a.host, a.port, token=a.token, tls=a.tls, ca_file=a.ca_file,
                                  max_message_size=a.max_message_size) if a.protocol == "grpc" else None

    def _loop_or_raise(self) -> Any:
        if self._loop is None:
            raise LifecycleError("this Client is closed; create a new one")
        return self._loop

    def post(self, on: str, inputs: Any = None, parameters: dict[str, Any] | None = None, **kwargs: Any) -> DocList[Any]:
        """Send docs to endpoint `on`; returns a DocList with `.results` (see `Flow.post` for the
        keywords: `request_size`, `target_executor`, `timeout`, `return_type`, `prefetch`)."""
        loop = self._loop_or_raise()
        if self._poster is not None:
            return self._poster.post(on, inputs, parameters, **kwargs)
        return loop.run(self._async.post(on, inputs, parameters, **kwargs))  # type: ignore[no-any-return]

    async def post_async(self, on: str, inputs: Any = None, parameters: dict[str, Any] | None = None,
                         **kwargs: Any) -> DocList[Any]:
        return await self._loop_or_raise().run_async(self._async.post(on, inputs, parameters, **kwargs))  # type: ignore[no-any-return]

    def info(self) -> dict[str, Any]:
        return self._loop_or_raise().run(self._async.info())  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._poster is not None:
            self._poster.close()
            self._poster = None
        if self._loop is not None:
            try:
                self._loop.run(self._async.close(), timeout=5)
            finally:
                self._loop.stop()
                self._loop = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.stop(timeout=0.5)
