"""Export an orchestration to Docker Compose or Kubernetes: pure functions of the spec.

The generated containers run the `orchestra executor` / `orchestra gateway` entrypoints (DESIGN.md
decision 10), images come from a generated build context (executors written in a notebook included),
and nothing here needs a network or a Docker daemon. See `compose.py`, `kubernetes.py`, `context.py`.
"""

from __future__ import annotations

from orchestra_nb.export.compose import to_docker_compose_yaml
from orchestra_nb.export.context import BuildContext, build_context
from orchestra_nb.export.kubernetes import to_kubernetes_yaml

__all__ = ["BuildContext", "build_context", "to_docker_compose_yaml", "to_kubernetes_yaml"]
