"""How an orchestration shows itself in a notebook: an HTML summary and the display bundle.

`repr_html` is a pure function of a *snapshot* (state, status info, ports, endpoints), so GitHub,
nbconvert and widget-less frontends show the same table that the live panel shows. `ipython_display`
publishes one bundle that carries the widget view (when ipywidgets is importable and we are inside a
kernel) *and* `text/html` and `text/plain`: a frontend picks the richest type it can render, so a
notebook saved with outputs still reads well where widgets cannot run. We build the widget-view entry
ourselves instead of calling the widget's own display hook, because ipywidgets 7 publishes through
`_ipython_display_` and ipywidgets 8 through `_repr_mimebundle_`; the model reference itself
(`version_major` 2) is the same in both.

`show_start_progress` is the notebook's counterpart of the console's live bars during a *blocking*
`start()`: the panel only appears once the cell ends, so without it a cell that loads a model for a
minute shows nothing. It publishes one output with a display id and updates it in place (an
`update_display_data` message, which every frontend renders, widgets or not) on every phase change and
on a slow tick for the timers; the updates come from background threads while the cell's own thread
waits in start(), and ipykernel routes them to that cell's output.

The snapshot never raises: a status call that fails (the orchestration is starting, closing, or the
gateway is busy) degrades to the per-process states the supervisor holds.
"""

from __future__ import annotations

import html
import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["endpoints", "ipython_display", "render_status_html", "repr_html", "show_start_progress", "snapshot"]

_STATE_COLOURS = {
    "ready": "#2e7d32", "starting": "#f9a825", "created": "#757575", "closing": "#f9a825",
    "closed": "#757575", "failed": "#c62828", "stopped": "#757575", "restarting": "#f9a825",
}


def _fmt_ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def _badge(state: str) -> str:
    colour = _STATE_COLOURS.get(state, "#455a64")
    return (f'<span style="color:{colour};font-weight:600" data-state="{html.escape(state)}">'
            f"{html.escape(state)}</span>")


def snapshot(orch: Any) -> dict[str, Any]:
    """What the views render: the gateway's status when ready, else the supervisor's process states."""
    state = getattr(orch.state, "value", str(orch.state))
    snap: dict[str, Any] = {"name": orch.name, "kind": type(orch).__name__, "state": state,
                            "ports": dict(orch.ports), "protocols": list(orch.protocols),
                            "executors": {}, "error": None}
    if state == "ready":
        try:
            info = orch.status()
        except Exception as exc:  # a busy or dying gateway must not break the display
            snap["error"] = f"status unavailable: {exc}"
        else:
            snap["executors"] = info.get("executors", {})
            snap["processes"] = info.get("processes", [])
            snap["requests"] = info.get("requests", 0)
            return snap
    snap["processes"] = _processes(orch)
    return snap


def _processes(orch: Any) -> list[dict[str, Any]]:
    sup = getattr(orch, "_supervisor", None)
    if sup is None:
        return []
    return [{"key": c.key, "pid": c.pid, "state": c.state, "restarts": c.restarts} for c in sup.children()]


def _browser_base(port: int) -> str:
    """The URL prefix a browser can reach a local port at (Binder/JupyterHub serve it via a proxy)."""
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix:
        return f"{prefix.rstrip('/')}/proxy/{port}"
    return f"http://127.0.0.1:{port}"


def endpoints(orch: Any, snap: dict[str, Any] | None = None) -> dict[str, str]:
    """Addresses to copy: gRPC and HTTP URLs, the OpenAPI page, a curl line and any public URL."""
    snap = snap or snapshot(orch)
    out: dict[str, str] = {}
    ports = snap["ports"] if snap["state"] in ("starting", "ready") else {}
    if "grpc" in ports:
        out["grpc"] = f"grpc://127.0.0.1:{ports['grpc']}"
    endpoint = "/"
    if "http" in ports:
        base = f"http://127.0.0.1:{ports['http']}"
        out["http"] = base
        out["openapi"] = f"{_browser_base(ports['http'])}/docs"
        endpoint = "/"
        for reps in snap["executors"].values():
            for rep in reps:
                eps = [e for e in rep.get("endpoints", {}) if not e.startswith("_")]
                if eps:
                    endpoint = eps[0]
                    break
            if endpoint != "/":
                break
        out["curl"] = (f"curl -s -X POST {base}/post -H 'Content-Type: application/json' "
                       f"-d '{{\"on\": \"{endpoint}\", \"docs\": [{{\"text\": \"hello\"}}]}}'")
    tunnel = _tunnel(orch)
    if tunnel is not None and ports:
        out["public"] = tunnel.url
        out["public curl"] = (f"curl -s -X POST {tunnel.url.rstrip('/')}/post -H 'Authorization: Bearer "
                              f"{tunnel.token}' -H 'Content-Type: application/json' "
                              f"-d '{{\"on\": \"{endpoint}\", \"docs\": [{{\"text\": \"hello\"}}]}}'")
    return out


def _tunnel(orch: Any) -> Any:
    try:
        from orchestra_nb.notebook.tunnel import tunnel_of
    except ImportError:  # the tunnel module is optional here; a missing one means no tunnel
        return None
    return tunnel_of(orch)


def render_status_html(snap: dict[str, Any]) -> str:
    """The Status table: one row per replica (or per process while starting)."""
    head = ("<tr><th>executor</th><th>replica</th><th>state</th><th>pid</th><th>device</th>"
            "<th>address</th><th>requests</th><th>errors</th><th>p50 ms</th><th>p99 ms</th>"
            "<th>restarts</th></tr>")
    restarts = {p["key"]: p.get("restarts", 0) for p in snap.get("processes", [])}
    rows = []
    if snap["executors"]:
        for name, reps in snap["executors"].items():
            for rep in reps:
                stats = rep.get("stats") or {}
                shard = f"shard{rep['shard']}/" if rep.get("shard") else ""
                key = f"{name}/{shard}{rep.get('replica', 0)}"
                rows.append(
                    f"<tr data-key=\"{html.escape(key)}\"><td>{html.escape(name)}</td>"
                    f"<td>{html.escape(shard)}{rep.get('replica', 0)}</td>"
                    f"<td>{_badge(str(rep.get('state', '?')))}</td><td>{rep.get('pid', '-')}</td>"
                    f"<td>{html.escape(str(rep.get('device', '-')))}</td>"
                    f"<td>{html.escape(str(rep.get('address', '-')))}</td>"
                    f"<td>{stats.get('requests', 0)}</td><td>{stats.get('errors', 0)}</td>"
                    f"<td>{_fmt_ms(stats.get('p50_ms'))}</td><td>{_fmt_ms(stats.get('p99_ms'))}</td>"
                    f"<td>{restarts.get(key, 0)}</td></tr>")
    else:
        for proc in snap.get("processes", []):
            if proc["key"] == "gateway":
                continue
            name, _, replica = proc["key"].rpartition("/")
            rows.append(
                f"<tr data-key=\"{html.escape(proc['key'])}\"><td>{html.escape(name)}</td>"
                f"<td>{html.escape(replica)}</td><td>{_badge(str(proc.get('state', '?')))}</td>"
                f"<td>{proc.get('pid') or '-'}</td><td>-</td><td>-</td><td>-</td><td>-</td><td>-</td>"
                f"<td>-</td><td>{proc.get('restarts', 0)}</td></tr>")
    gateway = next((p for p in snap.get("processes", []) if p["key"] == "gateway"), None)
    gw = ""
    if gateway is not None:
        gw = (f"<div>gateway: {_badge(str(gateway.get('state', '?')))} pid {gateway.get('pid') or '-'}"
              f"{', requests ' + str(snap['requests']) if 'requests' in snap else ''}</div>")
    error = f'<div style="color:#c62828">{html.escape(snap["error"])}</div>' if snap.get("error") else ""
    return (f'<table class="orchestra-nb-status">{head}{"".join(rows)}</table>{gw}{error}')


def repr_html(orch: Any) -> str:
    """A self-contained HTML summary: header, the status table and the endpoints."""
    snap = snapshot(orch)
    ports = ", ".join(f"{p} {n}" for p, n in snap["ports"].items()) or "no ports yet"
    eps = endpoints(orch, snap)
    links = "".join(f"<li><b>{html.escape(k)}</b>: <code>{html.escape(v)}</code></li>" for k, v in eps.items())
    return (f'<div class="orchestra-nb"><b>{html.escape(snap["kind"])} {html.escape(snap["name"])!s}</b> '
            f"{_badge(snap['state'])} · {html.escape(ports)}"
            f"{render_status_html(snap)}{'<ul>' + links + '</ul>' if links else ''}</div>")


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    from orchestra_nb.orchestration.registry import in_notebook

    return in_notebook()


def ipython_display(orch: Any) -> None:
    """Publish the live panel with `text/html` and `text/plain` alongside (HTML only without widgets)."""
    from IPython.display import display

    bundle: dict[str, Any] = {"text/plain": repr(orch), "text/html": repr_html(orch)}
    if _widgets_available():
        from orchestra_nb.notebook.panel import make_panel

        widget = make_panel(orch)
        bundle["application/vnd.jupyter.widget-view+json"] = {
            "version_major": 2, "version_minor": 0, "model_id": widget.model_id}
    display(bundle, raw=True)  # type: ignore[no-untyped-call]


def show_start_progress(model: Any, interval: float = 0.5) -> Callable[[], None]:
    """Show a StartupProgress in the running cell's output, updated in place until the returned
    function is called (which draws the final state and stops the updates)."""
    from IPython.display import display

    from orchestra_nb.progress import progress_html, progress_text

    lock = threading.Lock()
    stop = threading.Event()

    def bundle() -> dict[str, str]:
        snap = model.snapshot()
        return {"text/html": progress_html(snap, bars=not (snap["finished"] and snap["ok"])),
                "text/plain": progress_text(snap)}

    handle = display(bundle(), raw=True, display_id=True)  # type: ignore[no-untyped-call]

    def render(_model: Any = None) -> None:  # on a reader thread or the ticker: publish, never raise
        with lock:
            try:
                handle.update(bundle(), raw=True)
            except Exception:
                pass

    unsubscribe = model.subscribe(render)

    def tick() -> None:  # the phase timers move while nothing else happens
        while not stop.wait(interval):
            render()

    ticker = threading.Thread(target=tick, name="orchestra-nb-start-progress", daemon=True)
    ticker.start()

    def end() -> None:
        stop.set()
        unsubscribe()
        ticker.join(5)
        render()
    return end
