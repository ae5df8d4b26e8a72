"""orchestra-nb: serve and chain model Executors from a notebook, and take them to a cluster.

The public API is imported lazily, so `import orchestra_nb` stays light (no grpc server, IPython,
ipywidgets or torch) and changes no global state.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from orchestra_nb._version import __version__

if TYPE_CHECKING:
    from orchestra_nb.client import AsyncClient, Client
    from orchestra_nb.docs import Doc, DocList
    from orchestra_nb.executor import Executor, requests
    from orchestra_nb.orchestration.deployment import Deployment
    from orchestra_nb.orchestration.flow import Flow
    from orchestra_nb.orchestration.registry import close_all, running
    from orchestra_nb.spec.yaml import load_config

__all__ = [
    "AsyncClient",
    "Client",
    "Deployment",
    "Doc",
    "DocList",
    "Executor",
    "Flow",
    "__version__",
    "close_all",
    "load_config",
    "requests",
    "running",
]

_LAZY = {
    "AsyncClient": "orchestra_nb.client",
    "Client": "orchestra_nb.client",
    "Deployment": "orchestra_nb.orchestration.deployment",
    "Doc": "orchestra_nb.docs",
    "DocList": "orchestra_nb.docs",
    "Executor": "orchestra_nb.executor",
    "Flow": "orchestra_nb.orchestration.flow",
    "close_all": "orchestra_nb.orchestration.registry",
    "load_config": "orchestra_nb.spec.yaml",
    "requests": "orchestra_nb.executor",
    "running": "orchestra_nb.orchestration.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestra_nb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext orchestra_nb`: the `%%orchestra` and `%orchestra` magics."""
    from orchestra_nb.notebook import load_ipython_extension as load

    load(ipython)


def __dir__() -> list[str]:
    return sorted(__all__)
