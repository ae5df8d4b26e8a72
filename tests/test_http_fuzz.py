"""Malformed HTTP input gets a 4xx and never a gateway 5xx or crash (issue 3)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestra_nb import Flow
from tests.executors import Echo, Typed


@pytest.fixture(scope="module")
def http_flow() -> Iterator[tuple[Flow, httpx.Client]]:
    f = Flow(protocol="http", max_body_size=64 * 1024).add(uses=Typed, name="typed").add(uses=Echo, name="echo")
    with f, httpx.Client(base_url=f"http://127.0.0.1:{f.ports['http']}", timeout=30) as client:
        yield f, client


def test_each_kind_of_bad_input_gets_its_4xx(http_flow: tuple[Flow, httpx.Client]) -> None:
    _, client = http_flow
    ok = {"docs": [{"text": "a"}]}
    cases: list[tuple[dict[str, Any], int]] = [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        ({"content": b'{"docs": [{"text": NaN}]}', "headers": {"content-type": "application/json"}}, 400),
        ({"content": json.dumps(ok), "headers": {"content-type": "text/plain"}}, 415),
        ({"json": {"docs": "not a list"}}, 422),
        ({"json": {"docs": [{"id": 5}]}}, 422),
        ({"json": {"docs": [{"tensor": [[1, 2], [3]]}]}}, 422),
        ({"json": {"docs": [{"text": "x" * 70000}]}}, 413),
        ({"json": {"docs": [], "unknown_key": 1}}, 422),
    ]
    for kwargs, status in cases:
        r = client.post("/post", **{
            **kwargs, **({"json": {"on": "/x", **kwargs["json"]}} if "json" in kwargs else {})})
        assert r.status_code == status, (kwargs, r.status_code, r.text)
        assert "error" in r.json()
    assert client.post("/typed", json={"docs": [{"text": "no title"}]}).status_code == 422
    assert client.post("/nowhere", json=ok).status_code == 404
    assert client.post("/post", json={"on": "no-slash", "docs": []}).status_code == 422
    r = client.post("/typed", json={"docs": [{"title": "fine"}]})
    assert r.status_code == 200 and r.json()["docs"][0]["title"] == "Fine"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
doc_like = st.dictionaries(
    st.sampled_from(["id", "text", "tensor", "embedding", "tags", "uri", "blob", "matches", "scores", "title",
                     "$nd", "$b", "extra"]),
    json_values, max_size=5)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"docs": st.lists(doc_like, max_size=3)},
                          optional={"parameters": json_values, "on": json_values, "target_executor": json_values}),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])
@given(path=st.sampled_from(["/post", "/typed", "/post", "/typed"]), body=bodies,
       raw=st.one_of(st.none(), st.binary(max_size=64)),
       ctype=st.sampled_from(["application/json", "application/json", "text/plain", ""]))
def test_fuzzed_bodies_never_get_a_gateway_5xx(http_flow: tuple[Flow, httpx.Client], path: str, body: Any,
                                                 raw: bytes | None, ctype: str) -> None:
    _, client = http_flow
    content = raw if raw is not None else json.dumps(body).encode()
    r = client.post(path, content=content, headers={"content-type": ctype} if ctype else {})
    assert r.status_code < 500, (path, body, raw, r.status_code, r.text)
    assert isinstance(r.json(), dict)


def test_gateway_still_serves_after_fuzzing(http_flow: tuple[Flow, httpx.Client]) -> None:
    f, client = http_flow
    assert client.get("/health").status_code == 200
    r = client.post("/post", json={"on": "/typed", "docs": [{"title": "after"}]})
    assert r.status_code == 200 and r.json()["docs"][0]["title"] == "After"
    assert f.is_ready()
