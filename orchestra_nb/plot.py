"""The topology picture of a Flow: gateway, executors (replicas, shards), joins, floating branches and
`when` conditions, drawn from the spec alone.

One model, three renderings. `topology(spec)` turns a FlowSpec into nodes and edges with the same
semantics the gateway's router uses (runtime/topology.py): an executor without `needs` hangs off the
gateway; a floating executor and everything downstream of it runs off the request path, so its edges are
dashed and it does not lead back to the gateway; every other executor that nothing (non-floating) needs
answers the gateway. The gateway is drawn twice, where requests enter and where they leave, which keeps
the picture a DAG that reads left to right.

- **Graphviz** (`to_dot`, and `to_svg` when the `graphviz` package and the `dot` binary are both
  there): the best layout. `dot` is a system binary that pip cannot install, so it is optional.
- **Mermaid** (`to_mermaid`): text that JupyterLab (4.1 and later, MIME type `text/vnd.mermaid`),
  GitHub and most Markdown viewers render, with no binary at all.
- **Built-in SVG** (`to_svg(renderer='builtin')`): a plain layered layout drawn here, so that writing
  `flow.svg` and showing a picture in Colab or classic Jupyter (which render neither Mermaid nor need
  Graphviz) always works.

Every SVG, from either renderer, names its nodes and edges the way Graphviz does: a `<g class="node">`
whose `<title>` is the executor's name (`gateway` and `gateway:out` for the two gateway ends) and a
`<g class="edge">` whose `<title>` is `source->target`. Tests, and anyone who post-processes the picture,
can therefore check it without knowing which renderer drew it.

`states` maps an executor name (or `gateway`) to a state such as `ready`, `starting` or `failed` and
colours the node; `states_from_processes` folds the per-replica process list of `status()` into that
map, the worst replica state winning. Everything here is a pure function returning text, so the
notebook panel can embed the picture.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from orchestra_nb.spec.models import DeploymentSpec, ExecutorSpec, FlowSpec

__all__ = [
    "STATE_COLOURS",
    "Edge",
    "FlowPicture",
    "Node",
    "Topology",
    "format_when",
    "graphviz_available",
    "plot",
    "states_from_processes",
    "to_dot",
    "to_mermaid",
    "to_svg",
    "topology",
]

GATEWAY_IN = "gateway"
GATEWAY_OUT = "gateway:out"
Renderer = Literal["auto", "graphviz", "builtin"]

# fill colours by state (Bootstrap's alert palette: readable on light and dark notebook themes)
STATE_COLOURS: dict[str, str] = {
    "ready": "#d4edda", "serving": "#d4edda",
    "created": "#e2e3e5", "starting": "#fff3cd", "spawning": "#fff3cd", "importing": "#fff3cd",
    "loading": "#fff3cd", "stopping": "#e2e3e5", "stopped": "#e2e3e5", "exited": "#e2e3e5",
    "closed": "#e2e3e5", "failed": "#f8d7da", "unreachable": "#f8d7da",
}
_DEFAULT_FILL = "#f5f7fa"
_GATEWAY_FILL = "#dbe8f6"
# which replica state speaks for an executor: the worst one
_SEVERITY = ["ready", "serving", "created", "stopped", "closed", "exited", "stopping", "spawning",
             "starting", "importing", "loading", "unreachable", "failed"]


@dataclass(frozen=True)
class Node:
    id: str
    name: str
    details: tuple[str, ...]
    kind: Literal["gateway", "executor", "join"]
    floating: bool = False
    state: str | None = None

    @property
    def fill(self) -> str:
        if self.state is not None:
            return STATE_COLOURS.get(self.state, _DEFAULT_FILL)
        return _GATEWAY_FILL if self.kind == "gateway" else _DEFAULT_FILL


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str | None = None
    floating: bool = False


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


# ---- the model ------------------------------------------------------------------------------------
def _as_spec(obj: Any) -> FlowSpec:
    if isinstance(obj, FlowSpec):
        return obj
    if isinstance(obj, DeploymentSpec):
        return obj.to_flow_spec()
    flow_spec = getattr(obj, "flow_spec", None)
    if callable(flow_spec):
        spec = flow_spec()
        if isinstance(spec, FlowSpec):
            return spec
    raise TypeError(f"plot() draws a Flow, a Deployment, a FlowSpec or a DeploymentSpec, not "
                    f"{type(obj).__name__}")


def _value(v: Any) -> str:
    return json.dumps(v, default=str, ensure_ascii=False)


_OPS = {"$eq": "==", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<=", "$in": "in",
        "$nin": "not in", "$regex": "~"}


def format_when(when: Any, limit: int = 48) -> str:
    """A short readable form of a `when` condition, e.g. `tags.lang == "en"`."""
    def cond(c: Any) -> str:
        if not isinstance(c, dict):
            return _value(c)
        parts = []
        for key, test in c.items():
            if key in ("$and", "$or") and isinstance(test, list):
                joined = f" {key[1:]} ".join(cond(t) for t in test)
                parts.append(f"({joined})" if len(test) > 1 else joined)
            elif key == "$not":
                parts.append(f"not ({cond(test)})")
            elif isinstance(test, dict) and test and all(str(k).startswith("$") for k in test):
                for op, arg in test.items():
                    if op == "$exists":
                        parts.append(f"{key} {'exists' if arg else 'missing'}")
                    else:
                        parts.append(f"{key} {_OPS.get(op, op)} {_value(arg)}")
            else:
                parts.append(f"{key} == {_value(test)}")
        return " and ".join(parts)

    text = cond(when)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _details(ex: ExecutorSpec, joins: int) -> tuple[str, ...]:
    out = []
    label = ex.uses_label
    if label not in ("Executor", ex.name):
        out.append(label)
    counts = []
    if ex.replicas > 1:
        counts.append(f"{ex.replicas} replicas")
    if ex.shards > 1:
        polling = ex.polling if isinstance(ex.polling, str) else "per endpoint"
        counts.append(f"{ex.shards} shards ({polling})")
    if counts:
        out.append(", ".join(counts))
    if joins > 1:
        out.append(f"join of {joins}")
    if ex.floating:
        out.append("floating")
    return tuple(out)


def topology(spec_or_flow: Any, states: dict[str, str] | None = None) -> Topology:
    """The nodes and edges to draw for a Flow (see the module docstring for the rules)."""
    spec = _as_spec(spec_or_flow)
    states = states or {}
    executors = [ex for ex in spec.executors]
    names = [ex.name or "executor" for ex in executors]
    needs = {name: (list(ex.needs) or [GATEWAY_IN]) for name, ex in zip(names, executors, strict=True)}
    floating: set[str] = set()
    changed = True
    while changed:  # a floating executor, and everything downstream of one
        changed = False
        for name, ex in zip(names, executors, strict=True):
            if name not in floating and (ex.floating or any(n in floating for n in needs[name])):
                floating.add(name)
                changed = True
    nodes = [Node(GATEWAY_IN, "gateway", (" · ".join(spec.gateway.protocol),), "gateway",
                  state=states.get("gateway"))]
    edges: list[Edge] = []
    for name, ex in zip(names, executors, strict=True):
        joins = len(needs[name])
        nodes.append(Node(name, name, _details(ex, joins), "join" if joins > 1 else "executor",
                          floating=name in floating, state=states.get(name)))
        label = format_when(ex.when) if ex.when else None
        edges.extend(Edge(n, name, label, floating=name in floating) for n in needs[name])
    needed = {n for name in names if name not in floating for n in needs[name]}
    sinks = [n for n in names if n not in floating and n not in needed]
    nodes.append(Node(GATEWAY_OUT, "gateway", (), "gateway", state=states.get("gateway")))
    edges.extend(Edge(n, GATEWAY_OUT) for n in sinks or [GATEWAY_IN])
    return Topology(spec.name, tuple(nodes), tuple(edges))


def states_from_processes(processes: list[dict[str, Any]]) -> dict[str, str]:
    """Per-executor states from `status()['processes']` (keys like 'encoder/shard1/0'): worst wins."""
    out: dict[str, str] = {}
    for proc in processes:
        name = str(proc.get("key", "")).split("/")[0]
        state = str(proc.get("state", ""))
        old = out.get(name)
        if old is None or _rank(state) > _rank(old):
            out[name] = state
    return out


def _rank(state: str) -> int:
    return _SEVERITY.index(state) if state in _SEVERITY else len(_SEVERITY) // 2


# ---- Graphviz -------------------------------------------------------------------------------------
def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(spec_or_flow: Any, states: dict[str, str] | None = None) -> str:
    """Graphviz DOT source of the topology."""
    topo = spec_or_flow if isinstance(spec_or_flow, Topology) else topology(spec_or_flow, states)
    lines = [f"digraph {_dot_str(topo.name)} {{",
             "  rankdir=LR;",
             '  graph [fontname="Helvetica", fontsize=11, nodesep=0.3, ranksep=0.5];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, '
             'color="#5b6b7b"];',
             '  edge [fontname="Helvetica", fontsize=9, color="#5b6b7b"];']
    for n in topo.nodes:
        attrs = {"label": "\n".join((n.name, *n.details)), "fillcolor": n.fill}
        if n.kind == "gateway":
            attrs["shape"] = "oval"
        if n.kind == "join":
            attrs["peripheries"] = "2"
        if n.floating:
            attrs["style"] = "rounded,filled,dashed"
        if n.state:
            attrs["tooltip"] = f"{n.name}: {n.state}"
        lines.append(f"  {_dot_str(n.id)} [{', '.join(f'{k}={_dot_str(v)}' for k, v in attrs.items())}];")
    for e in topo.edges:
        attrs = {}
        if e.label:
            attrs["label"] = e.label
        if e.floating:
            attrs["style"] = "dashed"
        extra = f" [{', '.join(f'{k}={_dot_str(v)}' for k, v in attrs.items())}]" if attrs else ""
        lines.append(f"  {_dot_str(e.source)} -> {_dot_str(e.target)}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def graphviz_available() -> bool:
    """True when the `graphviz` package imports and the `dot` binary is on PATH."""
    return importlib.util.find_spec("graphviz") is not None and shutil.which("dot") is not None


def _graphviz_render(source: str, fmt: str) -> bytes:
    if shutil.which("dot") is None:
        raise RuntimeError(f"drawing {fmt.upper()} with Graphviz needs the `dot` binary, which is not on "
                           "PATH: install Graphviz (`apt-get install graphviz`, `brew install graphviz`, "
                           "`conda install graphviz`), or write .svg/.mmd/.dot, which need no binary")
    try:  # untyped; imported by name so mypy needs no stubs whether or not it is installed
        graphviz: Any = importlib.import_module("graphviz")
    except ImportError:
        raise ImportError("drawing with Graphviz needs the `graphviz` package: "
                          "`pip install 'orchestra-nb[notebook]'` (or `pip install graphviz`)") from None
    out: bytes = graphviz.pipe("dot", fmt, source.encode())
    return out


# ---- Mermaid --------------------------------------------------------------------------------------
def _mermaid_text(text: str) -> str:
    return html.escape(text, quote=False).replace('"', "#quot;")


def to_mermaid(spec_or_flow: Any, states: dict[str, str] | None = None) -> str:
    """Mermaid flowchart text of the topology (node ids are n0, n1, …; labels carry the names)."""
    topo = spec_or_flow if isinstance(spec_or_flow, Topology) else topology(spec_or_flow, states)
    ids = {n.id: f"n{i}" for i, n in enumerate(topo.nodes)}
    lines = ["flowchart LR"]
    for n in topo.nodes:
        label = "<br/>".join(_mermaid_text(t) for t in (n.name, *n.details))
        shape = ('(["', '"])') if n.kind == "gateway" else (('[["', '"]]') if n.kind == "join" else ('("', '")'))
        lines.append(f"  {ids[n.id]}{shape[0]}{label}{shape[1]}")
    for e in topo.edges:
        arrow = "-.->" if e.floating else "-->"
        label = f'|"{_mermaid_text(e.label)}"|' if e.label else ""
        lines.append(f"  {ids[e.source]} {arrow}{label} {ids[e.target]}")
    fills = sorted({n.fill for n in topo.nodes})
    for i, fill in enumerate(fills):
        members = ",".join(ids[n.id] for n in topo.nodes if n.fill == fill)
        lines.append(f"  classDef c{i} fill:{fill},stroke:#5b6b7b")
        lines.append(f"  class {members} c{i}")
    floating = [ids[n.id] for n in topo.nodes if n.floating]
    if floating:
        lines.append("  classDef floating stroke-dasharray:4 3")
        lines.append(f"  class {','.join(floating)} floating")
    return "\n".join(lines) + "\n"


# ---- built-in SVG ---------------------------------------------------------------------------------
_CHAR_W, _LINE_H, _PAD, _COL_GAP, _ROW_GAP = 7.0, 15.0, 10.0, 56.0, 22.0


def _layers(topo: Topology) -> list[list[str]]:
    preds: dict[str, list[str]] = {n.id: [] for n in topo.nodes}
    for e in topo.edges:
        preds[e.target].append(e.source)
    rank: dict[str, int] = {}

    def depth(node: str) -> int:
        if node not in rank:
            rank[node] = 1 + max((depth(p) for p in preds[node]), default=-1)
        return rank[node]

    for n in topo.nodes:
        depth(n.id)
    layers: list[list[str]] = [[] for _ in range(max(rank.values()) + 1)]
    for n in topo.nodes:
        layers[rank[n.id]].append(n.id)
    # one barycentre pass: place each node near the mean position of its predecessors
    position: dict[str, float] = {}
    for layer in layers:
        layer.sort(key=lambda i: sum(position.get(p, 0.0) for p in preds[i]) / max(1, len(preds[i])))
        position.update({node: float(k) for k, node in enumerate(layer)})
    return layers


def _builtin_svg(topo: Topology) -> str:
    sizes = {n.id: (max(len(t) for t in (n.name, *n.details)) * _CHAR_W + 2 * _PAD,
                    (1 + len(n.details)) * _LINE_H + 2 * _PAD - 4) for n in topo.nodes}
    layers = _layers(topo)
    col_w = [max(sizes[i][0] for i in layer) for layer in layers]
    col_h = [sum(sizes[i][1] for i in layer) + _ROW_GAP * (len(layer) - 1) for layer in layers]
    height = max(col_h) + 2 * _PAD
    # a `when` label sits in the gap before its target: widen the gaps to fit the longest one
    gap = max([_COL_GAP] + [len(e.label) * 6.0 + 16 for e in topo.edges if e.label])
    width = sum(col_w) + gap * (len(layers) - 1) + 2 * _PAD
    box: dict[str, tuple[float, float, float, float]] = {}
    x = _PAD
    for layer, cw, ch in zip(layers, col_w, col_h, strict=True):
        y = _PAD + (height - 2 * _PAD - ch) / 2
        for i in layer:
            w, h = sizes[i]
            box[i] = (x + (cw - w) / 2, y, w, h)
            y += h + _ROW_GAP
        x += cw + gap
    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" '
           'font-size="12">',
           f"<title>{esc(topo.name)}</title>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#5b6b7b"/>'
           "</marker></defs>"]
    for e in topo.edges:
        sx, sy, sw, sh = box[e.source]
        tx, ty, _tw, th = box[e.target]
        x1, y1, x2, y2 = sx + sw, sy + sh / 2, tx, ty + th / 2
        bend = (x2 - x1) / 2
        dash = ' stroke-dasharray="5 4"' if e.floating else ""
        out.append(f'<g class="edge"><title>{esc(e.source)}-&gt;{esc(e.target)}</title>'
                   f'<path d="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} '
                   f'{x2:.1f},{y2:.1f}" fill="none" stroke="#5b6b7b"{dash} marker-end="url(#arrow)"/>')
        if e.label:
            lx, ly = x2 - gap / 2, y2 - 6
            out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle" '
                       f'font-size="10" fill="#333" stroke="#fff" stroke-width="3" paint-order="stroke">'
                       f"{esc(e.label)}</text>")
        out.append("</g>")
    for n in topo.nodes:
        bx, by, bw, bh = box[n.id]
        radius = bh / 2 if n.kind == "gateway" else 6
        dash = ' stroke-dasharray="5 4"' if n.floating else ""
        tooltip = f"{n.name}: {n.state}" if n.state else n.name
        out.append(f'<g class="node" data-state="{esc(n.state or "")}"><title>{esc(n.id)}</title>'
                   f"<desc>{esc(tooltip)}</desc>"
                   f'<rect x="{bx:.1f}" y="{by:.1f}" width="{bw:.1f}" height="{bh:.1f}" rx="{radius:.1f}" '
                   f'fill="{n.fill}" stroke="#5b6b7b"{dash}/>')
        if n.kind == "join":
            out.append(f'<rect x="{bx + 3:.1f}" y="{by + 3:.1f}" width="{bw - 6:.1f}" '
                       f'height="{bh - 6:.1f}" rx="4" fill="none" stroke="#5b6b7b"/>')
        for k, text in enumerate((n.name, *n.details)):
            weight = ' font-weight="bold"' if k == 0 else ' font-size="11" fill="#444"'
            out.append(f'<text x="{bx + bw / 2:.1f}" y="{by + _PAD + 10 + k * _LINE_H:.1f}" '
                       f'text-anchor="middle"{weight}>{esc(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_svg(spec_or_flow: Any, states: dict[str, str] | None = None, renderer: Renderer = "auto") -> str:
    """SVG of the topology: Graphviz when available (or `renderer='graphviz'`), else the built-in one."""
    topo = spec_or_flow if isinstance(spec_or_flow, Topology) else topology(spec_or_flow, states)
    if renderer not in ("auto", "graphviz", "builtin"):
        raise ValueError(f"renderer must be 'auto', 'graphviz' or 'builtin', not {renderer!r}")
    if renderer == "graphviz" or (renderer == "auto" and graphviz_available()):
        return _graphviz_render(to_dot(topo), "svg").decode()
    return _builtin_svg(topo)


# ---- the entry point ------------------------------------------------------------------------------
class FlowPicture:
    """What `plot()` returns: shows itself in a notebook; `.svg`, `.mermaid`, `.dot` give the text."""

    def __init__(self, topo: Topology, path: str | None = None) -> None:
        self.topology = topo
        self.path = path

    @property
    def dot(self) -> str:
        return to_dot(self.topology)

    @property
    def mermaid(self) -> str:
        return to_mermaid(self.topology)

    @property
    def svg(self) -> str:
        return to_svg(self.topology)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        if graphviz_available():
            return {"image/svg+xml": self.svg, "text/plain": str(self)}
        # no dot: JupyterLab renders the Mermaid; Colab and classic Jupyter show the built-in SVG
        return {"text/vnd.mermaid": self.mermaid, "image/svg+xml": _builtin_svg(self.topology),
                "text/plain": str(self)}

    def __str__(self) -> str:
        edges = [f"{e.source} {'..>' if e.floating else '->'} {e.target}"
                 + (f"  [when {e.label}]" if e.label else "") for e in self.topology.edges]
        return f"Flow {self.topology.name!r}:\n  " + "\n  ".join(edges)

    def __repr__(self) -> str:
        return f"<FlowPicture {self.topology.name!r}: {len(self.topology.nodes)} nodes, " \
               f"{len(self.topology.edges)} edges>"


def plot(spec_or_flow: Any, path: str | os.PathLike[str] | None = None,
         states: dict[str, str] | None = None) -> FlowPicture:
    """Draw a Flow's topology; with `path`, also write it there.

    The file type follows the suffix: `.svg` (Graphviz when available, else the built-in drawing),
    `.png`/`.pdf` (needs Graphviz), `.mmd`/`.mermaid` (Mermaid text), `.md` (a Mermaid code block),
    `.dot`/`.gv` (Graphviz source). In a notebook the returned object displays the picture.
    """
    topo = topology(spec_or_flow, states)
    picture = FlowPicture(topo, None if path is None else os.fspath(path))
    if path is None:
        return picture
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".svg":
        target.write_text(to_svg(topo), encoding="utf-8")
    elif suffix in (".png", ".pdf"):
        target.write_bytes(_graphviz_render(to_dot(topo), suffix[1:]))
    elif suffix in (".mmd", ".mermaid"):
        target.write_text(to_mermaid(topo), encoding="utf-8")
    elif suffix == ".md":
        target.write_text(f"```mermaid\n{to_mermaid(topo)}```\n", encoding="utf-8")
    elif suffix in (".dot", ".gv"):
        target.write_text(to_dot(topo), encoding="utf-8")
    else:
        raise ValueError(f"cannot tell which picture to write to {os.fspath(path)!r}: use a file ending "
                         "in .svg, .png, .pdf, .mmd, .md or .dot")
    return picture
