"""Turning an ExecutorSpec's `uses` into an Executor class, inside the replica process.

`uses` may be a class (sent by value), a class name found in the `py_modules` files, a dotted
`package.module.Class`, a path to an Executor YAML file or an inline mapping (the last two are handled
by `orchestra_nb.spec.yaml`). The parent never imports user modules for this.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

from orchestra_nb.errors import ConfigError
from orchestra_nb.executor import Executor

__all__ = ["import_py_module", "resolve_executor_class"]


def import_py_module(path: str, base_dir: str | None = None) -> ModuleType:
    """Import a Python file by path; its folder goes on sys.path so its own imports work."""
    full = os.path.abspath(os.path.join(base_dir or os.getcwd(), path))
    if not os.path.isfile(full):
        raise ConfigError(f"py_modules lists {path!r}, but {full} does not exist")
    folder = os.path.dirname(full)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = os.path.splitext(os.path.basename(full))[0]
    existing = sys.modules.get(name)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == full:
        return existing
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {full}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _executors_in(module: ModuleType) -> list[str]:
    return sorted(n for n, v in vars(module).items()
                  if isinstance(v, type) and issubclass(v, Executor) and v is not Executor)


def resolve_executor_class(uses: Any, py_modules: list[str], base_dir: str | None = None) -> tuple[type[Executor], dict[str, Any]]:
    """The class named by `uses`, and extra `uses_with` that an Executor YAML or mapping carried."""
    if isinstance(uses, type):
        if not issubclass(uses, Executor):
            raise ConfigError(f"uses={uses.__qualname__} is not a subclass of orchestra_nb.Executor")
        return uses, {}
    if isinstance(uses, dict) or (isinstance(uses, str) and uses.endswith((".yml", ".yaml"))):
        from orchestra_nb.spec.yaml import load_executor_uses

        return load_executor_uses(uses, base_dir)
    if not isinstance(uses, str) or not uses:
        raise ConfigError(f"uses must be an Executor class, a class name or a dotted path, got {uses!r}")
    if uses == "Executor":
        return Executor, {}
    modules = [import_py_module(p, base_dir) for p in py_modules]
    for module in modules:
        found = getattr(module, uses, None)
        if isinstance(found, type) and issubclass(found, Executor):
            return found, {}
    if "." in uses:
        module_name, _, cls_name = uses.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"uses={uses!r}: cannot import module {module_name!r}: {exc}") from None
        found = getattr(module, cls_name, None)
        if isinstance(found, type) and issubclass(found, Executor):
            return found, {}
        raise ConfigError(f"uses={uses!r}: module {module_name!r} has no Executor class {cls_name!r}; "
                          f"it has {_executors_in(module)}")
    known = [n for m in modules for n in _executors_in(m)]
    where = f" in {py_modules}" if py_modules else " (no py_modules given)"
    raise ConfigError(f"uses={uses!r}: no Executor class of that name{where}; found {known}")
