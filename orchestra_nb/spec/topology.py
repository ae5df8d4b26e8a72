"""Checks on a Flow's graph: unique names, known `needs`, no cycles. Errors name what is wrong."""

from __future__ import annotations

from orchestra_nb.errors import TopologyError
from orchestra_nb.spec.models import FlowSpec

__all__ = ["validate_topology"]


def validate_topology(spec: FlowSpec) -> None:
    names: list[str] = []
    for ex in spec.executors:
        if ex.name is None:
            raise TopologyError("every executor in a Flow needs a name (the builder assigns one)")
        if ex.name in names:
            raise TopologyError(f"two executors are named {ex.name!r}; names in a Flow must be unique")
        names.append(ex.name)
    known = set(names) | {"gateway"}
    for ex in spec.executors:
        for need in ex.needs:
            if need not in known:
                raise TopologyError(f"executor {ex.name!r} needs {need!r}, which is not in the Flow; "
                                    f"known names: {sorted(known)}")
            if need == ex.name:
                raise TopologyError(f"executor {ex.name!r} needs itself")
    graph = {ex.name: [n for n in ex.needs if n != "gateway"] for ex in spec.executors if ex.name}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name):], name]
            raise TopologyError(f"the Flow has a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        path.append(name)
        for need in graph[name]:
            visit(need)
        path.pop()
        state[name] = 2

    for name in graph:
        visit(name)
