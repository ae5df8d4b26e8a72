"""Live request-rate and latency plots for the panel: tiny inline SVG sparklines, no plotting stack.

Why hand-written SVG: matplotlib or plotly would add tens of MB and seconds of import to the kernel for
three lines per executor; a sparkline is a polyline. An SVG string travels in an ipywidgets `HTML`
value, in `text/html` for renderers without widgets, and in a static notebook, on ipywidgets 7 and 8.

Where the numbers come from: `Orchestration.status()` already reports, per replica, a request counter
and the p50/p99 latency of its most recent requests (the worker keeps the last 1024). `LatencyHistory`
samples it (the panel calls `add(status)` on each of its throttled refreshes) and keeps a time window:

- requests per second = growth of the counters between two samples over the time between them, summed
  over an executor's replicas; a counter that went down (the replica restarted) counts from zero again,
  and a replica is told apart by its address and pid;
- p50 = the mean of the replicas' p50 weighted by their new requests, p99 = the largest replica p99,
  over the replicas that served requests since the last sample; with no new requests the point is left
  empty (a gap in the line) rather than repeating a stale figure;
- `gateway` gets the request rate of the whole Flow, from the gateway's own counter.

Everything is a pure function of the samples: `data()` is JSON-able (what the panel keeps in widget
state and tests read), `sparkline_svg` and `latency_html` return strings.
"""

from __future__ import annotations

import collections
import html
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LatencyHistory", "Sample", "latency_html", "sparkline_svg"]


@dataclass(frozen=True)
class Sample:
    t: float
    requests: int
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None


def sparkline_svg(values: Sequence[float | None], *, times: Sequence[float] | None = None,
                  width: int = 120, height: int = 24, stroke: str = "#1f77b4",
                  title: str | None = None, zero_based: bool = True) -> str:
    """A polyline of `values` (None leaves a gap), scaled to the box; the last point gets a dot."""
    n = len(values)
    xs = list(times) if times is not None else [float(i) for i in range(n)]
    if len(xs) != n:
        raise ValueError(f"sparkline_svg: {n} values but {len(xs)} times; give one time per value")
    present = [v for v in values if v is not None]
    pad = 2.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="orchestra-sparkline" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}">']
    if title:
        parts.append(f"<title>{html.escape(title)}</title>")
    if present:
        lo = 0.0 if zero_based else min(present)
        hi = max(present)
        span_y = (hi - lo) or 1.0
        x0, x1 = xs[0], xs[-1]
        span_x = (x1 - x0) or 1.0

        def point(x: float, v: float) -> tuple[float, float]:
            px = pad + (x - x0) / span_x * (width - 2 * pad) if n > 1 else width / 2
            py = height - pad - (v - lo) / span_y * (height - 2 * pad)
            return px, py

        segment: list[str] = []
        segments: list[list[str]] = []
        for x, v in zip(xs, values, strict=True):
            if v is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            px, py = point(x, v)
            segment.append(f"{px:.1f},{py:.1f}")
        if segment:
            segments.append(segment)
        for seg in segments:
            parts.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{stroke}" '
                         'stroke-width="1.5" stroke-linejoin="round"/>')
        last = next((i for i in range(n - 1, -1, -1) if values[i] is not None), None)
        if last is not None:
            value = values[last]
            assert value is not None
            lx, ly = point(xs[last], value)
            parts.append(f'<circle cx="{lx:.1f}" cy="{ly:.1f}" r="2" fill="{stroke}"/>')
    parts.append("</svg>")
    return "".join(parts)


class LatencyHistory:
    """Samples of `status()` over a time window, turned into per-executor rate and latency series."""

    def __init__(self, window_s: float = 300.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s!r}")
        self.window_s = window_s
        self.clock = clock
        self._series: dict[str, collections.deque[Sample]] = {}
        self._last: dict[tuple[str, str], int] = {}  # (executor, replica id) -> its counter
        self._last_t: float | None = None

    def add(self, status: dict[str, Any], at: float | None = None) -> None:
        """Take one sample from `Orchestration.status()` (or a panel snapshot with `executors`)."""
        now = self.clock() if at is None else at
        dt = None if self._last_t is None else now - self._last_t
        if dt is not None and dt <= 0:
            return  # two samples at one instant say nothing about a rate
        for name, replicas in (status.get("executors") or {}).items():
            total = new = 0
            weighted_p50 = 0.0
            p99: float | None = None
            for rep in replicas:
                stats = rep.get("stats")
                if not isinstance(stats, dict):
                    continue  # an unreachable replica reports no stats
                count = int(stats.get("requests", 0))
                rid = f"{rep.get('address')}#{rep.get('pid')}"
                before = self._last.get((name, rid))
                # a new replica (scaled, restarted with a new pid) or a reset counter counts from zero
                grown = count if before is None or count < before else count - before
                self._last[(name, rid)] = count
                total += count
                if before is None and dt is None:
                    continue  # the first sample only sets the baseline
                new += grown
                if grown and stats.get("p50_ms") is not None:
                    weighted_p50 += grown * float(stats["p50_ms"])
                    p99 = max(p99 or 0.0, float(stats.get("p99_ms") or 0.0))
            rps = None if dt is None else new / dt
            p50 = weighted_p50 / new if new and p99 is not None else None
            self._append(name, Sample(now, total, rps, round(p50, 3) if p50 is not None else None, p99))
        if "requests" in status:
            count = int(status["requests"])
            before = self._last.get(("gateway", ""))
            grown = count if before is None or count < before else count - before
            self._last[("gateway", "")] = count
            rps = None if dt is None else grown / dt
            self._append("gateway", Sample(now, count, rps, None, None))
        self._last_t = now

    def _append(self, name: str, sample: Sample) -> None:
        series = self._series.setdefault(name, collections.deque())
        series.append(sample)
        while series and sample.t - series[0].t > self.window_s:
            series.popleft()

    def executors(self) -> list[str]:
        return list(self._series)

    def series(self, name: str) -> list[Sample]:
        return list(self._series.get(name, ()))

    def data(self) -> dict[str, dict[str, list[Any]]]:
        """JSON-able series per executor: t, requests (cumulative), rps, p50_ms, p99_ms."""
        out: dict[str, dict[str, list[Any]]] = {}
        for name, samples in self._series.items():
            out[name] = {"t": [round(s.t, 3) for s in samples], "requests": [s.requests for s in samples],
                         "rps": [None if s.rps is None else round(s.rps, 3) for s in samples],
                         "p50_ms": [s.p50_ms for s in samples], "p99_ms": [s.p99_ms for s in samples]}
        return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def latency_html(history: LatencyHistory, *, width: int = 120, height: int = 24) -> str:
    """A table with one row per executor: requests/s, p50 and p99 as sparklines with their last value."""
    esc = html.escape
    rows = ["<tr><th style='text-align:left'>executor</th><th>requests</th><th>req/s</th>"
            "<th>p50</th><th>p99</th></tr>"]
    for name, series in history.data().items():
        cells = [f"<td style='text-align:left'><b>{esc(name)}</b></td>",
                 f"<td>{series['requests'][-1] if series['requests'] else 0}</td>"]
        for key, unit, colour in (("rps", "/s", "#1f77b4"), ("p50_ms", "ms", "#2ca02c"),
                                  ("p99_ms", "ms", "#d62728")):
            values = series[key]
            if name == "gateway" and key != "rps":
                cells.append("<td></td>")
                continue
            last = next((v for v in reversed(values) if v is not None), None)
            svg = sparkline_svg(values, times=series["t"], width=width, height=height, stroke=colour,
                                title=f"{name} {key}")
            cells.append(f"<td style='white-space:nowrap'>{svg} {_fmt(last, unit)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table class='orchestra-latency'>{''.join(rows)}</table>"
