"""The panel and the HTML display, driven without a kernel.

Scripted snapshots and log lines go through the same seams the refresh thread uses (`Panel.apply`,
`Panel.add_line`); a real Flow checks the live refresh, the listener wiring and that the thread stops.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("ipywidgets")

from orchestra_nb import Doc, Executor, Flow, requests
from orchestra_nb.notebook.display import endpoints, repr_html
from orchestra_nb.notebook.panel import Panel, make_panel
from orchestra_nb.progress import PHASES, StartupProgress
from tests.executors import Slow
from tests.helpers import poll_for
from tests.test_progress import Sleepy


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


def test_panel_tracks_a_running_flow_through_stop_and_restart() -> None:
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
        poll_for(lambda: 'data-state="closed"' in panel.header.value, timeout=10, what="the closed state")
        assert panel.stop_button.disabled
        assert panel.running  # idle, waiting for the same Flow to be started again

        # started again in another cell: the same panel follows the new run, replicas with new pids
        old_pids = set(flow.pids())
        flow.start()
        assert flow.post("/up", [Doc(text="again")]).texts == ["AGAIN"]
        new_pids = set(flow.pids())
        assert not old_pids & new_pids
        poll_for(lambda: 'data-state="ready"' in panel.header.value
                 and panel.status_html.value.count('data-state="ready"') == 4,
                 timeout=10, what="the restarted Flow's ready replicas in the same panel")
        poll_for(lambda: all(re.search(rf"\b{pid}\b", panel.status_html.value) for pid in new_pids),
                 timeout=10, what="the new processes' pids in the Status tab")
        assert not panel.stop_button.disabled
        assert f"http://127.0.0.1:{flow.ports['http']}/docs" in panel.endpoints_html.value
        panel.stop()
        assert not panel.running
        assert panel.add_line not in flow._listeners
    finally:
        flow.close()
        panel.stop()


def test_panel_thread_ends_when_its_flow_is_garbage_collected() -> None:
    flow = Flow(name=f"panel-gc-{os.getpid()}").add(uses=Upper, name="up")
    panel = Panel(flow, interval=0.1, min_gap=0.02)
    try:
        flow.start()
        flow.close()
        poll_for(lambda: 'data-state="closed"' in panel.header.value, timeout=10, what="the closed state")
        assert panel.running
        del flow

        def ended() -> bool:
            gc.collect()  # the Flow and its supervisor refer to each other; the log readers finish draining
            return not panel.running
        poll_for(ended, timeout=10, what="the refresh thread to end with its Flow")
    finally:
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
        assert titles == ["Status", "Metrics", "Logs", "Endpoints", *scale]
    finally:
        widget.close()


def test_scale_tab_calls_the_runtime() -> None:
    flow = Flow(name=f"panel-scale-{os.getpid()}").add(uses=Upper, name="up")
    with flow:
        panel = Panel(flow, start=False)
        try:
            panel.scale_inputs["up"].value = 2
            panel.scale("up")
            assert "2 replica" in panel.scale_message.value
            poll_for(lambda: len(flow.status()["executors"]["up"]) == 2, timeout=30, what="2 replicas of up")
            panel.refresh()
            assert "2 replicas" in panel.topology_html.value  # the picture is redrawn for the new count
            panel.scale_inputs["up"].value = 5  # typed, not applied: a refresh keeps it
            panel.refresh()
            assert panel.scale_inputs["up"].value == 5
            flow.scale("up", 1)  # scaled elsewhere (code, %orchestra scale): the box follows
            panel.refresh()
            assert panel.scale_inputs["up"].value == 1
            assert "replicas" not in panel.topology_html.value
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


def _fills(picture: str) -> dict[str, str]:
    """Node title -> fill colour, read from either renderer's SVG (both name nodes like Graphviz)."""
    return dict(re.findall(r'class="node"[^>]*>\s*<title>([^<]+)</title>.*?fill="(#[0-9a-f]{6})"', picture, re.S))


def test_status_picture_is_coloured_by_state_and_redrawn_only_on_change(scripted: Panel) -> None:
    from orchestra_nb.plot import STATE_COLOURS

    procs = [{"key": "up/0", "pid": 1, "state": "ready"}, {"key": "up/1", "pid": 2, "state": "starting"},
             {"key": "b/0", "pid": 3, "state": "failed"}, {"key": "gateway", "pid": 4, "state": "ready"}]
    scripted.apply(_snap("starting", processes=procs))
    fills = _fills(scripted.topology_html.value)
    assert set(fills) == {"gateway", "gateway:out", "up", "b"}
    assert fills["up"] == STATE_COLOURS["starting"]  # the worst replica speaks for the executor
    assert fills["b"] == STATE_COLOURS["failed"] and fills["gateway"] == STATE_COLOURS["ready"]
    assert "<?xml" not in scripted.topology_html.value  # inline in HTML, no XML prolog
    drawn = scripted.topology_renders

    for _ in range(3):  # the same states again: no redraw (Graphviz is a subprocess)
        scripted.apply(_snap("starting", processes=procs))
    assert scripted.topology_renders == drawn

    ready = [{**p, "state": "ready"} for p in procs]
    scripted.apply(_snap("ready", processes=ready, executors={
        "up": [_replica("up", 0, "ready", 1, 0, 0, None, None),
               _replica("up", 1, "unreachable", 2, 0, 0, None, None)],
        "b": [_replica("b", 0, "ready", 3, 0, 0, None, None)]}))
    assert scripted.topology_renders == drawn + 1
    fills = _fills(scripted.topology_html.value)
    assert fills["b"] == STATE_COLOURS["ready"]
    assert fills["up"] == STATE_COLOURS["unreachable"]  # what the gateway sees counts too


def test_progress_bars_follow_the_phases_and_fold_when_ready(scripted: Panel) -> None:
    flow = scripted._orch()
    model = StartupProgress.for_spec(flow.flow_spec())
    flow.progress = model  # what start() sets; the panel picks up each new one
    scripted.refresh()

    def phase(name: str) -> str:
        found = re.findall(rf"data-executor='{name}' data-phase='([\w-]+)'", scripted.progress_html.value)
        assert len(found) == 1, scripted.progress_html.value
        return found[0]

    assert phase("up") == "waiting" and "scripted starting" in scripted.progress_html.value
    model.update("up/0", "spawning")
    model.update("up/1", "spawning")
    model.update("up/0", "loading", detail="model.bin")
    assert phase("up") == "spawning"  # pushed at once; the slowest replica is what the user waits for
    model.update("up/1", "loading")
    assert phase("up") == "loading" and "loading (model.bin)" in scripted.progress_html.value
    for key in ("up/0", "up/1", "b/0", "gateway"):
        model.update(key, "ready")
    model.finish(True)
    page = scripted.progress_html.value
    assert "data-executor" not in page and re.search(r"scripted ready after \d+\.\d s", page)

    failing = StartupProgress.for_spec(flow.flow_spec())
    flow.progress = failing  # a second start(): the panel follows the new model, not the old one
    scripted.refresh()
    assert phase("up") == "waiting"
    model.update("up/0", "failed")  # the old model no longer reaches the panel
    assert phase("up") == "waiting"
    failing.update("b/0", "failed", detail="RuntimeError: boom")
    failing.finish(False, "executor 'b' replica 0 failed: RuntimeError: boom")
    page = scripted.progress_html.value
    assert phase("b") == "failed" and re.search(r"scripted failed after \d+\.\d s: executor &#x27;b&#x27; replica 0 failed: "
                                                  r"RuntimeError: boom</div>", page)
    scripted.close()
    assert not failing._listeners  # closing the panel unsubscribes it


def test_metrics_tab_plots_scripted_counters() -> None:
    now = [100.0]
    flow = Flow(name="metrics").add(uses=Upper, name="up", replicas=2)
    panel = Panel(flow, start=False, clock=lambda: now[0])
    try:
        assert "appear here" in panel.metrics_html.value and panel.plot_data() == {}
        panel.apply(_snap("starting"))  # no counters while starting: nothing sampled
        assert panel.plot_data() == {}
        for t, (a, b, total) in enumerate([(0, 0, 0), (30, 10, 40), (30, 10, 40)]):
            now[0] = 100.0 + 2 * t
            snap = _snap("ready", executors={"up": [_replica("up", 0, "ready", 1, a, 0, 4.0, 8.0),
                                                   _replica("up", 1, "ready", 2, b, 0, 8.0, 20.0)]})
            snap["requests"] = total
            panel.apply(snap)
        data = panel.plot_data()
        assert data["up"]["requests"] == [0, 40, 40]
        assert data["up"]["rps"] == [None, 20.0, 0.0]
        assert data["up"]["p50_ms"] == [None, 5.0, None]  # weighted by new requests; a gap when idle
        assert data["up"]["p99_ms"] == [None, 20.0, None]
        assert data["gateway"]["rps"] == [None, 20.0, 0.0]
        page = panel.metrics_html.value
        assert page.count("<svg") == 4 and "<b>up</b>" in page and "20.0 /s" not in page  # last rate: 0
        assert "0.0 /s" in page and "5.0 ms" in page and "20.0 ms" in page
    finally:
        panel.close()


def test_scale_tab_reports_what_went_wrong(scripted: Panel) -> None:
    scripted.scale_inputs["up"].value = 3
    scripted.scale("up")  # the Flow is not running
    assert "color:#c62828" in scripted.scale_message.value and "created" in scripted.scale_message.value


def test_panel_shows_progress_picture_and_plots_of_a_real_flow() -> None:
    """start(wait=False) on a Flow whose executor sleeps in __init__: the panel's widget state goes
    through the start-up phases in order, the picture turns green, and a burst of requests shows in the
    Metrics tab with the latencies the slow executor really took."""
    from orchestra_nb.plot import STATE_COLOURS

    flow = Flow(name=f"panel-show-{os.getpid()}").add(
        uses=Sleepy, name="sleepy", uses_with={"seconds": 1.5}).add(uses=Slow, name="slow", needs="gateway")
    panel = Panel(flow, interval=0.2, min_gap=0.05)
    seen: list[str] = []

    def record(change: dict[str, Any]) -> None:
        seen.extend(re.findall(r"data-executor='sleepy' data-phase='(\w+)'", change["new"]))

    panel.progress_html.observe(record, names="value")
    try:
        flow.start(wait=False)
        flow.wait_ready(timeout=60)
        poll_for(lambda: "ready after" in panel.progress_html.value, timeout=10, what="the progress to fold")
        phases = [p for i, p in enumerate(seen) if i == 0 or seen[i - 1] != p]
        assert phases == list(PHASES), seen  # every phase, in order, pushed as it happened
        poll_for(lambda: set(_fills(panel.topology_html.value).values()) == {STATE_COLOURS["ready"]},
                 timeout=10, what="every node of the picture to be coloured ready")

        for i in range(12):
            flow.post("/slow", [Doc(text=str(i))], parameters={"seconds": 0.03})

        def burst_shown() -> bool:
            data = panel.plot_data().get("slow")
            return bool(data) and data["requests"][-1] == 12

        poll_for(burst_shown, timeout=10, what="12 requests of slow in the plot data")
        data = panel.plot_data()
        assert data["gateway"]["requests"][-1] == 12
        p50 = [v for v in data["slow"]["p50_ms"] if v is not None]
        p99 = [v for v in data["slow"]["p99_ms"] if v is not None]
        assert p50 and min(p50) >= 30.0 and max(p99) >= min(p50)
        assert max(r for r in data["slow"]["rps"] if r is not None) > 0
        assert "<b>slow</b>" in panel.metrics_html.value and "<b>sleepy</b>" in panel.metrics_html.value
    finally:
        flow.close()
        panel.stop()


def test_panel_shows_why_a_start_without_waiting_failed() -> None:
    """A replica that raises in __init__: the panel's progress ends red with the replica's error, the
    header says failed, and the refresh thread ends."""
    from orchestra_nb.errors import ExecutorStartupError
    from tests.executors import BrokenInit

    flow = Flow(name=f"panel-broken-{os.getpid()}").add(uses=BrokenInit, name="broken")
    flow.start(wait=False)
    panel = Panel(flow, interval=0.2, min_gap=0.05)
    try:
        with pytest.raises(ExecutorStartupError):
            flow.wait_ready(timeout=60)
        poll_for(lambda: "failed after" in panel.progress_html.value, timeout=10, what="the progress to end")
        page = panel.progress_html.value
        assert "data-executor='broken' data-phase='failed'" in page
        assert "cannot load the model: weights missing" in page  # the replica's own error, in the bar
        poll_for(lambda: 'data-state="failed"' in panel.header.value, timeout=10, what="the failed state")
    finally:
        flow.close()
        panel.stop()


def test_a_burst_of_log_lines_is_rendered_a_few_times_not_per_line() -> None:
    flow = Flow(name="burst").add(name="a")
    panel = Panel(flow, min_gap=0.25)
    renders: list[str] = []
    panel.log_html.observe(lambda change: renders.append(change["new"]), names="value")
    try:
        t0 = time.monotonic()
        pace = threading.Event()
        for i in range(2000):  # lines keep arriving for about a second, as from a chatty replica
            panel.add_line("a/0", f"12:00:00 INFO    line {i}")
            if i % 20 == 19:
                pace.wait(0.01)
        poll_for(lambda: "line 1999" in panel.log_html.value, timeout=10, what="the last line in the Logs tab")
        elapsed = time.monotonic() - t0
        assert 1 <= len(renders) <= elapsed / 0.25 + 2, (len(renders), elapsed)
    finally:
        panel.close()


def test_openapi_link_goes_through_the_hub_proxy_on_binder(scripted: Panel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under JupyterHub (Binder) the browser reaches the HTTP port only through jupyter-server-proxy."""
    snap = _snap("ready", executors={"up": [_replica("up", 0, "ready", 1, 0, 0, None, None)]})
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada-repo-x1/")
    scripted.apply(snap)
    assert '<a href="/user/ada-repo-x1/proxy/5556/docs" target="_blank">' in scripted.endpoints_html.value
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX")
    scripted.apply(snap)
    assert '<a href="http://127.0.0.1:5556/docs" target="_blank">' in scripted.endpoints_html.value
