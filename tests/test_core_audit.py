"""Audit of issues 2 and 3 as a demanding user: edge inputs and misuse of Deployment, Flow and Client.

Tests marked `xfail(strict=True)` show a bug found by the audit; each reason names the fix. When the fix
lands the test passes, strict xfail turns that into a failure, and the marker is removed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from orchestra_nb import Doc, Flow
from orchestra_nb.wire import codec
from tests.executors import Params, Stat, Tagger


@pytest.fixture(scope="module")
def flow() -> Iterator[Flow]:
    f = (Flow(protocol=["grpc", "http"])
         .add(uses=Stat, name="s")
         .add(uses=Params, name="a")
         .add(uses=Params, name="b", replicas=2, shards=2, polling="ALL"))
    with f:
        yield f


def test_parameters_addressed_to_one_executor_reach_only_it(flow: Flow) -> None:
    out = flow.post("/any", Doc(id="1"), parameters={"a__k": 1, "g": 2})
    assert out[0].tags["a"] == {"g": 2, "k": 1}
    assert out[0].tags["b"] == {"g": 2}


def test_endpoints_named_like_gateway_routes_still_reach_the_executor(flow: Flow) -> None:
    import httpx

    assert flow.post("/status", Doc()).texts == ["status-handler"]
    assert flow.post("/post", Doc()).texts == ["post-handler"]
    base = f"http://127.0.0.1:{flow.ports['http']}"
    assert httpx.get(f"{base}/status", timeout=10).json()["name"] == flow.name  # the gateway's own route
    r = httpx.post(f"{base}/post", json={"on": "/post", "docs": [{}]}, timeout=10)
    assert r.status_code == 200 and r.json()["docs"][0]["text"] == "post-handler"


def test_many_threads_and_another_event_loop_post_at_once(flow: Flow) -> None:
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            assert flow.post("/any", Doc(id=str(i), text=str(i)))[0].text == str(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors

    async def gather() -> list[str]:
        outs = await asyncio.gather(*(flow.post_async("/any", Doc(text=str(i))) for i in range(50)))
        return [o[0].text or "" for o in outs]

    assert asyncio.run(gather()) == [str(i) for i in range(50)]


def test_shards_with_replicas_merge_every_doc(flow: Flow) -> None:
    out = flow.post("/any", [Doc(id=str(i)) for i in range(5)])
    assert [d.id for d in out] == [str(i) for i in range(5)]
    assert len(flow.status()["executors"]["b"]) == 4


@pytest.mark.parametrize("dtype", [np.float16, np.bool_, np.complex64, np.uint8, ">f4", np.float64])
def test_unusual_dtypes_round_trip_in_the_codec(dtype: object) -> None:
    arr = np.arange(6).reshape(2, 3).astype(dtype)  # type: ignore[call-overload]
    back = codec.decode(codec.encode([Doc(tensor=arr)]))[0]["tensor"]
    assert back.dtype == arr.dtype and np.array_equal(back, arr)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
def test_arrays_with_an_empty_dimension_round_trip(shape: tuple[int, ...]) -> None:
    arr = np.zeros(shape, dtype=np.float32)
    back = codec.decode(codec.encode([Doc(tensor=arr)]))[0]["tensor"]
    assert back.shape == shape and back.dtype == np.float32


def test_an_empty_list_of_inputs_gives_an_empty_answer(flow: Flow) -> None:
    out = flow.post("/any", [])
    assert len(out) == 0


def test_an_async_generator_can_be_the_inputs(flow: Flow) -> None:
    async def docs() -> AsyncIterator[Doc]:
        for i in range(3):
            yield Doc(text=str(i))

    async def main() -> list[str]:
        out = await flow.post_async("/any", docs())
        return [d.text or "" for d in out]

    assert asyncio.run(main()) == ["0", "1", "2"]


def test_parameters_that_are_not_json_say_so(flow: Flow) -> None:
    with pytest.raises(TypeError, match="parameters"):
        flow.post("/any", Doc(), parameters={"threshold": np.float32(0.5)})


def test_a_non_numeric_tensor_over_http_is_a_422(flow: Flow) -> None:
    import httpx

    r = httpx.post(f"http://127.0.0.1:{flow.ports['http']}/post", timeout=10,
                   json={"on": "/any", "docs": [{"tensor": [1, "a"]}]})
    assert r.status_code == 422, r.text
    assert "tensor" in r.json()["error"]["message"]


def test_a_dead_gateway_is_named_when_posting() -> None:
    import os
    import signal

    from orchestra_nb.errors import OrchestraError
    from tests.helpers import poll_for

    with Flow(name="audit-gateway").add(uses=Tagger, name="t") as f:
        gateway = f._supervisor.gateway
        assert gateway is not None
        os.kill(gateway.pid, signal.SIGKILL)
        poll_for(lambda: gateway.state == "exited", timeout=10, what="the gateway to be seen exited")
        with pytest.raises(OrchestraError, match=r"gateway exited.*start\(\)"):
            f.post("/x", Doc())


CLOSED = """
import socket, sys
from orchestra_nb import Client, Doc
from orchestra_nb.errors import TransportError
with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
try:
    Client(port=port, protocol=sys.argv[1]).post('/x', Doc())
except TransportError as exc:
    print('CLEAR', exc)
"""


@pytest.mark.parametrize("protocol", [
    "grpc",
    "http",
])
def test_a_client_to_a_closed_gateway_fails_fast(tmp_path: Path, protocol: str) -> None:
    script = tmp_path / "closed.py"
    script.write_text(textwrap.dedent(CLOSED))
    try:
        out = subprocess.run([sys.executable, str(script), protocol], capture_output=True, text=True,
                             timeout=15, cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Client(protocol={protocol!r}).post to a closed port still waits after 15 s")
    assert "CLEAR" in out.stdout, out.stderr


def test_tagger_flow_rebuilt_under_the_same_name_serves() -> None:
    for _ in range(2):
        with Flow(name="audit-same").add(uses=Tagger, name="t") as f:
            assert f.post("/x", Doc(text="y")).texts == ["y"]
