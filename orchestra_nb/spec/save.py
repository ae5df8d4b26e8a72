"""Saving a Flow or Deployment to YAML: the other half of orchestra_nb.spec.yaml.

Classes defined in `__main__` or a notebook cell are written, with what they use, to a module next to
the YAML (listed in `py_modules`), so the file starts in a fresh process.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import os
import re
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

from orchestra_nb.errors import ConfigError
from orchestra_nb.spec.models import DeploymentSpec, ExecutorSpec, FlowSpec
from orchestra_nb.spec.yaml import _DEFAULT_EXECUTOR, _SHARED, _YAML_SUFFIXES

if TYPE_CHECKING:
    from orchestra_nb.orchestration.deployment import Deployment
    from orchestra_nb.orchestration.flow import Flow

__all__ = ["object_source", "save_config"]


# ---- saving ------------------------------------------------------------------------------------------
def save_config(obj: Flow | Deployment, path: str) -> None:
    """Write `obj`'s spec as YAML; classes from `__main__` or a notebook go to a module beside it."""
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    stem = re.sub(r"\W", "_", os.path.basename(full).split(".")[0]) or "orchestra"
    writer = _Writer(folder, obj.base_dir or os.getcwd(), f"{stem}_executors.py")
    spec = obj.spec
    data = _flow_data(spec, writer) if isinstance(spec, FlowSpec) else _deployment_data(spec, writer)
    os.makedirs(folder, exist_ok=True)
    writer.write_module()
    try:
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    except yaml.representer.RepresenterError as exc:
        raise ConfigError(f"cannot save {obj!r} to YAML: a value has no YAML form: {exc.args[-1]!r}; "
                          "keep uses_with and other options to plain data (numbers, strings, lists, "
                          "mappings)") from None
    with open(full, "w", encoding="utf-8") as f:
        f.write(text)


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_defaults=True)


def _flow_data(spec: FlowSpec, writer: _Writer) -> dict[str, Any]:
    with_: dict[str, Any] = {"name": spec.name}
    if spec.log_config:
        with_["log_config"] = writer.rel_abs(spec.log_config)
    if spec.env:
        with_["env"] = dict(spec.env)
    gw = _dump(spec.gateway)
    gw_env = gw.pop("env", None)
    with_.update(gw)
    data: dict[str, Any] = {"jtype": "Flow", "version": "1", "with": with_}
    if gw_env:
        data["gateway"] = {"env": gw_env}
    executors = []
    previous: str | None = None
    for ex in spec.executors:
        item = writer.executor(ex)
        chain = [previous] if previous else ["gateway"]
        if ex.needs != chain:
            item["needs"] = list(ex.needs)
        executors.append(item)
        previous = ex.name
    data["executors"] = executors
    return data


def _deployment_data(spec: DeploymentSpec, writer: _Writer) -> dict[str, Any]:
    ex, gw = spec.executor, spec.gateway
    with_: dict[str, Any] = {"name": spec.name}
    if spec.log_config:
        with_["log_config"] = writer.rel_abs(spec.log_config)
    ex_data = writer.executor(ex)
    extra_ex: dict[str, Any] = {}
    if ex.name != spec.name:
        extra_ex["name"] = ex.name
    for key in ("host", "port", "needs"):
        if getattr(ex, key) != getattr(_DEFAULT_EXECUTOR, key):
            extra_ex[key] = getattr(ex, key)
        ex_data.pop(key, None)
    ex_data.pop("name", None)
    for key in _SHARED:  # shared keys: `with:` sets both; a differing gateway value goes under gateway:
        ex_data[key] = getattr(ex, key)
    with_.update(ex_data)
    gw_data = _dump(gw)
    extra_gw: dict[str, Any] = {}
    if "env" in gw_data:
        extra_gw["env"] = gw_data.pop("env")
    for key in _SHARED:
        gw_data.pop(key, None)
        if getattr(gw, key) != getattr(ex, key):
            extra_gw[key] = getattr(gw, key)
    with_.update(gw_data)
    for key in _SHARED:
        if with_[key] == getattr(_DEFAULT_EXECUTOR, key) and key not in extra_gw:
            del with_[key]
    data: dict[str, Any] = {"jtype": "Deployment", "version": "1", "with": with_}
    if extra_gw:
        data["gateway"] = extra_gw
    if extra_ex:
        data["executor"] = extra_ex
    return data


class _Writer:
    """Turns an ExecutorSpec into YAML data; collects notebook classes for the module beside the YAML."""

    def __init__(self, folder: str, old_base: str, module_file: str) -> None:
        self.folder = folder
        self.old_base = old_base
        self.module_file = module_file
        self.sources: list[str] = []
        self.imports: list[str] = []
        self.done: set[int] = set()

    def rel(self, value: str) -> str:
        """A path relative to the old base, rewritten relative to the new YAML's folder."""
        old = os.path.normpath(os.path.join(self.old_base, value))
        if os.path.normpath(os.path.join(self.folder, value)) == old:
            return value
        return os.path.relpath(old, self.folder)

    def rel_abs(self, value: str) -> str:
        full = os.path.normpath(os.path.join(self.old_base, value))
        return os.path.relpath(full, self.folder)

    def executor(self, ex: ExecutorSpec) -> dict[str, Any]:
        data = _dump(ex)
        item: dict[str, Any] = {"name": ex.name}
        py_modules = [self.rel(p) for p in ex.py_modules]
        uses = ex.uses
        if isinstance(uses, type):
            uses, module = self.class_uses(uses)
            if module and module not in py_modules:
                py_modules.append(module)
        elif isinstance(uses, str) and uses.endswith(_YAML_SUFFIXES):
            uses = self.rel(uses)
        elif isinstance(uses, dict) and uses.get("py_modules"):
            uses = {**uses, "py_modules": [self.rel(p) for p in uses["py_modules"]]}
        if uses != "Executor":
            item["uses"] = uses
        for key in ("uses", "name", "needs"):
            data.pop(key, None)
        if py_modules:
            data["py_modules"] = py_modules
        else:
            data.pop("py_modules", None)
        item.update(data)
        return item

    def class_uses(self, cls: type) -> tuple[str, str | None]:
        """(`uses` value, py_modules entry or None) for a class object."""
        module = sys.modules.get(cls.__module__)
        if cls.__module__ != "__main__" and module is not None and "<locals>" not in cls.__qualname__:
            file = getattr(module, "__file__", None)
            package = getattr(getattr(module, "__spec__", None), "parent", "")
            if package or not file or "site-packages" in file or "dist-packages" in file:
                return f"{cls.__module__}.{cls.__qualname__}", None
            return cls.__qualname__, self.rel(os.path.relpath(file, self.old_base))
        self.add_class(cls)
        return cls.__name__, self.module_file

    def add_class(self, obj: Any) -> None:
        if id(obj) in self.done:
            return
        self.done.add(id(obj))
        source = object_source(obj)
        namespace = _globals_of(obj)
        tree = ast.parse(source)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        for name in sorted(used):
            if name not in namespace or name == getattr(obj, "__name__", None):
                continue
            self._add_global(name, namespace[name])
        self.sources.append(source)

    def _add_global(self, name: str, value: Any) -> None:
        import types

        if isinstance(value, types.ModuleType):
            line = f"import {value.__name__}" + (f" as {name}" if name != value.__name__ else "")
        elif isinstance(value, (type, types.FunctionType)) and \
                value.__module__ not in ("__main__", "builtins"):
            owner = sys.modules.get(value.__module__)
            qualname = value.__qualname__
            if owner is not None and getattr(owner, qualname, None) is value:
                line = f"from {value.__module__} import {qualname}" + (f" as {name}" if name != qualname else "")
            else:
                line = f"# {name}: {value!r} could not be saved; define or import it here"
        elif isinstance(value, (type, types.FunctionType)):
            self.add_class(value)
            return
        elif isinstance(value, (int, float, str, bytes, bool, type(None))) or \
                (isinstance(value, (list, tuple, dict)) and _literal(value)):
            line = f"{name} = {value!r}"
        else:
            line = f"# {name}: a {type(value).__name__} could not be saved; define it here"
        if line not in self.imports:
            self.imports.append(line)

    def write_module(self) -> None:
        if not self.sources:
            return
        header = ('"""Executors defined in a notebook or __main__, saved by orchestra-nb save_config.\n\n'
                  'The YAML beside this file lists it in py_modules."""\n\n')
        body = "\n".join(self.imports) + "\n\n\n" + "\n\n\n".join(s.rstrip() + "\n" for s in self.sources)
        with open(os.path.join(self.folder, self.module_file), "w", encoding="utf-8") as f:
            f.write(header + body)


def _literal(value: Any) -> bool:
    try:
        return bool(ast.literal_eval(repr(value)) == value)
    except (ValueError, SyntaxError):
        return False


def _globals_of(obj: Any) -> dict[str, Any]:
    if isinstance(obj, type):
        for member in vars(obj).values():
            func = getattr(member, "__func__", member)
            if hasattr(func, "__globals__"):
                return dict(func.__globals__)
        module = sys.modules.get(obj.__module__)
        return dict(vars(module)) if module is not None else {}
    return dict(getattr(obj, "__globals__", {}))


def object_source(obj: Any) -> str:
    """The source of a class or function, also when it was defined in a notebook cell."""
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        pass
    name = obj.__name__
    codes = []
    if isinstance(obj, type):
        for member in vars(obj).values():
            func = getattr(member, "__func__", member)
            code = getattr(func, "__code__", None)
            if code is not None:
                codes.append(code)
    elif hasattr(obj, "__code__"):
        codes.append(obj.__code__)
    for code in codes:
        lines = linecache.getlines(code.co_filename)
        found = _find_def("".join(lines), name, code.co_firstlineno)
        if found:
            return found
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        for cell in reversed(list(shell.history_manager.input_hist_raw)):
            found = _find_def(cell, name, None)
            if found:
                return found
    raise ConfigError(f"cannot find the source of {name!r} to save it next to the YAML; define it in a "
                      ".py file and list that file in py_modules")


def _find_def(source: str, name: str, line: int | None) -> str | None:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    lines = source.splitlines(keepends=True)
    best = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            end = node.end_lineno or node.lineno
            if line is None or start <= line <= end:
                best = textwrap.dedent("".join(lines[start - 1:end]))
    return best
