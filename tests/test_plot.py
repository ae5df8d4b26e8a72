"""The topology picture: every node and edge of a chain, a diamond, shards and a floating branch, in
Mermaid, in the built-in SVG and in Graphviz's SVG, to a file and in a notebook, with and without `dot`.

Expected graphs are written out by hand below, not derived from the code under test. SVGs are read
as XML: both renderers name nodes and edges in `<title>` elements the way Graphviz does. "Without
dot" is real: PATH is pointed at an empty folder, so the lookup the code does finds no binary.
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra_nb import Deployment, Flow
from orchestra_nb.plot import (
    STATE_COLOURS,
    FlowPicture,
    format_when,
    graphviz_available,
    plot,
    states_from_processes,
    to_dot,
    to_mermaid,
    to_svg,
    topology,
)
from orchestra_nb.spec.models import FlowSpec

ROOT = Path(__file__).resolve().parents[1]
NEEDS_DOT = pytest.mark.skipif(not graphviz_available(),
                               reason="Graphviz rendering needs the `graphviz` package and the `dot` "
                                      "binary (apt-get install graphviz); the Mermaid and built-in SVG "
                                      "fallbacks are tested without them")
SVG = "{http://www.w3.org/2000/svg}"
WHEN = {"tags.lang": {"$eq": "en"}}


def chain() -> Flow:
    return Flow(name="chain").add(name="a").add(name="b").add(name="c")


def diamond() -> Flow:
    return (Flow(name="diamond").add(name="a").add(name="b", needs="a")
            .add(name="c", needs="a", when=WHEN).needs(["b", "c"], name="d"))


def shards() -> Flow:
    return Flow(name="shards").add(name="enc", shards=3, replicas=2, polling="ALL").add(name="rank")


def floating() -> Flow:
    return (Flow(name="floating").add(name="a").add(name="b")
            .add(name="log", needs="a", floating=True).add(name="audit", needs="log"))


# (flow, nodes, solid edges, dashed edges, edge labels)
CASES: dict[str, tuple[Any, set[str], set[tuple[str, str]], set[tuple[str, str]], dict[tuple[str, str], str]]] = {
    "chain": (chain, {"gateway", "a", "b", "c", "gateway:out"},
              {("gateway", "a"), ("a", "b"), ("b", "c"), ("c", "gateway:out")}, set(), {}),
    "diamond": (diamond, {"gateway", "a", "b", "c", "d", "gateway:out"},
                {("gateway", "a"), ("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "gateway:out")},
                set(), {("a", "c"): 'tags.lang == "en"'}),
    "shards": (shards, {"gateway", "enc", "rank", "gateway:out"},
               {("gateway", "enc"), ("enc", "rank"), ("rank", "gateway:out")}, set(), {}),
    "floating": (floating, {"gateway", "a", "b", "log", "audit", "gateway:out"},
                 {("gateway", "a"), ("a", "b"), ("b", "gateway:out")}, {("a", "log"), ("log", "audit")}, {}),
}


@pytest.fixture
def no_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert not graphviz_available()
    yield


def svg_graph(svg: str) -> tuple[set[str], set[tuple[str, str]], dict[tuple[str, str], str], set[tuple[str, str]]]:
    """Nodes, edges, edge label texts and dashed edges of an SVG from either renderer."""
    root = ET.fromstring(svg.encode())
    nodes: set[str] = set()
    edges: set[tuple[str, str]] = set()
    labels: dict[tuple[str, str], str] = {}
    dashed: set[tuple[str, str]] = set()
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        if title is None or title.text is None:
            continue
        if g.get("class") == "node":
            nodes.add(title.text)
        elif g.get("class") == "edge":
            source, target = title.text.split("->")
            edges.add((source, target))
            text = " ".join(t.text or "" for t in g.iter(f"{SVG}text")).strip()
            if text:
                labels[(source, target)] = text
            if any(p.get("stroke-dasharray") for p in g.iter(f"{SVG}path")):
                dashed.add((source, target))
    return nodes, edges, labels, dashed


def mermaid_graph(text: str) -> tuple[set[str], set[tuple[str, str]], dict[tuple[str, str], str], set[tuple[str, str]]]:
    """The same from Mermaid text. Node ids are n0, n1, …; the label's first line is the name, and the
    second node labelled 'gateway' is where responses leave (it is defined after the executors)."""
    assert text.startswith("flowchart LR\n")
    names: dict[str, str] = {}
    for ident, name in re.findall(r'^\s*(n\d+)[(\[]+"([^<"]+)', text, re.M):
        names[ident] = "gateway:out" if name == "gateway" and "gateway" in names.values() else name
    edges: set[tuple[str, str]] = set()
    labels: dict[tuple[str, str], str] = {}
    dashed: set[tuple[str, str]] = set()
    for a, arrow, label, b in re.findall(r'^\s*(n\d+) (-->|-\.->)(?:\|"([^"]*)"\|)? (n\d+)$', text, re.M):
        edge = (names[a], names[b])
        edges.add(edge)
        if label:
            labels[edge] = label.replace("#quot;", '"')
        if arrow == "-.->":
            dashed.add(edge)
    return set(names.values()), edges, labels, dashed


def expected(case: str) -> tuple[set[str], set[tuple[str, str]], dict[tuple[str, str], str], set[tuple[str, str]]]:
    _, nodes, solid, dashed, labels = CASES[case]
    return nodes, solid | dashed, labels, dashed


@pytest.mark.parametrize("case", list(CASES))
def test_mermaid_has_every_node_and_edge(case: str) -> None:
    flow = CASES[case][0]()
    assert mermaid_graph(to_mermaid(flow)) == expected(case)


@pytest.mark.parametrize("case", list(CASES))
def test_builtin_svg_has_every_node_and_edge(case: str) -> None:
    flow = CASES[case][0]()
    assert svg_graph(to_svg(flow, renderer="builtin")) == expected(case)


@NEEDS_DOT
@pytest.mark.parametrize("case", list(CASES))
def test_graphviz_svg_has_every_node_and_edge(case: str) -> None:
    flow = CASES[case][0]()
    svg = to_svg(flow, renderer="graphviz")
    assert "Generated by graphviz" in svg
    assert svg_graph(svg) == expected(case)


def test_shards_replicas_joins_and_floating_are_labelled() -> None:
    topo = topology(shards())
    assert topo.node("enc").details == ("2 replicas, 3 shards (ALL)",)
    assert topo.node("rank").details == ()
    topo = topology(diamond())
    assert topo.node("d").kind == "join" and "join of 2" in topo.node("d").details
    topo = topology(floating())
    assert [n.id for n in topo.nodes if n.floating] == ["log", "audit"]
    assert "floating" in topo.node("log").details
    dot = to_dot(shards())
    assert '"enc" [label="enc\\n2 replicas, 3 shards (ALL)"' in dot


def test_plot_writes_files_without_dot(no_dot: None, tmp_path: Path) -> None:
    flow = diamond()
    picture = plot(flow, tmp_path / "flow.svg")
    svg = (tmp_path / "flow.svg").read_text()
    assert "Generated by graphviz" not in svg
    assert svg_graph(svg) == expected("diamond")
    assert picture.path == str(tmp_path / "flow.svg")
    plot(flow, str(tmp_path / "flow.mmd"))
    assert mermaid_graph((tmp_path / "flow.mmd").read_text()) == expected("diamond")
    plot(flow, tmp_path / "flow.md")
    md = (tmp_path / "flow.md").read_text()
    assert md.startswith("```mermaid\nflowchart LR\n") and md.endswith("```\n")
    plot(flow, tmp_path / "flow.dot")
    assert (tmp_path / "flow.dot").read_text() == to_dot(flow)
    with pytest.raises(RuntimeError, match=r"needs the `dot` binary.*apt-get install graphviz"):
        plot(flow, tmp_path / "flow.png")
    assert not (tmp_path / "flow.png").exists()
    with pytest.raises(ValueError, match=r"flow\.txt.*\.svg, \.png"):
        plot(flow, tmp_path / "flow.txt")


@NEEDS_DOT
def test_plot_writes_files_with_dot(tmp_path: Path) -> None:
    flow = floating()
    plot(flow, tmp_path / "flow.svg")
    svg = (tmp_path / "flow.svg").read_text()
    assert "Generated by graphviz" in svg
    assert svg_graph(svg) == expected("floating")
    plot(flow, tmp_path / "flow.png")
    assert (tmp_path / "flow.png").read_bytes().startswith(b"\x89PNG\r\n")


def test_notebook_bundle_without_dot(no_dot: None) -> None:
    from IPython.core.formatters import format_display_data

    data, _ = format_display_data(plot(chain()))
    assert {"text/vnd.mermaid", "image/svg+xml", "text/plain"} <= set(data)
    assert mermaid_graph(data["text/vnd.mermaid"]) == expected("chain")
    assert svg_graph(data["image/svg+xml"]) == expected("chain")
    assert "gateway -> a" in data["text/plain"]


@NEEDS_DOT
def test_notebook_bundle_with_dot() -> None:
    from IPython.core.formatters import format_display_data

    data, _ = format_display_data(plot(shards()))
    assert "Generated by graphviz" in data["image/svg+xml"]
    assert svg_graph(data["image/svg+xml"]) == expected("shards")
    assert "text/vnd.mermaid" not in data


def test_states_colour_the_nodes() -> None:
    states = {"a": "failed", "b": "ready", "gateway": "starting"}
    svg = to_svg(chain(), states, renderer="builtin")
    root = ET.fromstring(svg)
    fills = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "node":
            title = g.find(f"{SVG}title")
            rect = g.find(f"{SVG}rect")
            assert title is not None and rect is not None
            fills[title.text] = (rect.get("fill"), g.get("data-state"))
    assert fills["a"] == (STATE_COLOURS["failed"], "failed")
    assert fills["b"] == (STATE_COLOURS["ready"], "ready")
    assert fills["gateway"][0] == fills["gateway:out"][0] == STATE_COLOURS["starting"]
    assert fills["c"][1] == ""
    assert fills["c"][0] not in (STATE_COLOURS["failed"], STATE_COLOURS["ready"])
    mermaid = to_mermaid(chain(), states)
    assert f"fill:{STATE_COLOURS['failed']}" in mermaid
    failed_class = re.search(rf"classDef (c\d+) fill:{STATE_COLOURS['failed']}", mermaid)
    assert failed_class is not None
    assert re.search(rf"^  class n1 {failed_class.group(1)}$", mermaid, re.M)  # n1 is 'a'
    assert f'"a" [label="a", fillcolor="{STATE_COLOURS["failed"]}"' in to_dot(chain(), states)


def test_states_from_processes_takes_the_worst_replica() -> None:
    processes = [{"key": "enc/0", "state": "ready"}, {"key": "enc/shard1/0", "state": "failed"},
                 {"key": "enc/1", "state": "starting"}, {"key": "rank/0", "state": "ready"},
                 {"key": "gateway", "state": "ready"}]
    assert states_from_processes(processes) == {"enc": "failed", "rank": "ready", "gateway": "ready"}


def test_when_conditions_read_as_text() -> None:
    assert format_when({"tags.lang": {"$eq": "en"}}) == 'tags.lang == "en"'
    assert format_when({"tags.score": {"$gte": 0.5, "$lt": 1}}) == "tags.score >= 0.5 and tags.score < 1"
    assert format_when({"$or": [{"text": {"$regex": "^u"}}, {"uri": {"$exists": True}}]}) == \
        '(text ~ "^u" or uri exists)'
    assert format_when({"tags.k": "v", "$not": {"tags.x": {"$in": [1, 2]}}}) == \
        'tags.k == "v" and not (tags.x in [1, 2])'
    long = format_when({"text": {"$eq": "x" * 100}})
    assert len(long) == 48 and long.endswith("…")


def test_accepts_flows_deployments_and_specs() -> None:
    spec = diamond().flow_spec()
    assert topology(spec) == topology(diamond())
    assert topology(FlowSpec.model_validate(spec.model_dump())) == topology(spec)
    dep = topology(Deployment(name="dep", shards=2))
    assert {e.source + ">" + e.target for e in dep.edges} == {"gateway>dep", "dep>gateway:out"}
    assert isinstance(plot(spec), FlowPicture)
    with pytest.raises(TypeError, match=r"plot\(\) draws a Flow.*not dict"):
        topology({"executors": []})
    with pytest.raises(ValueError, match="renderer must be"):
        to_svg(spec, renderer="png")  # type: ignore[arg-type]
    empty = topology(Flow(name="empty"))
    assert [(e.source, e.target) for e in empty.edges] == [("gateway", "gateway:out")]


def test_graphviz_renderer_without_dot_says_how_to_fix(no_dot: None) -> None:
    with pytest.raises(RuntimeError, match="install Graphviz"):
        to_svg(chain(), renderer="graphviz")


@pytest.mark.kernel
def test_plot_displays_in_a_real_kernel() -> None:
    """In a notebook, `f.plot()`'s picture is the cell's result: Graphviz's SVG when `dot` is on PATH,
    Mermaid (for JupyterLab) plus the built-in SVG when it is not."""
    jupyter_client = pytest.importorskip("jupyter_client")
    pytest.importorskip("ipykernel")
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(ROOT))
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)

        def run(code: str) -> list[dict[str, Any]]:
            results: list[dict[str, Any]] = []

            def hook(msg: dict[str, Any]) -> None:
                if msg["msg_type"] in ("display_data", "execute_result"):
                    results.append(msg["content"]["data"])
                assert msg["msg_type"] != "error", "\n".join(msg["content"]["traceback"])

            reply = kc.execute_interactive(textwrap.dedent(code), timeout=60, output_hook=hook)
            assert reply["content"]["status"] == "ok"
            return results

        run("""
            import os
            from orchestra_nb import Flow
            from orchestra_nb.plot import plot
            f = Flow(name='floating').add(name='a').add(name='b').add(name='log', needs='a', floating=True)
            f = f.add(name='audit', needs='log')
        """)
        if shutil.which("dot") and graphviz_available():
            (data,) = run("plot(f)")
            assert "Generated by graphviz" in data["image/svg+xml"]
            assert svg_graph(data["image/svg+xml"]) == expected("floating")
        (data,) = run("os.environ['PATH'] = ''\nplot(f)")
        assert mermaid_graph(data["text/vnd.mermaid"]) == expected("floating")
        assert svg_graph(data["image/svg+xml"]) == expected("floating")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize("with_dot", [True, False], ids=["dot", "no-dot"])
def test_export_flowchart_command_writes_every_node_and_edge(with_dot: bool, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`orchestra export flowchart flow.yml flow.svg` draws the YAML's Flow, with or without `dot`."""
    from click.testing import CliRunner

    from orchestra_nb.cli import cli

    if with_dot and not graphviz_available():
        pytest.skip("Graphviz's dot is not on PATH")
    config = tmp_path / "flow.yml"
    diamond().save_config(str(config))
    if not with_dot:
        empty = tmp_path / "empty-path"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "flowchart", str(config), str(tmp_path / "flow.svg")])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'flow.svg'}" in result.output
    svg = (tmp_path / "flow.svg").read_text()
    assert ("Generated by graphviz" in svg) is with_dot
    assert svg_graph(svg) == expected("diamond")
    result = runner.invoke(cli, ["export", "flowchart", str(config), str(tmp_path / "flow.mmd")])
    assert result.exit_code == 0 and mermaid_graph((tmp_path / "flow.mmd").read_text()) == expected("diamond")
    result = runner.invoke(cli, ["export", "flowchart", str(config), str(tmp_path / "flow.txt")])
    assert result.exit_code == 1 and "use a file ending in .svg" in result.output
    if not with_dot:
        result = runner.invoke(cli, ["export", "flowchart", str(config), str(tmp_path / "flow.png")])
        assert result.exit_code == 1 and "dot" in result.output.lower(), result.output


def test_flow_plot_method_colours_a_running_flow(tmp_path: Path) -> None:
    """`f.plot()` before start draws plain nodes; while serving every node is coloured ready, and
    `f.plot(path)` writes the same picture."""
    flow = Flow(name=f"plotlive{os.getpid()}").add(name="a").add(name="b", replicas=2)
    assert {n.state for n in flow.plot().topology.nodes} == {None}
    with flow:
        picture = flow.plot(str(tmp_path / "live.svg"))
        states = {n.id: n.state for n in picture.topology.nodes}
        assert states == {"gateway": "ready", "a": "ready", "b": "ready", "gateway:out": "ready"}
        svg = (tmp_path / "live.svg").read_text()
        assert svg.count(f'fill="{STATE_COLOURS["ready"]}"') >= 4
        nodes, edges, _, _ = svg_graph(svg)
        assert nodes == {"gateway", "a", "b", "gateway:out"}
        assert edges == {("gateway", "a"), ("a", "b"), ("b", "gateway:out")}
