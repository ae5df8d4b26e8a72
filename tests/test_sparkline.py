"""Request-rate and latency sparklines: the SVG drawing, the history built from status samples, and a
real Flow whose plot data follows a burst of requests."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from orchestra_nb import Doc, Flow
from orchestra_nb.notebook.sparkline import LatencyHistory, latency_html, sparkline_svg
from tests.executors import Slow, Tagger

SVG = "{http://www.w3.org/2000/svg}"


def polylines(svg: str) -> list[list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    out = []
    for line in root.iter(f"{SVG}polyline"):
        points = [tuple(float(c) for c in p.split(",")) for p in (line.get("points") or "").split()]
        out.append([(x, y) for x, y in points])
    return out


def test_sparkline_scales_into_the_box_and_breaks_at_gaps() -> None:
    svg = sparkline_svg([0, 5, 10, None, 10, 5], width=104, height=24, title="p99 <ms>")
    root = ET.fromstring(svg)
    assert (root.get("width"), root.get("height")) == ("104", "24")
    assert root.find(f"{SVG}title").text == "p99 <ms>"  # type: ignore[union-attr]
    lines = polylines(svg)
    assert [len(line) for line in lines] == [3, 2]
    (x0, y0), (_, y1), (x2, y2) = lines[0]
    assert (x0, y0) == (2.0, 22.0)  # zero sits on the bottom edge (2 px padding)
    assert y2 == 2.0 and y1 == 12.0  # the maximum on the top edge, half way for half the value
    assert lines[1][-1] == (102.0, 12.0)
    circle = root.find(f"{SVG}circle")
    assert circle is not None and (circle.get("cx"), circle.get("cy")) == ("102.0", "12.0")
    assert x2 == pytest.approx(2 + 2 * 100 / 5)


def test_sparkline_uses_times_and_handles_edge_cases() -> None:
    lines = polylines(sparkline_svg([1.0, 2.0, 3.0], times=[0.0, 1.0, 10.0], width=104))
    assert [x for x, _ in lines[0]] == [2.0, 12.0, 102.0]
    assert polylines(sparkline_svg([])) == []
    assert polylines(sparkline_svg([None, None])) == []
    one = sparkline_svg([7.0], width=50)
    assert polylines(one) == [[(25.0, 2.0)]]
    flat = polylines(sparkline_svg([3.0, 3.0], zero_based=False, height=20))
    assert [y for _, y in flat[0]] == [18.0, 18.0]
    with pytest.raises(ValueError, match="3 values but 2 times"):
        sparkline_svg([1, 2, 3], times=[0, 1])


def replica(address: str, pid: int, requests: int, p50: float | None, p99: float | None) -> dict[str, Any]:
    return {"address": address, "pid": pid, "state": "ready",
            "stats": {"requests": requests, "errors": 0, "p50_ms": p50, "p99_ms": p99}}


def status(gateway: int, **executors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"requests": gateway, "executors": executors}


def test_history_turns_counters_into_rates_and_interval_latencies() -> None:
    h = LatencyHistory(window_s=60)
    h.add(status(0, enc=[replica("a:1", 1, 0, None, None), replica("a:2", 2, 0, None, None)]), at=0.0)
    h.add(status(30, enc=[replica("a:1", 1, 10, 20.0, 40.0), replica("a:2", 2, 20, 50.0, 90.0)]), at=2.0)
    h.add(status(30, enc=[replica("a:1", 1, 10, 20.0, 40.0), replica("a:2", 2, 20, 50.0, 90.0)]), at=4.0)
    # replica 2 restarted (new pid, counter from zero); an unreachable replica reports no stats
    h.add(status(34, enc=[replica("a:1", 1, 11, 22.0, 30.0), replica("a:2", 3, 3, 10.0, 12.0),
                          {"address": "a:3", "state": "unreachable", "error": "UNAVAILABLE"}]), at=5.0)
    enc = h.data()["enc"]
    assert enc["t"] == [0.0, 2.0, 4.0, 5.0]
    assert enc["requests"] == [0, 30, 30, 14]
    assert enc["rps"] == [None, 15.0, 0.0, 4.0]
    assert enc["p50_ms"] == [None, 40.0, None, 13.0]  # (10*20 + 20*50) / 30; (1*22 + 3*10) / 4
    assert enc["p99_ms"] == [None, 90.0, None, 30.0]
    assert h.data()["gateway"]["rps"] == [None, 15.0, 0.0, 4.0]
    assert h.data()["gateway"]["p50_ms"] == [None] * 4
    assert h.executors() == ["enc", "gateway"]
    h.add(status(34, enc=[]), at=5.0)  # a second sample at the same instant is ignored
    assert len(h.series("enc")) == 4


def test_history_keeps_only_its_window() -> None:
    h = LatencyHistory(window_s=10)
    for i in range(30):
        h.add(status(i, ex=[replica("a:1", 1, i, 1.0, 2.0)]), at=float(i))
    assert h.data()["ex"]["t"] == [float(t) for t in range(19, 30)]
    assert set(h.data()["ex"]["rps"]) == {1.0}
    with pytest.raises(ValueError, match="window_s must be positive"):
        LatencyHistory(window_s=0)


def test_latency_html_has_one_row_per_executor() -> None:
    h = LatencyHistory()
    h.add(status(0, enc=[replica("a:1", 1, 0, None, None)]), at=0.0)
    h.add(status(10, enc=[replica("a:1", 1, 10, 12.5, 250.0)]), at=1.0)
    page = latency_html(h)
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    assert len(rows) == 3  # header, enc, gateway
    assert "<b>enc</b>" in rows[1] and "<td>10</td>" in rows[1]
    assert "10.0 /s" in rows[1] and "12.5 ms" in rows[1] and "250 ms" in rows[1]
    assert rows[1].count("<svg") == 3 and rows[2].count("<svg") == 1


def test_plot_data_follows_a_burst_of_requests() -> None:
    """A real Flow: after 20 requests, each executor's plot data shows 20 more and the latencies
    the slow executor really took."""
    flow = (Flow(name="spark").add(uses=Slow, name="slow", replicas=2).add(uses=Tagger, name="tag"))
    h = LatencyHistory()
    with flow:
        t0 = time.monotonic()
        h.add(flow.status(), at=t0)
        for i in range(20):
            flow.post("/slow", [Doc(text=str(i))], parameters={"seconds": 0.03})
        t1 = time.monotonic()
        h.add(flow.status(), at=t1)
    data = h.data()
    for name in ("slow", "tag", "gateway"):
        assert data[name]["requests"][-1] - data[name]["requests"][0] == 20, (name, data[name])
        assert data[name]["rps"][-1] == pytest.approx(20 / (t1 - t0), rel=1e-3)
    assert data["slow"]["p50_ms"][-1] >= 30.0
    assert data["slow"]["p99_ms"][-1] >= data["slow"]["p50_ms"][-1]
    assert data["tag"]["p50_ms"][-1] < data["slow"]["p50_ms"][-1]
    page = latency_html(h)
    assert "<b>slow</b>" in page and "<b>tag</b>" in page
