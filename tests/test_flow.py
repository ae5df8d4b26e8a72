"""Flow and Gateway: DAG topologies over gRPC and HTTP, shards, failures (issue 3)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestra_nb import Doc, Flow
from orchestra_nb.errors import ExecutorError, TopologyError, TransportError
from tests.executors import Embed, Failing, Matcher, Slow, Tagger, Typed, Upper
from tests.helpers import pid_alive, poll_for


def http_post(flow: Flow, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{flow.ports['http']}{path}", json=body, timeout=30, **kwargs)


def paths(docs: Any) -> list[list[str]]:
    return [d.tags["path"] if hasattr(d, "tags") else d["tags"]["path"] for d in docs]


@pytest.fixture(scope="module")
def diamond() -> Iterator[Flow]:
    f = (Flow(protocol=["grpc", "http"])
         .add(uses=Tagger, name="a")
         .add(uses=Tagger, name="b", needs="a")
         .add(uses=Embed, name="c", needs="a")
         .add(uses=Tagger, name="d", needs=["b", "c"]))
    with f:
        yield f


def test_chain_of_three_over_grpc_and_http() -> None:
    f = Flow(protocol=["grpc", "http"]).add(uses=Tagger, name="one").add(uses=Tagger, name="two").add(
        uses=Upper, name="three")
    with f:
        out = f.post("/upper", [Doc(text="x"), Doc(text="y")])
        assert out.texts == ["X", "Y"]
        assert paths(out) == [["one", "two"], ["one", "two"]]
        r = http_post(f, "/upper", {"docs": [{"text": "h"}]})
        assert r.status_code == 200, r.text
        assert r.json()["docs"][0]["text"] == "H" and r.json()["docs"][0]["tags"]["path"] == ["one", "two"]
        r = http_post(f, "/post", {"on": "/upper", "docs": [{"text": "p"}], "parameters": {"k": 1}})
        assert r.status_code == 200 and r.json()["docs"][0]["text"] == "P"
        # a linear chain forwards the payload without decoding it in the gateway
        before = f.status()["decoded_payloads"]
        for _ in range(5):
            f.post("/upper", Doc(text="z"))
        assert f.status()["decoded_payloads"] == before


def test_diamond_merges_branches(diamond: Flow) -> None:
    out = diamond.post("/x", [Doc(id="1", text="ab"), Doc(id="2", text="abc")])
    assert [d.id for d in out] == ["1", "2"]
    for d, n in zip(out, (2, 3), strict=True):
        assert d.tags["seen_a"] and d.tags["seen_b"] and d.tags["seen_d"]
        assert list(d.embedding) == [0.0, n, 2.0 * n, 3.0 * n]  # c's field filled in by the join
        assert d.tags["path"] == ["a", "b", "d"]
    decoded = diamond.status()["decoded_payloads"]
    assert decoded >= 1  # the join had to look inside
    r = http_post(diamond, "/post", {"on": "/x", "docs": [{"id": "h", "text": "abcd"}]})
    assert r.status_code == 200
    doc = r.json()["docs"][0]
    assert doc["embedding"] == [0.0, 4.0, 8.0, 12.0] and doc["tags"]["seen_d"] is True


def test_target_executor_limits_the_path(diamond: Flow) -> None:
    out = diamond.post("/x", Doc(text="t"), target_executor="^(a|d)$")
    assert out[0].tags["path"] == ["a", "d"] and out[0].embedding is None


def test_status_reports_topology(diamond: Flow) -> None:
    status = diamond.status()
    assert status["topology"]["d"]["needs"] == ["b", "c"]
    assert set(status["executors"]) == {"a", "b", "c", "d"}
    assert all(r["state"] == "ready" for reps in status["executors"].values() for r in reps)
    r = httpx.get(f"http://127.0.0.1:{diamond.ports['http']}/ready", timeout=10)
    assert r.status_code == 200 and r.json()["ready"] is True
    assert httpx.get(f"http://127.0.0.1:{diamond.ports['http']}/health", timeout=10).json() == {"status": "ok"}


def test_floating_executor_does_not_delay_and_when_filters(tmp_path: Any) -> None:
    f = (Flow(protocol=["grpc", "http"])
         .add(uses=Tagger, name="main")
         .add(uses=Slow, name="audit", needs="gateway", floating=True)
         .add(uses=Tagger, name="english", needs="main", when={"tags.lang": {"$eq": "en"}}))
    with f:
        def audited() -> int:
            return int(f.status()["executors"]["audit"][0]["stats"]["requests"])

        out = f.post("/slow", [Doc(id="1", tags={"lang": "en"}), Doc(id="2", tags={"lang": "de"})],
                     parameters={"seconds": 3})
        assert audited() == 0  # the answer came back while the floating executor was still at work
        poll_for(lambda: audited() == 1, timeout=15, what="the floating executor to finish")
        assert [d.id for d in out] == ["1"]
        assert out[0].tags["path"] == ["main", "english"]
        r = http_post(f, "/post", {"on": "/x", "docs": [{"id": "e", "tags": {"lang": "en"}},
                                                         {"id": "f", "tags": {"lang": "fr"}}]})
        assert [d["id"] for d in r.json()["docs"]] == ["e"]


def test_openapi_lists_typed_endpoints() -> None:
    f = Flow(protocol="http").add(uses=Typed, name="typed").add(uses=Upper, name="upper")
    with f:
        base = f"http://127.0.0.1:{f.ports['http']}"
        spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
        for ep in ("/typed", "/upper", "/a", "/b", "/post"):
            assert ep in spec["paths"], ep
        body = spec["paths"]["/typed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["docs"]["items"] == {"$ref": "#/components/schemas/MyDoc"}
        assert "title" in spec["components"]["schemas"]["MyDoc"]["properties"]
        assert httpx.get(f"{base}/docs", timeout=10).status_code == 200
        r = httpx.post(f"{base}/typed", json={"docs": [{"title": "big news"}]}, timeout=10)
        assert r.status_code == 200 and r.json()["docs"][0]["title"] == "Big News"
        r = httpx.post(f"{base}/typed", json={"docs": [{"text": "no title"}]}, timeout=10)
        assert r.status_code == 422 and r.json()["error"]["executor"] == "typed"


def test_shards_all_merge_and_any_hits_one() -> None:
    f = Flow().add(uses=Matcher, name="index", shards=2, polling={"/search": "ALL", "*": "ANY"})
    with f:
        out = f.post("/search", [Doc(id="q")])
        doc = out[0]
        assert "shard0" in doc.tags and "shard1" in doc.tags
        assert [m.id for m in doc.matches] == ["m1-1", "m1-0", "m0-1", "m0-0"]  # re-sorted by score
        seen = [f.post("/which", Doc())[0].tags["shard"] for _ in range(20)]
        assert set(seen) <= {0, 1} and all(isinstance(s, int) for s in seen)
        stats = f.status()["executors"]["index"]
        which_total = sum(r["stats"]["requests"] for r in stats)
        assert which_total == 2 + 20  # ALL hit both shards once; every ANY request exactly one


def test_topology_errors_name_the_problem() -> None:
    with pytest.raises(TopologyError, match="'nope'"):
        Flow().add(name="a").add(name="b", needs="nope")
    with pytest.raises(TopologyError, match="already in the Flow"):
        Flow().add(name="a").add(name="a")
    from orchestra_nb.spec.models import ExecutorSpec, FlowSpec
    from orchestra_nb.spec.topology import validate_topology

    spec = FlowSpec(executors=[ExecutorSpec(name="a", needs=["b"]), ExecutorSpec(name="b", needs=["a"])])
    with pytest.raises(TopologyError, match="cycle: a -> b -> a"):
        validate_topology(spec)


def test_needs_all_joins_open_branches() -> None:
    f = Flow().add(uses=Tagger, name="x", needs="gateway").add(uses=Tagger, name="y", needs="gateway").needs_all()
    assert f.executors[-1].needs == ["x", "y"]
    with f:
        out = f.post("/p", Doc(id="1"))
        assert out[0].tags["seen_x"] and out[0].tags["seen_y"]


def test_executor_failure_names_executor_over_grpc_and_http() -> None:
    f = Flow(protocol=["grpc", "http"]).add(uses=Tagger, name="pre").add(uses=Failing, name="fragile")
    with f:
        with pytest.raises(ExecutorError, match="fragile"):
            f.post("/fail", Doc())
        r = http_post(f, "/post", {"on": "/fail", "docs": [{}]})
        assert r.status_code == 500 and r.json()["error"]["executor"] == "fragile"
        assert f.post("/ok", Doc()).texts == ["ok"]


def test_unreachable_executor_and_timeout_are_clear_errors() -> None:
    f = Flow(protocol=["grpc", "http"]).add(uses=Slow, name="slow", timeout_send=0.5, restart="never")
    with f:
        with pytest.raises(TransportError, match=r"'slow'.*timeout_send=0.5"):
            f.post("/slow", Doc(), parameters={"seconds": 2})
        r = http_post(f, "/post", {"on": "/slow", "docs": [{}], "parameters": {"seconds": 2}})
        assert r.status_code == 504
        pid = f._supervisor.workers[next(iter(f._supervisor.workers))].pid
        os.kill(pid, signal.SIGKILL)
        poll_for(lambda: not pid_alive(pid), timeout=5, what="replica to die")
        with pytest.raises(TransportError, match="'slow' could not be reached"):
            f.post("/slow", Doc(), parameters={"seconds": 0})
        assert http_post(f, "/post", {"on": "/slow", "docs": [{}]}).status_code == 503


def test_sigkill_of_one_replica_loses_no_request() -> None:
    f = Flow().add(uses=Tagger, name="t", replicas=2)
    with f:
        victim = next(iter(f._supervisor.workers.values())).pid
        killer = threading.Timer(0.3, os.kill, args=(victim, signal.SIGKILL))
        killer.start()
        try:
            for i in range(1000):
                out = f.post("/x", Doc(text=str(i)))
                assert out[0].text == str(i)
        finally:
            killer.cancel()
        assert not pid_alive(victim)
        # the killed replica comes back by itself
        poll_for(lambda: all(c.state == "ready" and c.pid != victim for c in f._supervisor.workers.values()),
                 timeout=20, what="replica restart")
        assert any(c.restarts == 1 for c in f._supervisor.workers.values())


@pytest.mark.parametrize(("prefetch", "bounded"), [(1, True), (0, False)])
def test_prefetch_bounds_requests_in_flight(prefetch: int, bounded: bool) -> None:
    from orchestra_nb import Client
    from tests.executors import Concurrency

    f = Flow(prefetch=prefetch).add(uses=Concurrency, name="c")
    with f, Client(port=f.port) as client:
        out = client.post("/x", [Doc() for _ in range(8)], request_size=1, prefetch=8,
                          parameters={"seconds": 0.1})
        most = max(r["most"] for r in out.results["c"])
        assert (most == 1) if bounded else (most > 1)


def test_binary_blobs_cross_the_http_door_as_base64() -> None:
    import base64

    from orchestra_nb import Client
    from tests.executors import Echo

    blob = bytes(range(256))
    with Flow(protocol=["grpc", "http"]).add(uses=Echo, name="e") as f:
        r = http_post(f, "/post", {"on": "/x", "docs": [{"blob": base64.b64encode(blob).decode()}]})
        assert r.status_code == 200 and base64.b64decode(r.json()["docs"][0]["blob"]) == blob
        assert http_post(f, "/post", {"on": "/x", "docs": [{"blob": "not base64!"}]}).status_code == 422
        with Client(port=f.ports["http"], protocol="http") as client:
            assert client.post("/x", Doc(blob=blob))[0].blob == blob
        assert f.post("/x", Doc(blob=blob))[0].blob == blob


def test_bad_or_unmatched_target_executor_is_a_bad_request(diamond: Flow) -> None:
    from orchestra_nb.errors import BadRequestError

    with pytest.raises(BadRequestError, match=r"not a valid regular expression"):
        diamond.post("/x", Doc(), target_executor="([")
    with pytest.raises(BadRequestError, match=r"matches no executor; the executors are \['a', 'b', 'c', 'd'\]"):
        diamond.post("/x", Doc(), target_executor="^zzz$")
    for pattern in ("([", "^zzz$"):
        r = http_post(diamond, "/post", {"on": "/x", "docs": [{}], "target_executor": pattern})
        assert r.status_code == 400 and "executors" in r.json()["error"]["message"]
    r = httpx.post(f"http://127.0.0.1:{diamond.ports['http']}/nowhere/at/all", json={}, timeout=10)
    assert r.status_code == 404 and "no route '/nowhere/at/all'" in r.json()["error"]["message"]
    r = http_post(diamond, "/post", [1, 2])
    assert r.status_code == 422 and "must be a JSON object" in r.json()["error"]["message"]
    assert diamond.post("/x", Doc(text="ok")).texts == ["ok"]
