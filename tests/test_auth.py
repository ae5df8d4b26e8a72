"""Token auth at the gateway (issue 7): both front doors refuse a request without the token before any
of it is processed; /health and the gRPC health check stay open; the token can be switched at runtime."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestra_nb import Doc, DocList, Executor, Flow, requests
from orchestra_nb.errors import BadRequestError, TransportError
from orchestra_nb.wire import codec
from orchestra_nb.wire._generated.orchestra_pb2 import DataRequest
from tests.helpers import poll_for

TOKEN = "s3cret-token"


class Recorder(Executor):
    """Appends one line per call to `path`: proof of what reached an executor."""

    def __init__(self, path: str = "", **kwargs: Any) -> None:
        self.path = path

    @requests(on="/record")
    def record(self, docs: DocList[Doc]) -> None:
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()} {len(docs)}\n")
        for d in docs:
            d.text = (d.text or "").upper()


def http_call(base: str, path: str, body: dict[str, Any] | None = None, *,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request; returns (status, parsed JSON body or None)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json",
                                                                      **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return int(exc.code), json.loads(raw) if raw else None


def grpc_call(address: str, endpoint: str, texts: list[str], token: str | None = None) -> list[str]:
    """A raw gRPC Call (no Client in between), with `authorization` metadata when `token` is given."""
    request = DataRequest()
    request.header.request_id = "test"
    request.header.endpoint = endpoint
    request.header.parameters = b"{}"
    request.docs = codec.encode([Doc(text=t) for t in texts])
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/orchestra.Orchestra/Call", request_serializer=DataRequest.SerializeToString,
                                   response_deserializer=DataRequest.FromString)
        reply = call(request, metadata=metadata, timeout=20)
    return [d["text"] for d in codec.decode(reply.docs)]


def auth_is(base: str, on: bool, token: str = TOKEN) -> None:
    """Wait until the gateway's token switch (sent over its control channel) has taken effect."""
    want = 401 if on else 200
    poll_for(lambda: http_call(base, "/status")[0] == want, timeout=10, what=f"/status to answer {want}")
    if on:
        assert http_call(base, "/status", headers={"Authorization": f"Bearer {token}"})[0] == 200


def recorded(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_without_token_nothing_is_processed_on_either_front_door(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    flow = Flow(protocol=["grpc", "http"]).add(uses=Recorder, name="rec", uses_with={"path": str(log)})
    with flow as f:
        base = f"http://127.0.0.1:{f.ports['http']}"
        grpc_address = f"127.0.0.1:{f.ports['grpc']}"
        f.set_token(TOKEN)
        auth_is(base, on=True)

        for token in (None, "wrong", TOKEN + "x", ""):
            with pytest.raises(grpc.RpcError) as info:
                grpc_call(grpc_address, "/record", ["a"], token=token)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "token" in (info.value.details() or "")
        body = {"on": "/record", "docs": [{"text": "a"}]}
        refused = [
            http_call(base, "/post", body),
            http_call(base, "/post", body, headers={"Authorization": "Bearer wrong"}),
            http_call(base, "/post", body, headers={"Authorization": TOKEN}),  # no "Bearer " scheme
            http_call(base, "/post?token=wrong", body),
            http_call(base, "/record", {"docs": [{"text": "a"}]}),  # the typed route
            http_call(base, "/status"),
            http_call(base, "/ready"),
        ]
        assert [status for status, _ in refused] == [401] * len(refused)
        assert "Authorization: Bearer" in refused[0][1]["error"]["message"]
        assert recorded(log) == []  # nothing of any refused request reached the executor

        # what stays open: liveness on HTTP, the health service on gRPC
        assert http_call(base, "/health") == (200, {"status": "ok"})
        with grpc.insecure_channel(grpc_address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING

        # with the token every path works, and each call reaches the executor exactly once
        assert grpc_call(grpc_address, "/record", ["a"], token=TOKEN) == ["A"]
        status, data = http_call(base, "/post", body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert (status, [d["text"] for d in data["docs"]]) == (200, ["A"])
        status, data = http_call(base, f"/record?token={TOKEN}", {"docs": [{"text": "b"}]})
        assert (status, [d["text"] for d in data["docs"]]) == (200, ["B"])
        assert f.post("/record", [Doc(text="c")]).texts == ["C"]  # the Flow's own client carries it
        assert len(recorded(log)) == 4


def test_token_given_at_creation_and_switched_off_at_runtime() -> None:
    with Flow(protocol=["grpc", "http"], token=TOKEN).add(name="echo") as f:
        base = f"http://127.0.0.1:{f.ports['http']}"
        assert http_call(base, "/status")[0] == 401  # on from the first request
        assert f.post("/", [Doc(text="x")]).texts == ["x"]
        from orchestra_nb import Client

        with Client(port=f.ports["grpc"]) as anonymous, pytest.raises(TransportError, match="UNAUTHENTICATED"):
            anonymous.post("/", [Doc(text="x")])
        with Client(port=f.ports["http"], protocol="http") as anonymous, \
                pytest.raises(BadRequestError, match="HTTP 401"):
            anonymous.post("/", [Doc(text="x")])
        with Client(port=f.ports["grpc"], token=TOKEN) as client:
            assert client.post("/", [Doc(text="y")]).texts == ["y"]

        f.set_token(None)
        auth_is(base, on=False)
        assert grpc_call(f"127.0.0.1:{f.ports['grpc']}", "/", ["z"]) == ["z"]
        f.set_token("other")
        auth_is(base, on=True, token="other")
        assert http_call(base, "/status", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 401
