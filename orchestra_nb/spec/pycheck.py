"""Checking `uses` against Python files without importing them (the other half of spec/yaml.py).

The parent process must not import user code (it may pull in torch or a model), yet a typo in a class
name or in `uses_with` should fail at load time with the YAML's file:line, not later in a replica. So the
`py_modules` files are parsed with `ast`: the Executor classes they define, the methods `uses_requests`
may name, and the `__init__` parameters `uses_with` must fit. Where a file cannot tell (decorators,
metaclasses, `**kwargs`, a base class from another module), the checks stay silent.
"""

from __future__ import annotations

import ast
import difflib
import importlib.machinery
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Any

from orchestra_nb.spec.yaml import (
    _YAML_SUFFIXES,
    EXECUTOR_YAML_KEYS,
    Path,
    _check_keys,
    _compose,
    _read_source,
    _Source,
)

__all__ = ["check_executor_mapping", "check_uses"]


@dataclass
class _PyModule:
    classes: dict[str, ast.ClassDef]

    def executor_classes(self) -> list[str]:
        def is_executor(name: str, seen: frozenset[str] = frozenset()) -> bool:
            node = self.classes.get(name)
            if node is None or name in seen:
                return False
            for base in node.bases:
                base_name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                if base_name == "Executor" or is_executor(base_name, seen | {name}):
                    return True
            return False

        return sorted(n for n in self.classes if is_executor(n))

    def methods(self, name: str) -> set[str] | None:
        """Methods of class `name` and its in-file bases; None when a base lies outside the file."""
        node = self.classes.get(name)
        if node is None:
            return None
        out = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for base in node.bases:
            base_name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
            if base_name == "Executor":
                from orchestra_nb.executor import Executor

                out |= {n for n in dir(Executor) if not n.startswith("_") and callable(getattr(Executor, n))}
                continue
            inherited = self.methods(base_name)
            if inherited is None:
                return None
            out |= inherited
        return out


    def init_params(self, name: str, seen: frozenset[str] = frozenset()) -> tuple[set[str], set[str]] | None:
        """(keyword arguments accepted, required ones) by class `name`'s constructor, when the file says
        for sure; None when it cannot tell (a base outside the file, several bases, `**kwargs` read or
        not simply passed on to the base's `__init__`). `Executor` itself takes none."""
        node = self.classes.get(name)
        if node is None or name in seen or len(node.bases) != 1 or node.decorator_list or node.keywords:
            return None  # a decorator (@dataclass) or a metaclass may write the constructor
        if any(isinstance(n, (ast.Assign, ast.AnnAssign)) and "__init__" in ast.dump(n) for n in node.body):
            return None
        base = node.bases[0]
        base_name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")

        def inherited(drop: set[str]) -> tuple[set[str], set[str]] | None:
            if base_name == "Executor":
                return set(), set()
            got = self.init_params(base_name, seen | {name})
            return None if got is None else (got[0] - drop, got[1] - drop)

        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is None:
            return inherited(set())
        args = init.args
        if args.posonlyargs or not args.args:
            return None
        positional = args.args[1:]
        accepted = {a.arg for a in [*positional, *args.kwonlyargs]}
        required = {a.arg for a in positional[:len(positional) - len(args.defaults)]}
        required |= {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None}
        if args.kwarg is None:
            return accepted, required
        kwarg = args.kwarg.arg
        reads = [n for n in ast.walk(init) if isinstance(n, ast.Name) and n.id == kwarg]
        calls = [c for c in ast.walk(init) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                 and c.func.attr == "__init__"
                 and any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kwarg
                         for k in c.keywords)]
        # `**kwargs` only passed on, once, by keyword: the base's constructor decides what it accepts
        if len(calls) != 1 or len(reads) != 1 or any(not isinstance(a, ast.Name) for a in calls[0].args) \
                or len(calls[0].args) > 1:
            return None
        passed = {k.arg for k in calls[0].keywords if k.arg is not None}
        parent = inherited(passed)
        if parent is None:
            return None
        return accepted | parent[0], required | (parent[1] - accepted)


def _check_init_args(module: _PyModule, cls_name: str, given: dict[str, Any], path: Path, src: _Source,
                     *, require: bool) -> None:
    """Keyword arguments for the constructor (`uses_with`, an Executor YAML's `with:`) that it takes."""
    params = module.init_params(cls_name)
    if params is None:
        return
    accepted, required = params
    for key in given:
        if key not in accepted:
            close = difflib.get_close_matches(str(key), sorted(accepted), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            takes = f"it takes {sorted(accepted)}" if accepted else "it takes no arguments"
            src.fail((*path, key), f"{cls_name}.__init__ has no argument {key!r}; {hint}{takes}", key=True)
    missing = sorted(required - set(given))
    if require and missing:
        src.fail(path, f"{cls_name}.__init__ needs {missing}; give {'them' if len(missing) > 1 else 'it'} in "
                       f"`uses_with: {{{missing[0]}: ...}}`")


def _parse_py_module(full: str, src: _Source, path: Path) -> _PyModule:
    try:
        with open(full, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=full)
    except SyntaxError as exc:
        src.fail(path, f"{full}:{exc.lineno}:{exc.offset}: the py_modules file has a syntax error: {exc.msg}")
    except OSError as exc:
        src.fail(path, f"cannot read the py_modules file {full}: {exc}")
    return _PyModule({n.name: n for n in tree.body if isinstance(n, ast.ClassDef)})


def check_uses(data: dict[str, Any], path: Path, src: _Source, base_dir: str,
                uses_path: Path | None = None, with_path: Path | None = None, require_args: bool = True) -> None:
    """Check `uses`, `py_modules` and `uses_requests` without importing user code."""
    py_modules = data.get("py_modules") or []
    if isinstance(py_modules, str):
        py_modules = data["py_modules"] = [py_modules]
    if not isinstance(py_modules, list):
        src.fail((*path, "py_modules"), f"expected a list of Python files, got {py_modules!r}")
    parsed: list[_PyModule] = []
    for i, item in enumerate(py_modules):
        if not isinstance(item, str):
            src.fail((*path, "py_modules", i), f"expected a path to a .py file, got {item!r}")
        full = os.path.normpath(os.path.join(base_dir, item))
        if not os.path.isfile(full):
            src.fail((*path, "py_modules", i),
                     f"py_modules file {item!r} not found: {full} does not exist (paths are relative "
                     "to the YAML file)")
        parsed.append(_parse_py_module(full, src, (*path, "py_modules", i)))
    uses = data.get("uses", "Executor")
    upath = uses_path or (*path, "uses")
    cls_name: str | None = None
    module: _PyModule | None = None
    if isinstance(uses, dict):
        check_executor_mapping(uses, upath, src, base_dir)
        return
    if not isinstance(uses, str) or not uses.strip():
        src.fail(upath, f"expected a class name, a dotted path, an Executor YAML path or a mapping, got {uses!r}")
    if uses.endswith(_YAML_SUFFIXES):
        full = os.path.normpath(os.path.join(base_dir, uses))
        if not os.path.isfile(full):
            src.fail(upath, f"Executor YAML {uses!r} not found: {full} does not exist")
        text, _, ydir = _read_source(full)
        sub = _Source(full, ydir)
        check_executor_mapping(_compose(text, sub, None), (), sub, ydir)
        return
    with_path = with_path or (*path, "uses_with")
    uses_with = data.get("uses_with")
    if uses == "Executor":
        return
    if uses.endswith(".py"):
        full = os.path.normpath(os.path.join(base_dir, uses))
        found_py = _parse_py_module(full, src, upath).executor_classes() if os.path.isfile(full) else []
        example = found_py[0] if found_py else "MyExecutor"
        src.fail(upath, f"uses={uses!r} is a Python file; name the class and list the file: "
                        f"`uses: {example}` with `py_modules: [{uses}]`"
                        + (f" (Executor classes in it: {found_py})" if found_py else ""))
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", uses):
        src.fail(upath, f"{uses!r} is not a class name, a dotted path module.Class or a .yml path")
    for m in parsed:
        if uses in m.classes:
            cls_name, module = uses, m
    if cls_name is None and "." in uses:
        top = uses.split(".")[0]
        dirs = [base_dir, *{os.path.dirname(os.path.join(base_dir, p)) for p in py_modules}]
        found = importlib.util.find_spec(top) is not None or \
            importlib.machinery.PathFinder.find_spec(top, dirs) is not None
        if not found:
            src.fail(upath, f"uses={uses!r}: cannot find module {top!r} (looked on sys.path and in "
                            f"{base_dir}); install it, or list the file in py_modules and use the class name")
        return
    if cls_name is None:
        if not py_modules:
            src.fail(upath, f"uses={uses!r} names a class, but no py_modules are given; add "
                            "`py_modules: [file.py]` (relative to the YAML), or use a dotted "
                            "path package.module.Class")
        found_cls = sorted({n for m in parsed for n in (m.executor_classes() or list(m.classes))})
        close = difflib.get_close_matches(uses, found_cls, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        src.fail(upath, f"no class {uses!r} in py_modules {py_modules}; {hint}Executor classes found "
                        f"there: {found_cls}")
    if module is not None and cls_name is not None and not module.classes[cls_name].bases:
        src.fail(upath, f"class {cls_name!r} in py_modules is not an Executor: it has no base class; "
                        f"write `class {cls_name}(Executor):` (from orchestra_nb import Executor)")
    if (uses_with is None or isinstance(uses_with, dict)) and module is not None and cls_name is not None:
        _check_init_args(module, cls_name, uses_with or {}, with_path, src, require=require_args)
    requests = data.get("uses_requests") or {}
    if isinstance(requests, dict) and module is not None and cls_name is not None:
        methods = module.methods(cls_name)
        for endpoint, method in requests.items():
            if methods is not None and isinstance(method, str) and method not in methods:
                public = sorted(m for m in methods if not m.startswith("_"))
                close = difflib.get_close_matches(method, public, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                src.fail((*path, "uses_requests", endpoint),
                         f"uses_requests maps {endpoint!r} to {method!r}, which {cls_name} does not "
                         f"define; {hint}its methods: {public}")
            if not (endpoint == "*" or str(endpoint).startswith("/")):
                src.fail((*path, "uses_requests", endpoint), f"endpoint {endpoint!r} must start with '/' "
                         "(or be '*' for every endpoint)", key=True)


def check_executor_mapping(data: Any, path: Path, src: _Source, base_dir: str) -> None:
    """An Executor YAML or inline `uses:` mapping: `jtype: MyExec`, `with:`, `py_modules:`."""
    data = _check_keys(data, path, EXECUTOR_YAML_KEYS, src, "an Executor YAML")
    jtype = data.get("jtype")
    if not isinstance(jtype, str):
        src.fail(path, f"an Executor YAML needs `jtype: <ExecutorClass>`, got jtype={jtype!r}")
    if jtype in ("Flow", "Deployment"):
        src.fail((*path, "jtype"), f"`uses` must describe an Executor, not a {jtype}")
    with_ = data.get("with")
    if with_ is not None and not isinstance(with_, dict):
        src.fail((*path, "with"), f"expected a mapping of __init__ arguments, got {with_!r}")
    metas = data.get("metas") or {}
    py_modules = data.get("py_modules") or (metas.get("py_modules") if isinstance(metas, dict) else None)
    # the Flow's `uses_with` may still give required arguments, so only unknown ones are errors here
    check_uses({"uses": jtype, "py_modules": py_modules or [], "uses_with": with_ or {}}, path, src, base_dir,
                (*path, "jtype"), (*path, "with"), require_args=False)
