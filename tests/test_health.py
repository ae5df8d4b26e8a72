"""Health and readiness (issue 9): the gRPC health service on the gateway and on every replica, HTTP
`/health` (liveness) and `/ready` (every replica reachable), `f.is_ready()`, `f.dry_run()` through the
whole graph, and `orchestra ping` — each checked both while all is well and after a replica went down
(`restart='never'` keeps it down, so "not ready" is a state the test can hold still)."""

from __future__ import annotations

import os
import signal

import grpc
import httpx
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestra_nb import Doc, Flow
from orchestra_nb.cli import cli
from orchestra_nb.errors import TransportError
from tests.executors import Tagger
from tests.helpers import poll_for


def grpc_health(address: str) -> str:
    """The serving status a gRPC health Check returns, or the error code's name."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def ping(address: str) -> int:
    return CliRunner().invoke(cli, ["ping", "--timeout", "2", address]).exit_code


def test_health_and_readiness_follow_the_replicas() -> None:
    f = (Flow(protocol=["grpc", "http"]).add(uses=Tagger, name="first")
         .add(uses=Tagger, name="last", restart="never"))
    with f:
        http = f"http://127.0.0.1:{f.ports['http']}"
        grpc_gateway = f"127.0.0.1:{f.ports['grpc']}"
        executors = {name: shards[0][0].partition("#")[0] for name, shards in f._supervisor.addresses.items()}

        # all well
        assert httpx.get(f"{http}/health", timeout=10).status_code == 200
        ready = httpx.get(f"{http}/ready", timeout=10)
        assert (ready.status_code, ready.json()) == (200, {"ready": True, "executors": {"first": True, "last": True}})
        assert grpc_health(grpc_gateway) == "SERVING"
        assert {name: grpc_health(a) for name, a in executors.items()} == {"first": "SERVING", "last": "SERVING"}
        assert [ping(f"grpc://{grpc_gateway}"), ping(f"{http}"), ping(executors["last"])] == [0, 0, 0]
        assert f.is_ready() is True
        assert f.dry_run() is True
        assert f.post("/x", Doc())[0].tags["path"] == ["first", "last"]

        # the last executor of the graph goes down and stays down
        victim = next(c for c in f._supervisor.workers.values() if c.key.startswith("last"))
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        poll_for(lambda: victim.done.is_set(), timeout=10, what="the exit to be noticed")

        ready = httpx.get(f"{http}/ready", timeout=10)
        assert (ready.status_code, ready.json()) == (503, {"ready": False, "executors": {"first": True, "last": False}})
        assert httpx.get(f"{http}/health", timeout=10).status_code == 200  # the gateway itself lives
        assert grpc_health(grpc_gateway) == "SERVING"
        assert grpc_health(executors["first"]) == "SERVING"
        assert grpc_health(executors["last"]) == "UNAVAILABLE"
        assert ping(executors["last"]) == 1 and ping(executors["first"]) == 0
        assert f.is_ready() is False
        with pytest.raises(TransportError, match="'last' could not be reached"):  # the whole graph
            f.dry_run()
