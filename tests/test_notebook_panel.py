"""The panel and the HTML display, driven without a kernel.

Scripted snapshots and log lines go through the same seams the refresh thread uses (`Panel.apply`,
`Panel.add_line`); a real Flow checks the live refresh, the listener wiring and that the thread stops.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("ipywidgets")

from orchestra_nb import Doc, Executor, Flow, requests
from orchestra_nb.notebook.display import endpoints, repr_html
from orchestra_nb.notebook.panel import Panel, make_panel
from tests.helpers import poll_for


class Upper(Executor):
    @requests(on="/up")
    def up(self, docs: Any, parameters: Any) -> None:
        for d in docs:
            d.text = d.text.upper()


def _snap(state: str, executors: dict[str, Any] | None = None, processes: list[dict[str, Any]] | None = None,
          error: str | None = None) -> dict[str, Any]:
    return {"name": "scripted", "kind": "Flow", "state": state, "ports": {"grpc": 5555, "http": 5556},
            "protocols": ["grpc", "http"], "executors": executors or {}, "processes": processes or [],
            "error": error}


def _replica(name: str, replica: int, state: str, pid: int, requests: int, errors: int,
             p50: float | None, p99: float | None) -> dict[str, Any]:
    return {"name": name, "replica": replica, "shard": 0, "pid": pid, "device": "cuda:0", "state": state,
            "address": f"127.0.0.1:{7000 + replica}", "endpoints": {"/up": {}},
            "stats": {"requests": requests, "errors": errors, "p50_ms": p50, "p99_ms": p99}}


@pytest.fixture
def scripted() -> Iterator[Panel]:
    flow = Flow(name="scripted", protocol=["grpc", "http"]).add(uses=Upper, name="up", replicas=2).add(name="b")
    panel = Panel(flow, start=False)
    yield panel
    panel.close()


def test_status_tab_follows_a_scripted_event_stream(scripted: Panel) -> None:
    scripted.apply(_snap("starting", processes=[
        {"key": "up/0", "pid": 101, "state": "ready", "restarts": 0},
        {"key": "up/1", "pid": 102, "state": "starting", "restarts": 0},
        {"key": "b/0", "pid": 103, "state": "failed", "restarts": 5},
        {"key": "gateway", "pid": 104, "state": "starting", "restarts": 0}]))
    html = scripted.status_html.value
    assert 'data-key="up/0"' in html and 'data-key="up/1"' in html and 'data-key="b/0"' in html
    assert html.count('data-state="starting"') == 2  # up/1 and the gateway
    assert 'data-state="failed"' in html and ">103<" in html and ">5<" in html
    assert 'data-state="starting"' in scripted.header.value

    scripted.apply(_snap("ready", executors={
        "up": [_replica("up", 0, "ready", 101, 7, 1, 2.5, 9.75), _replica("up", 1, "ready", 102, 3, 0, None, None)],
        "b": [_replica("b", 0, "ready", 103, 10, 0, 0.1, 0.2)]}))
    html = scripted.status_html.value
    assert html.count('data-state="ready"') == 3
    assert "<td>7</td><td>1</td><td>2.5</td><td>9.8</td>" in html  # requests, errors, p50, p99
    assert "cuda:0" in html
    eps = scripted.endpoints_html.value
    assert "grpc://127.0.0.1:5555" in eps and "http://127.0.0.1:5556/docs" in eps
    assert "&quot;on&quot;: &quot;/up&quot;" in eps  # the curl line posts to a real endpoint
    assert not scripted.stop_button.disabled

    scripted.apply(_snap("ready", error="status unavailable: deadline exceeded"))
    assert "deadline exceeded" in scripted.status_html.value

    scripted.apply(_snap("closed"))
    assert scripted.stop_button.disabled
    assert "not serving" in scripted.endpoints_html.value


def test_logs_tab_filters_by_process_and_level(scripted: Panel) -> None:
    scripted.add_line("up/0", "12:00:00 INFO    up/0: serving up")
    scripted.add_line("up/1", "12:00:01 ERROR   up/1: handler failed")
    scripted.add_line("up/1", "Traceback (most recent call last):")
    scripted.add_line("b/0", "12:00:02 WARNING b/0: slow")
    scripted.add_line("gateway", "12:00:03 DEBUG   gateway: <b>tag</b>")

    assert len(scripted.log_lines()) == 5
    assert scripted.log_lines("up", "ERROR") == ["12:00:01 ERROR   up/1: handler failed",
                                                 "Traceback (most recent call last):"]
    assert scripted.log_lines("b", "WARNING") == ["12:00:02 WARNING b/0: slow"]
    assert scripted.log_lines("all", "WARNING") == [*scripted.log_lines("up", "ERROR"), "12:00:02 WARNING b/0: slow"]

    scripted.log_source.value = "gateway"  # the widget re-renders on a filter change
    assert "&lt;b&gt;tag&lt;/b&gt;" in scripted.log_html.value and "serving up" not in scripted.log_html.value
    scripted.log_level.value = "INFO"
    assert "tag" not in scripted.log_html.value


def test_log_buffer_is_bounded() -> None:
    flow = Flow(name="bounded").add(name="a")
    panel = Panel(flow, start=False, log_lines=10)
    try:
        for i in range(50):
            panel.add_line("a/0", f"12:00:00 INFO    line {i}")
        assert panel.log_lines() == [f"12:00:00 INFO    line {i}" for i in range(40, 50)]
    finally:
        panel.close()


def test_panel_tracks_a_running_flow_and_stops_with_it() -> None:
    flow = Flow(name=f"panel-live-{os.getpid()}", protocol=["grpc", "http"]).add(
        uses=Upper, name="up", replicas=2).add(name="b")
    panel = Panel(flow, interval=0.2, min_gap=0.05)
    try:
        assert 'data-state="created"' in panel.header.value
        flow.start()
        for _ in range(3):
            assert flow.post("/up", [Doc(text="a")]).texts == ["A"]
        poll_for(lambda: panel.status_html.value.count('data-state="ready"') == 4, timeout=10,
                 what="3 ready replicas and a ready gateway in the Status tab")
        poll_for(lambda: "requests 3" in panel.status_html.value, timeout=10, what="gateway request count")
        poll_for(lambda: "serving up" in panel.log_html.value and "serving b" in panel.log_html.value,
                 timeout=10, what="both executors' startup lines in the Logs tab")
        assert f"http://127.0.0.1:{flow.ports['http']}/docs" in panel.endpoints_html.value
        assert panel.add_line in flow._listeners
        assert panel.running

        panel._on_stop(panel.stop_button)  # the Stop button closes the orchestration
        assert flow.state.value == "closed"
        poll_for(lambda: not panel.running, timeout=10, what="the refresh thread to stop")
        assert 'data-state="closed"' in panel.header.value
        assert panel.add_line not in flow._listeners
    finally:
        flow.close()
        panel.stop()


def test_panel_shows_readiness_live_after_start_without_waiting() -> None:
    flow = Flow(name=f"panel-nowait-{os.getpid()}").add(uses=Upper, name="up", replicas=2)
    flow.start(wait=False)
    panel = Panel(flow, interval=0.2, min_gap=0.05)
    try:
        assert 'data-state="starting"' in panel.header.value  # rendered before any replica is up
        seen: set[str] = set()

        def ready() -> bool:
            html = panel.status_html.value
            seen.update(k for k in ("up/0", "up/1") if f'data-key="{k}"' in html)
            return 'data-state="ready"' in panel.header.value and html.count('data-state="ready"') == 3

        poll_for(ready, timeout=30, what="the panel to turn ready on its own")
        assert seen == {"up/0", "up/1"}
        assert flow.post("/up", [Doc(text="late")]).texts == ["LATE"]
    finally:
        flow.close()
        panel.stop()


def test_make_panel_is_cached_per_orchestration() -> None:
    flow = Flow(name="cached").add(name="a")
    widget = make_panel(flow)
    try:
        assert make_panel(flow) is widget
        assert [c.__class__.__name__ for c in widget.children] == ["HBox", "Tab", "HTML"]
        titles = [widget.children[1].get_title(i) for i in range(len(widget.children[1].children))]
        scale = ["Scale"] if callable(getattr(flow, "scale", None)) else []
        assert titles == ["Status", "Logs", "Endpoints", *scale]
    finally:
        widget.close()


@pytest.mark.skipif(not callable(getattr(Flow, "scale", None)), reason="Flow.scale is not implemented yet")
def test_scale_tab_calls_the_runtime() -> None:
    flow = Flow(name=f"panel-scale-{os.getpid()}").add(uses=Upper, name="up")
    with flow:
        panel = Panel(flow, start=False)
        try:
            panel.scale_inputs["up"].value = 2
            panel.scale("up")
            assert "2 replica" in panel.scale_message.value
            poll_for(lambda: len(flow.status()["executors"]["up"]) == 2, timeout=30, what="2 replicas of up")
        finally:
            panel.close()


def test_html_fallback_without_ipywidgets(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = Flow(name="nowidgets", protocol=["http"]).add(name="a")
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # what an environment without the extra sees
    html = repr_html(flow)
    assert "nowidgets" in html and 'data-state="created"' in html
    assert endpoints(flow) == {}
    with pytest.raises(ImportError, match=r"pip install 'orchestra-nb\[notebook\]'"):
        flow.panel()
