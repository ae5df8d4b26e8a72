"""The start-up summary: where a ready orchestration can be reached, as a rich panel.

One row per protocol with its local, private-network and (when a tunnel is open) public address, then
the HTTP docs links and the metrics endpoint when enabled, like the concept page's "successful start"
figure. The private-network address is only shown when the gateway listens on every interface
(`host='0.0.0.0'`): an address that would refuse connections is worse than none, so a gateway bound
to 127.0.0.1 says how to open it instead. The address is found by asking the kernel which source address
a UDP socket would use (no packet is sent), which needs no extra dependency.

With a `log_config` whose handlers write JSON, the summary is one log record (`summary_line`) rather
than a panel on stdout: whoever collects the output of that process parses every line as JSON.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

__all__ = ["addresses", "print_summary", "private_ip", "render_summary", "summary_line"]

_ANY = ("0.0.0.0", "", "::")


def private_ip() -> str | None:
    """This machine's address on its private network, or None when it has none."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("10.255.255.255", 1))
        address = str(sock.getsockname()[0])
        return None if address.startswith("127.") else address
    return None


def _public_url(orch: Any) -> str | None:
    try:
        from orchestra_nb.notebook.tunnel import tunnel_of
    except ImportError:
        return None
    tunnel = tunnel_of(orch)
    return str(tunnel.url).rstrip("/") if tunnel is not None else None


def addresses(orch: Any) -> list[dict[str, str | None]]:
    """One row per protocol: protocol, local, private and public address."""
    spec = orch.flow_spec().gateway
    public = _public_url(orch)
    private = private_ip() if spec.host in _ANY else None
    local_host = "127.0.0.1" if spec.host in _ANY else spec.host
    rows: list[dict[str, str | None]] = []
    for protocol, port in orch.ports.items():
        tls = bool(spec.ssl_certfile)
        scheme = ("grpcs" if tls else "grpc") if protocol == "grpc" else ("https" if tls else "http")
        rows.append({
            "protocol": protocol,
            "local": f"{scheme}://{local_host}:{port}",
            "private": f"{scheme}://{private}:{port}" if private else None,
            "public": public if public and protocol == "http" else None,
        })
    return rows


def render_summary(orch: Any) -> Any:
    """A rich Panel with the addresses of a ready orchestration."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    spec = orch.flow_spec().gateway
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("Protocol", "Local", "Private network", "Public"):
        table.add_column(column)
    rows = addresses(orch)
    for row in rows:
        table.add_row(str(row["protocol"]).upper(), str(row["local"]), row["private"] or "-",
                      row["public"] or "-")
    parts: list[Any] = [table]
    if spec.host not in _ANY:
        parts.append(f"[dim]listens on {spec.host} only; host='0.0.0.0' opens it to the network[/dim]")
    http = next((r for r in rows if r["protocol"] == "http"), None)
    if http is not None:
        links = Table(show_header=False, box=None, pad_edge=False)
        links.add_column()
        links.add_column()
        base = str(http["public"] or http["local"])
        links.add_row("OpenAPI docs", f"{base}/docs")
        links.add_row("ReDoc", f"{base}/redoc")
        if spec.metrics:
            links.add_row("Metrics", f"{http['local']}/metrics")
        parts.append(links)
    elif spec.metrics:
        parts.append("Metrics: enable the http protocol to scrape /metrics")
    kind = type(orch).__name__
    return Panel(Group(*parts), title=f"{kind} {orch.name!r} is ready to serve", title_align="left",
                 border_style="green", expand=False)


def summary_line(orch: Any) -> str:
    """The summary as one line, for logs that must stay machine-readable."""
    parts = []
    for row in addresses(orch):
        where = [str(row["local"])] + [str(row[k]) for k in ("private", "public") if row[k]]
        parts.append(f"{row['protocol']} " + " ".join(where))
    http = next((r for r in addresses(orch) if r["protocol"] == "http"), None)
    if http is not None:
        parts.append(f"OpenAPI docs {http['public'] or http['local']}/docs")
        if orch.flow_spec().gateway.metrics:
            parts.append(f"metrics {http['local']}/metrics")
    return f"{type(orch).__name__} {orch.name!r} is ready to serve: " + ", ".join(parts)


def _json_logging() -> bool:
    from orchestra_nb.logconfig import JsonFormatter

    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def print_summary(orch: Any, console: Any = None) -> None:
    """Print the panel (to stdout by default); with a JSON log_config, log it as one record instead,
    so that every line the process writes stays valid JSON."""
    if console is None and _json_logging():
        from orchestra_nb.logs import get_logger

        get_logger().info("%s", summary_line(orch))
        return
    from rich.console import Console

    (console or Console()).print(render_summary(orch))
