"""The HTTP front door: FastAPI routes over the gateway's router.

* `POST /post` takes ``{"on": "/x", "docs": [...], "parameters": {...}, "target_executor": "..."}``.
* `POST /x` for every endpoint an executor serves: the same body without `on`; its request and response
  schemas come from the executors' type hints (via their Info) and appear in `/openapi.json` and `/docs`.
* `GET /health` (the process is up), `GET /ready` (every executor replica reachable), `GET /status`.

Status codes: malformed input is 4xx and never reaches an executor (400 bad JSON, 413 too large, 415 not
JSON, 422 wrong shape or docs that do not fit the schema, 404 unknown endpoint, 401 missing token); a
handler exception is 500 naming the executor, an unreachable executor 503, a hop timeout 504.
JSON bodies are parsed strictly: NaN, Infinity and numbers out of float range are refused. A doc's
`blob` (bytes) is base64 text in JSON, both ways.
"""

from __future__ import annotations

import hmac
import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestra_nb.runtime.worker import STATUS_BAD_REQUEST, STATUS_ERROR, STATUS_OK
from orchestra_nb.wire import codec
from orchestra_nb.wire.frame import Frame

__all__ = ["build_app"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    docs: list[dict[str, Any]] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    target_executor: str | None = None


class _PostBody(_Body):
    on: str


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, **extra}}


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _error_status(reply: Frame) -> int:
    err = reply.header.error
    if reply.header.status == STATUS_BAD_REQUEST:
        return 404 if err.type == "UnknownEndpoint" else 400 if err.type == "BadTarget" else 422
    if reply.header.status == STATUS_ERROR:
        return 500
    return 504 if "timeout" in err.message else 503


def build_app(gateway: Any) -> FastAPI:
    spec = gateway.spec
    max_body = spec.gateway.max_body_size
    app = FastAPI(title=f"orchestra-nb: {spec.name}", version="1",
                  description="Endpoints of the Flow's executors; bodies carry docs and parameters.")

    @app.exception_handler(_HTTPError)
    async def _http_error(request: Request, exc: _HTTPError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> JSONResponse:
        served = sorted({ep for info in gateway.executor_infos.values() for ep in info.get("endpoints", {})
                         if ep != "*"})
        return JSONResponse({"error": {"message": f"no route {request.url.path!r}; the endpoints are {served} "
                                                  "(or POST /post with \"on\")"}}, status_code=404)

    def check_token(request: Request) -> None:
        token = gateway.token
        if not token:
            return
        given = request.headers.get("authorization", "")
        if given.lower().startswith("bearer "):
            given = given[7:]
        else:
            given = request.query_params.get("token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise _HTTPError(401, "a valid token is required: send 'Authorization: Bearer <token>' "
                                  "or add ?token=<token> to the URL")

    async def read_body(request: Request, model: type[_Body]) -> _Body:
        check_token(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _HTTPError(415, f"content type must be application/json, got {ctype or 'none'!r}")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            raise _HTTPError(413, f"body of {length} bytes is over the limit of {max_body} bytes")
        raw = await request.body()
        if len(raw) > max_body:
            raise _HTTPError(413, f"body of {len(raw)} bytes is over the limit of {max_body} bytes")
        try:
            data = json.loads(raw, parse_constant=_constant, parse_float=_finite)
        except (ValueError, RecursionError) as exc:
            raise _HTTPError(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            what = "on, docs, parameters" if model is _PostBody else "docs, parameters"
            raise _HTTPError(422, f"the body must be a JSON object with {what}; got "
                                  f"{type(data).__name__ if data is not None else 'null'}")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:10]]
            raise _HTTPError(422, "body does not match the request schema", details=details) from None
        except RecursionError:
            raise _HTTPError(400, "body is nested too deeply") from None

    async def run(endpoint: str, body: _Body, http: Request) -> JSONResponse:
        if not endpoint.startswith("/"):
            raise _HTTPError(422, f"endpoint {endpoint!r} must start with '/'")
        request = Frame()
        for key in ("traceparent", "tracestate"):  # a caller's W3C trace continues through the Flow
            value = http.headers.get(key)
            if value:
                request.header.trace[key] = value
        request.header.endpoint = endpoint
        request.header.parameters = json.dumps(body.parameters).encode()
        if body.target_executor:
            request.header.target_executor = body.target_executor
        try:
            request.docs = codec.encode(codec.from_json_docs(body.docs))
        except Exception as exc:
            raise _HTTPError(422, f"docs cannot be encoded: {exc}") from None
        gateway.router.decoded += 1  # HTTP always looks inside the docs (JSON in, JSON out)
        reply = await gateway.call(request, None)
        if reply.header.status != STATUS_OK:
            err = reply.header.error
            raise _HTTPError(_error_status(reply), err.message, executor=err.executor,
                             endpoint=err.endpoint, type=err.type, traceback=err.traceback or None)
        results = {k: json.loads(v) for k, v in reply.header.results.items()}
        docs = codec.decode_json(reply.docs)
        return JSONResponse({"docs": docs, "parameters": body.parameters, "results": results})

    @app.post("/post", summary="Send docs to any endpoint")
    async def post(request: Request) -> JSONResponse:
        body = await read_body(request, _PostBody)
        assert isinstance(body, _PostBody)
        return await run(body.on, body, request)

    schemas: dict[str, Any] = {}
    for endpoint, (inp, out) in _endpoint_schemas(gateway).items():
        _add_typed_route(app, endpoint, inp, out, read_body, run, schemas)

    @app.get("/health", summary="Liveness")
    async def health_route() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: every executor replica reachable")
    async def ready_route(request: Request) -> JSONResponse:
        check_token(request)
        ready = await gateway.ready()
        ok = all(ready.values())
        return JSONResponse({"ready": ok, "executors": ready}, status_code=200 if ok else 503)

    @app.get("/status", summary="Topology, replicas, versions and counters")
    async def status_route(request: Request) -> JSONResponse:
        check_token(request)
        return JSONResponse(await gateway.status())

    @app.get("/metrics", summary="Prometheus metrics of the gateway (with metrics=True)")
    async def metrics_route() -> Any:
        from fastapi.responses import PlainTextResponse, Response

        metrics = gateway.router.metrics
        if metrics is None:
            return PlainTextResponse("metrics are off: start the Flow with metrics=True", status_code=404)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = original_openapi()
            document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _hoist(schema: dict[str, Any], store: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    for name, sub in schema.pop("$defs", {}).items():
        store[name] = sub
    title = schema.get("title", "Doc")
    store[title] = schema
    return {"$ref": f"#/components/schemas/{title}"}


def _endpoint_schemas(gateway: Any) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    router = gateway.router
    infos = gateway.executor_infos
    entries = [n for n in router.order if "gateway" in router.nodes[n].needs]
    sinks = router.sinks or entries
    endpoints = sorted({ep for info in infos.values() for ep in info["endpoints"] if ep != "*"})

    def find(names: list[str], ep: str, key: str) -> dict[str, Any] | None:
        for name in names:
            eps = infos.get(name, {}).get("endpoints", {})
            entry = eps.get(ep) or eps.get("*")
            if entry:
                return dict(entry[key])
        return None

    out = {}
    for ep in endpoints:
        inp = find(entries, ep, "input_schema") or find(list(infos), ep, "input_schema")
        res = find(sinks, ep, "output_schema") or inp
        if inp is not None and res is not None:
            out[ep] = (inp, res)
    return out


def _add_typed_route(app: FastAPI, endpoint: str, inp: dict[str, Any], out: dict[str, Any],
                     read_body: Any, run: Any, store: dict[str, Any]) -> None:
    in_ref = _hoist(inp, store)
    out_ref = _hoist(out, store)
    request_schema = {
        "type": "object", "additionalProperties": False,
        "properties": {"docs": {"type": "array", "items": in_ref},
                       "parameters": {"type": "object"},
                       "target_executor": {"type": "string"}},
    }
    response_schema = {
        "type": "object",
        "properties": {"docs": {"type": "array", "items": out_ref}, "parameters": {"type": "object"},
                       "results": {"type": "object"}},
    }

    async def typed(request: Request) -> JSONResponse:
        body = await read_body(request, _Body)
        response: JSONResponse = await run(endpoint, body, request)
        return response

    app.add_api_route(
        endpoint, typed, methods=["POST"], summary=f"Send docs to {endpoint}",
        operation_id=f"post_{endpoint.strip('/').replace('/', '_') or 'root'}",
        openapi_extra={"requestBody": {"required": True,
                                       "content": {"application/json": {"schema": request_schema}}}},
        responses={200: {"description": "the docs after the Flow",
                         "content": {"application/json": {"schema": response_schema}}}},
    )
