"""The live panel: a tabbed widget (Status, Metrics, Logs, Endpoints, Scale) and a Stop button.

Built lazily, like Dask's cluster widget, and only from core ipywidgets (HTML, Dropdown, IntText,
Button, Tab, HBox, VBox) whose API is the same on ipywidgets 7.7 (Colab) and 8; titles are set with
`set_title`, which both versions keep.

Updates come from two sources. Log lines are *pushed*: the panel appends a listener to the
orchestration's `_listeners`, which the supervisor's reader threads call for every line a child writes;
the listener only appends to a bounded buffer and wakes the refresh thread. Counters and latencies are
*pulled* from the gateway's status every `interval` seconds (there is no stats event stream yet). One
daemon thread per panel renders, at most once every `min_gap` seconds however fast lines arrive, and
only ever assigns widget values: a background thread that printed would write into whatever cell runs
at that moment. Any exception in it lands in the panel's error line, never on stdout. The thread holds
the orchestration only by weak reference: it ends when the orchestration is garbage-collected or the
panel is stopped. Once the orchestration is closed or failed it renders that state once and then only
looks, every `interval` seconds, whether it was started again (`f.close()` in one cell, `f.start()` in
another): the same panel then follows the new run, so it never has to be displayed again.

The Status tab also shows, above the table, what a user would rather look at than read:

- the start-up progress (orchestra_nb.progress): one bar per executor with its slowest replica's phase.
  It is *pushed*: the panel subscribes to the orchestration's `StartupProgress` (a new one per start())
  and re-renders on every phase change, on the supervisor's reader thread, which only assigns a widget
  value. Once everything is ready the bars fold into one line ("ready after 2.1 s"); a failure keeps
  them, with the reason.
- the topology picture (orchestra_nb.plot, the same drawing as `f.plot()`), each node coloured by the
  worst state of its replicas. Drawing it can mean running Graphviz's `dot`, so it is redrawn only when
  the states or the replica counts change, not on every refresh.

The Metrics tab draws requests/s and p50/p99 per executor as SVG sparklines (notebook/sparkline.py, no
plotting stack) from a `LatencyHistory` sampled on every status refresh; `plot_data()` gives its
numbers.

`Panel.apply(snapshot)` and `Panel.add_line(key, line)` are the seams: the thread feeds them from the
runtime, and tests feed them scripted snapshots and lines to check what is rendered.
"""

from __future__ import annotations

import collections
import html
import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from orchestra_nb.notebook.display import endpoints, render_status_html, snapshot
from orchestra_nb.notebook.sparkline import LatencyHistory, latency_html

__all__ = ["LEVELS", "Panel", "get_panel", "make_panel"]

LEVELS = ("ALL", "DEBUG", "INFO", "WARNING", "ERROR")
_LEVEL_NO = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_LEVEL_RE = re.compile(r"^\S+\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")
_FINAL_STATES = ("closed", "failed")
_RESTING_STATES = ("created", *_FINAL_STATES)  # nothing changes until start() is called

_panels: weakref.WeakKeyDictionary[Any, Panel] = weakref.WeakKeyDictionary()
_panels_lock = threading.Lock()


def _import_widgets() -> Any:
    try:
        import ipywidgets
    except ImportError:
        raise ImportError("the orchestra-nb panel needs ipywidgets; install the notebook extra with "
                          "`pip install 'orchestra-nb[notebook]'` (or show the HTML summary with "
                          "`IPython.display.HTML(f._repr_html_())`)") from None
    return ipywidgets


class Panel:
    """A live view of one orchestration; `widget` is what a notebook displays."""

    def __init__(self, orch: Any, *, interval: float = 2.0, min_gap: float = 0.3,
                 log_lines: int = 500, start: bool = True, window_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        w = _import_widgets()
        self._orch = weakref.ref(orch)
        self.interval = interval
        self.min_gap = min_gap
        self._lock = threading.Lock()
        self._logs: dict[str, collections.deque[tuple[int, str]]] = {}
        self._last_level: dict[str, int] = {}
        self._log_lines = log_lines
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._logs_dirty = True
        self._thread: threading.Thread | None = None
        self._executors = [ex.name or "executor" for ex in orch.flow_spec().executors]
        self.history = LatencyHistory(window_s, clock=clock)
        self.topology_renders = 0  # how often the picture was drawn (it is redrawn only on change)
        self._topology_key: Any = None
        self._progress_model: Any = None
        self._progress_unsubscribe: Callable[[], None] | None = None
        self._progress_lock = threading.Lock()

        self.header = w.HTML()
        self.stop_button = w.Button(description="Stop", button_style="danger", tooltip="close this orchestration")
        self.stop_button.on_click(self._on_stop)
        self.status_html = w.HTML()
        self.progress_html = w.HTML()
        self.topology_html = w.HTML()
        self.metrics_html = w.HTML(value=_NO_METRICS)
        self.error_html = w.HTML()
        self.log_source = w.Dropdown(options=["all", *self._executors, "gateway"], value="all",
                                     description="process")
        self.log_level = w.Dropdown(options=list(LEVELS), value="ALL", description="level")
        self.log_html = w.HTML()
        self.log_source.observe(self._on_filter, names="value")
        self.log_level.observe(self._on_filter, names="value")
        self.endpoints_html = w.HTML()
        tabs: list[tuple[str, Any]] = [
            ("Status", w.VBox([self.progress_html, self.topology_html, self.status_html])),
            ("Metrics", w.VBox([self.metrics_html])),
            ("Logs", w.VBox([w.HBox([self.log_source, self.log_level]), self.log_html])),
            ("Endpoints", w.VBox([self.endpoints_html])),
        ]
        self.scale_inputs: dict[str, Any] = {}
        self._spec_replicas: dict[str, int] = {}  # what the Scale boxes last showed from the spec
        self.scale_message = w.HTML()
        if callable(getattr(orch, "scale", None)):
            rows = []
            for ex in orch.flow_spec().executors:
                name = ex.name or "executor"
                box = w.IntText(value=ex.replicas, description=name)
                button = w.Button(description="apply")
                button.on_click(lambda _b, name=name: self.scale(name))
                self.scale_inputs[name] = box
                self._spec_replicas[name] = ex.replicas
                rows.append(w.HBox([box, button]))
            tabs.append(("Scale", w.VBox([*rows, self.scale_message])))
        self.tab = w.Tab(children=[t[1] for t in tabs])
        for i, (title, _) in enumerate(tabs):
            self.tab.set_title(i, title)
        self.widget = w.VBox([w.HBox([self.header, self.stop_button]), self.tab, self.error_html])

        self._backfill(orch)
        orch._listeners.append(self.add_line)
        self._watch_progress(orch)
        self.refresh()
        if start:
            self._thread = threading.Thread(target=self._run, name=f"orchestra-nb-panel-{orch.name}",
                                            daemon=True)
            self._thread.start()

    # ---- rendering -------------------------------------------------------------------------------
    def apply(self, snap: dict[str, Any]) -> None:
        """Render one snapshot (see display.snapshot) into the Status, Endpoints and header widgets."""
        orch = self._orch()
        ports = ", ".join(f"{p} {n}" for p, n in snap["ports"].items()) or "no ports yet"
        state = html.escape(snap["state"])
        self.header.value = (f"<b>{html.escape(snap['kind'])} {html.escape(snap['name'])}</b> "
                             f'<span data-state="{state}">{state}</span> · {html.escape(ports)}')
        self.status_html.value = render_status_html(snap)
        eps = endpoints(orch, snap) if orch is not None else {}
        rows = []
        for key, value in eps.items():
            shown = html.escape(value)
            if key in ("openapi", "public", "http") and value.startswith(("http", "/")):
                shown = f'<a href="{shown}" target="_blank">{shown}</a>'
            rows.append(f"<tr><th>{html.escape(key)}</th><td><code>{shown}</code></td></tr>")
        self.endpoints_html.value = f"<table>{''.join(rows)}</table>" if rows else "<i>not serving</i>"
        self.stop_button.disabled = snap["state"] in _FINAL_STATES
        if orch is not None:
            self._render_topology(orch, snap)
            self._follow_scale(orch)
        if snap["executors"]:  # only a ready orchestration's status carries counters and latencies
            self.history.add(snap)
            self.metrics_html.value = latency_html(self.history)

    def plot_data(self) -> dict[str, dict[str, list[Any]]]:
        """The numbers behind the Metrics tab: per executor (and `gateway`) the sample times,
        cumulative requests, requests/s, p50 and p99 in ms (see LatencyHistory.data)."""
        return self.history.data()

    def _render_topology(self, orch: Any, snap: dict[str, Any]) -> None:
        from orchestra_nb.plot import states_from_processes

        spec = orch.flow_spec()
        # the supervisor's process states, and the gateway's view of each replica (e.g. unreachable)
        replicas = [{"key": name, "state": rep.get("state")}
                    for name, reps in snap["executors"].items() for rep in reps if rep.get("state")]
        states = states_from_processes([*snap.get("processes", []), *replicas])
        key = (tuple(sorted(states.items())),
               tuple((ex.name, ex.replicas, ex.shards) for ex in spec.executors))
        if key == self._topology_key:
            return
        self.topology_html.value = _picture(spec, states)
        self._topology_key = key
        self.topology_renders += 1

    def _follow_scale(self, orch: Any) -> None:
        """A count changed elsewhere (`f.scale`, `%orchestra scale`) shows in its Scale box; a box
        whose spec count did not change keeps what the user is typing."""
        for ex in orch.flow_spec().executors:
            name = ex.name or "executor"
            box = self.scale_inputs.get(name)
            if box is not None and self._spec_replicas.get(name) != ex.replicas:
                self._spec_replicas[name] = ex.replicas
                box.value = ex.replicas

    def _watch_progress(self, orch: Any) -> None:
        """Follow the StartupProgress of the orchestration's latest start() (a new one each time)."""
        model = getattr(orch, "progress", None)
        if model is self._progress_model:
            return
        if self._progress_unsubscribe is not None:
            self._progress_unsubscribe()
            self._progress_unsubscribe = None
        self._progress_model = model
        if model is not None:
            self._progress_unsubscribe = model.subscribe(self._on_progress)
            self._on_progress(model)

    def _on_progress(self, model: Any) -> None:
        # runs on a supervisor reader thread: only assign widget values, never raise or print
        from orchestra_nb.progress import progress_html

        try:
            with self._progress_lock:
                snap = model.snapshot()
                self.progress_html.value = progress_html(snap, bars=not (snap["finished"] and snap["ok"]))
        except Exception as exc:
            self.error_html.value = f'<span style="color:#c62828">panel: {html.escape(repr(exc))}</span>'
        self._wake.set()  # the picture and the table follow the new phase

    def add_line(self, key: str, line: str) -> None:
        """Record one log line of process `key`; continuation lines keep the level of the line before."""
        match = _LEVEL_RE.match(line)
        with self._lock:
            level = _LEVEL_NO[match.group(1)] if match else self._last_level.get(key, 20)
            self._last_level[key] = level
            buf = self._logs.get(key)
            if buf is None:
                buf = self._logs[key] = collections.deque(maxlen=self._log_lines)
            buf.append((level, line))
            self._logs_dirty = True
        self._wake.set()

    def log_lines(self, source: str = "all", level: str = "ALL") -> list[str]:
        """The buffered lines that the Logs tab shows for this source and minimum level."""
        minimum = _LEVEL_NO.get(level, 0)
        with self._lock:
            out: list[str] = []
            for key, buf in self._logs.items():
                if source == "all" or key == source or key.split("/")[0] == source:
                    out.extend(line for lvl, line in buf if lvl >= minimum)
        return out[-self._log_lines:]

    def render_logs(self) -> None:
        lines = self.log_lines(self.log_source.value, self.log_level.value)
        body = html.escape("\n".join(lines)) or "(no log lines)"
        self.log_html.value = (f'<pre style="max-height:300px;overflow:auto;font-size:11px;'
                               f'white-space:pre-wrap">{body}</pre>')

    def refresh(self) -> None:
        """Fetch a snapshot from the runtime now and render everything."""
        orch = self._orch()
        if orch is None:
            return
        self._watch_progress(orch)
        self.apply(snapshot(orch))
        self.render_logs()
        with self._lock:
            self._logs_dirty = False

    # ---- actions ---------------------------------------------------------------------------------
    def scale(self, executor: str) -> None:
        """Apply the Scale tab's replica count for `executor` to the running orchestration."""
        orch = self._orch()
        if orch is None:
            return
        n = int(self.scale_inputs[executor].value)
        try:
            orch.scale(executor, n)
        except Exception as exc:
            self.scale_message.value = f'<span style="color:#c62828">{html.escape(str(exc))}</span>'
        else:
            self.scale_message.value = f"{html.escape(executor)}: {n} replica(s)"
        self._wake.set()

    def _on_stop(self, _button: Any) -> None:
        orch = self._orch()
        if orch is not None:
            self.stop_button.disabled = True
            orch.close()
        self._wake.set()

    def _on_filter(self, _change: Any) -> None:
        self.render_logs()

    # ---- background refresh ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        last_status = 0.0
        last_render = 0.0
        state = "starting"
        try:
            while not self._stop.is_set():
                # while replicas come up, show their states as they change; then poll the counters
                self._wake.wait(self.interval if state == "ready" or state in _RESTING_STATES else self.min_gap)
                self._wake.clear()
                if self._stop.is_set():
                    break
                gap = self.min_gap - (time.monotonic() - last_render)
                if gap > 0 and self._stop.wait(gap):  # throttle: coalesce bursts of lines
                    break
                orch = self._orch()
                if orch is None:
                    break
                previous, state = state, getattr(orch.state, "value", str(orch.state))
                try:
                    self._watch_progress(orch)
                    now = time.monotonic()
                    # a created or closed orchestration's status does not change until it is started
                    idle = state in _RESTING_STATES or (state == "ready" and now - last_status < self.interval)
                    if state != previous or not idle:
                        self.apply(snapshot(orch))
                        last_status = now
                        self.error_html.value = ""
                    if self._logs_dirty:
                        with self._lock:
                            self._logs_dirty = False
                        self.render_logs()
                except Exception as exc:  # never print from this thread; show it in the panel
                    self.error_html.value = f'<span style="color:#c62828">panel: {html.escape(repr(exc))}</span>'
                last_render = time.monotonic()
                del orch
        finally:
            self._detach()

    def _detach(self) -> None:
        if self._progress_unsubscribe is not None:
            self._progress_unsubscribe()
            self._progress_unsubscribe = None
        orch = self._orch()
        if orch is not None:
            try:
                orch._listeners.remove(self.add_line)
            except ValueError:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the refresh thread (the widget keeps its last values)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._detach()

    def close(self) -> None:
        """Stop refreshing and close the widgets."""
        self.stop()
        self.widget.close()

    def _backfill(self, orch: Any) -> None:
        sup = getattr(orch, "_supervisor", None)
        if sup is None:
            return
        for child in sup.children():
            for line in list(child.logs)[-self._log_lines:]:
                self.add_line(child.key, line)


_NO_METRICS = "<i>requests/s and p50/p99 latency per executor appear here once the Flow serves</i>"


def _picture(spec: Any, states: dict[str, str]) -> str:
    """The topology as inline SVG; Graphviz when it works, else the built-in drawing."""
    from orchestra_nb.plot import to_svg

    try:
        svg = to_svg(spec, states)
    except Exception:  # a broken or killed `dot` must not blank the panel
        svg = to_svg(spec, states, renderer="builtin")
    start = svg.find("<svg")  # drop Graphviz's XML prolog and DOCTYPE: this goes inside HTML
    return f'<div class="orchestra-topology" style="overflow:auto">{svg[start:] if start >= 0 else svg}</div>'


def make_panel(orch: Any) -> Any:
    """The live widget of `orch` (one per orchestration, rebuilt after its refresh thread ended)."""
    with _panels_lock:
        panel = _panels.get(orch)
        if panel is None or not panel.running:
            if panel is not None:
                panel.stop()
            panel = Panel(orch)
            _panels[orch] = panel
    return panel.widget


def get_panel(orch: Any) -> Panel | None:
    """The Panel object behind `make_panel(orch)`, if one was built."""
    with _panels_lock:
        return _panels.get(orch)
