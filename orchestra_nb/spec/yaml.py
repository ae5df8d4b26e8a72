"""YAML ⇄ spec: `load_config`, `save_config`, and Executor YAML files for the worker.

The format (Jina's, kept so existing files work):

```yaml
jtype: Flow                  # or Deployment, or an Executor class name (an Executor YAML)
with: {protocol: [grpc, http], port: [8080, 8081], log_config: ./logging.json.yml}
gateway: {env: {...}}        # optional: gateway options that `with:` cannot say
executors:                   # Flow: one mapping of `.add()` options each; `needs` defaults to a chain
  - {name: enc, uses: MyEncoder, py_modules: [encoders.py], replicas: 2}
```

Decisions:

* **Marks per key.** The YAML is composed into nodes and turned into data by hand, recording each key's
  and value's line/column under its key path (`('executors', 0, 'replicas')`). Every error (unknown key,
  wrong type, bad substitution, missing file, unknown class, cycle) is raised as `ConfigError` with
  `file:line:col`, the key path and a hint. Duplicate keys are errors (PyYAML silently keeps the last).
* **Validation by pieces.** Each executor and the gateway are validated on their own, so a pydantic
  error's `loc` maps straight onto a YAML key path; no pydantic or PyYAML traceback reaches a user.
* **The parent never imports user code.** `uses: MyEncoder` is checked by parsing the `py_modules` files
  with `ast`; the replica imports them (`runtime/resolve.py`). The same parse checks `uses_with` keys
  against the class's `__init__` (through in-file bases that pass `**kwargs` on), so a typo is a
  file:line error at load time, not a TypeError in a replica; when the file cannot tell, it is left
  to the replica. Paths in the spec stay relative to the
  YAML file (`base_dir`), so a Flow loaded from YAML starts from any working directory. `log_config` is
  the exception: children open it, so it is stored resolved.
* **Classes from `__main__` or a notebook cell** are saved as source in `<stem>_executors.py` next to
  the YAML, with the imports, constants and helper classes they use, so the YAML starts in a fresh
  process. Source comes from `inspect`, else from the code objects' `linecache` entries (what ipykernel
  registers for each cell), else from IPython's input history.
* This module is longer than most because loading, checking and saving one format belong together; the
  substitution rules live in `substitute.py` and the JSON Schema in `schema.py`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.machinery
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import yaml
from pydantic import BaseModel, ValidationError

from orchestra_nb.errors import ConfigError, TopologyError
from orchestra_nb.spec.models import DeploymentSpec, ExecutorSpec, FlowSpec, GatewaySpec
from orchestra_nb.spec.substitute import SubstitutionError, has_expression, substitute
from orchestra_nb.spec.topology import validate_topology

if TYPE_CHECKING:
    from orchestra_nb.executor import Executor
    from orchestra_nb.orchestration.deployment import Deployment
    from orchestra_nb.orchestration.flow import Flow

__all__ = [
    "DEPLOYMENT_WITH_KEYS",
    "EXECUTOR_KEYS",
    "EXECUTOR_YAML_KEYS",
    "FLOW_WITH_KEYS",
    "GATEWAY_KEYS",
    "load_config",
    "load_executor_uses",
    "parse_config",
    "save_config",
]

Path = tuple[str | int, ...]

EXECUTOR_KEYS = frozenset(ExecutorSpec.model_fields)
GATEWAY_KEYS = frozenset(GatewaySpec.model_fields)
FLOW_WITH_KEYS = frozenset({"name", "log_config", "env"} | (GATEWAY_KEYS - {"env"}))
_SHARED = frozenset({"timeout_ready", "max_message_size"})
_DEP_EXECUTOR = EXECUTOR_KEYS - {"name", "needs", "port", "host"}
_DEP_GATEWAY = GATEWAY_KEYS - {"env"}
DEPLOYMENT_WITH_KEYS = frozenset({"name", "log_config"} | _DEP_EXECUTOR | _DEP_GATEWAY)
FLOW_KEYS = frozenset({"jtype", "version", "with", "gateway", "executors"})
DEPLOYMENT_KEYS = frozenset({"jtype", "version", "with", "gateway", "executor"})
EXECUTOR_YAML_KEYS = frozenset({"jtype", "version", "with", "py_modules", "metas"})
_YAML_SUFFIXES = (".yml", ".yaml")
_DEFAULT_EXECUTOR = ExecutorSpec()
_YAML_HINTS = {
    "'\\t'": "a tab indents this line; YAML indents with spaces only",
    "expected <block end>": "this line's indentation does not match the block it is in",
    "mapping values are not allowed": "a ':' where a plain value was expected; quote the value or fix "
                                      "the indentation",
    "quoted scalar": "a quote opened here is never closed",
    "expected ',' or": "a '[' or '{' opened here is never closed",
}
_PLAIN_TAGS = ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")


# ---- parsing with marks ------------------------------------------------------------------------------
@dataclass
class _Source:
    file: str
    base_dir: str
    keys: dict[Path, yaml.Mark] = field(default_factory=dict)
    values: dict[Path, yaml.Mark] = field(default_factory=dict)

    def where(self, path: Path, key: bool = False) -> str:
        marks = (self.keys, self.values) if key else (self.values, self.keys)
        probe = path
        while True:
            for table in marks:
                if probe in table:
                    mark = table[probe]
                    return f"{self.file}:{mark.line + 1}:{mark.column + 1}"
            if not probe:
                return f"{self.file}:1:1"
            probe = probe[:-1]

    def fail(self, path: Path, message: str, *, key: bool = False,
             error: type[ConfigError] = ConfigError) -> NoReturn:
        shown = _dotted(path)
        raise error(f"{self.where(path, key)}: {shown + ': ' if shown else ''}{message}")


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _read_source(source: str) -> tuple[str, str, str]:
    """(text, file name for messages, base dir) for a path or a YAML string."""
    looks_like_path = "\n" not in source and source.strip().endswith(_YAML_SUFFIXES)
    if "\n" not in source and os.path.isfile(source):
        path = os.path.abspath(source)
        with open(path, encoding="utf-8") as f:
            return f.read(), source, os.path.dirname(path)
    single = "\n" not in source and ":" not in source and not source.strip().startswith(("{", "["))
    if looks_like_path or (single and (os.sep in source or os.path.exists(source))):
        full = os.path.abspath(source)
        if os.path.isdir(full):
            raise ConfigError(f"{source!r} is a folder; give a Flow or Deployment YAML file")
        folder = os.path.dirname(full)
        near = sorted(n for n in os.listdir(folder) if n.endswith(_YAML_SUFFIXES)) if os.path.isdir(folder) else []
        close = difflib.get_close_matches(os.path.basename(full), near, n=1)
        hint = f"; did you mean {os.path.join(os.path.dirname(source), close[0])!r}?" if close else ""
        raise ConfigError(f"YAML file {source!r} not found (looked for {full}){hint}")
    if single:
        raise ConfigError(f"{source!r} is neither a YAML file that exists (looked for {os.path.abspath(source)}) "
                          "nor YAML text; give a path like flow.yml")
    return source, "<string>", os.getcwd()


def _compose(text: str, src: _Source, context: Mapping[str, Any] | None) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark is not None and "end of stream" in str(exc.problem):
            mark = exc.context_mark  # where the unclosed thing began is what the reader must fix
        where = f"{src.file}:{mark.line + 1}:{mark.column + 1}" if mark else src.file
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        hint = next((h for k, h in _YAML_HINTS.items() if k in problem),
                    "check the indentation and quoting around this line")
        raise ConfigError(f"{where}: invalid YAML: {hint} ({problem})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{src.file}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if node is None:
        raise ConfigError(f"{src.file}:1:1: the YAML is empty; expected a mapping with 'jtype: Flow' or "
                          "'jtype: Deployment'")
    return _to_data(node, (), src, yaml.SafeLoader(""), context or {})


def _to_data(node: yaml.Node, path: Path, src: _Source, loader: yaml.SafeLoader,
             context: Mapping[str, Any]) -> Any:
    src.values.setdefault(path, node.start_mark)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        src.values[path] = node.start_mark
        src.fail(path, f"unsupported tag {node.tag!r}; only plain YAML (no !!python tags) is read")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(_scalar(key_node, path, src, loader))
            child = (*path, key)
            if key in out:
                first = src.keys[child]
                src.keys[child] = key_node.start_mark
                src.fail(child, f"duplicate key {key!r} (first given on line {first.line + 1}); give each "
                                "key once", key=True)
            src.keys[child] = key_node.start_mark
            out[key] = _to_data(value_node, child, src, loader, context)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_data(item, (*path, i), src, loader, context) for i, item in enumerate(node.value)]
    value = _scalar(node, path, src, loader)
    if isinstance(value, str) and has_expression(value):
        try:
            return substitute(value, context)
        except SubstitutionError as exc:
            src.fail(path, str(exc))
    return value


def _scalar(node: yaml.Node, path: Path, src: _Source, loader: yaml.SafeLoader) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        src.values[path] = node.start_mark
        src.fail(path, "a mapping key must be a plain value, not a list or mapping")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        src.values[path] = node.start_mark
        src.fail(path, f"{exc.problem}; only plain YAML (no !!python tags) is read")


# ---- checks ------------------------------------------------------------------------------------------
def _check_keys(data: Any, path: Path, allowed: frozenset[str], src: _Source, what: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        src.fail(path, f"expected a mapping of {what}, got {type(data).__name__} {data!r}")
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            src.fail((*path, key), f"unknown key {key!r} in {what}; {hint}valid keys: {sorted(allowed)}",
                     key=True)
    return data


def _validate(model: type[BaseModel], data: dict[str, Any], path: Path, src: _Source,
              origin: Mapping[str, Path] | None = None) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        loc = tuple(first["loc"])
        if loc and origin and loc[0] in origin:
            where: Path = (*origin[str(loc[0])], *loc[1:])
        else:
            where = (*path, *loc)
        msg = str(first["msg"])
        msg = msg.removeprefix("Value error, ")
        msg = re.sub(r"^Input should be ", "expected ", msg)
        got = first.get("input")
        if not isinstance(got, (dict, BaseModel)) and first["type"] != "value_error":
            msg += f"; got {got!r} ({type(got).__name__})"
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        src.fail(where, msg + more)


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


def _check_uses(data: dict[str, Any], path: Path, src: _Source, base_dir: str,
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
        _check_executor_mapping(uses, upath, src, base_dir)
        return
    if not isinstance(uses, str) or not uses.strip():
        src.fail(upath, f"expected a class name, a dotted path, an Executor YAML path or a mapping, got {uses!r}")
    if uses.endswith(_YAML_SUFFIXES):
        full = os.path.normpath(os.path.join(base_dir, uses))
        if not os.path.isfile(full):
            src.fail(upath, f"Executor YAML {uses!r} not found: {full} does not exist")
        text, _, ydir = _read_source(full)
        sub = _Source(full, ydir)
        _check_executor_mapping(_compose(text, sub, None), (), sub, ydir)
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


def _check_executor_mapping(data: Any, path: Path, src: _Source, base_dir: str) -> None:
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
    _check_uses({"uses": jtype, "py_modules": py_modules or [], "uses_with": with_ or {}}, path, src, base_dir,
                (*path, "jtype"), (*path, "with"), require_args=False)


# ---- building specs ----------------------------------------------------------------------------------
def _executor_spec(data: Any, path: Path, src: _Source) -> ExecutorSpec:
    data = _check_keys(data, path, EXECUTOR_KEYS, src, "an executor")
    _check_uses(data, path, src, src.base_dir)
    spec: ExecutorSpec = _validate(ExecutorSpec, data, path, src)
    return spec


def _resolve_log_config(value: Any, path: Path, src: _Source) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        src.fail(path, f"expected a path to a logging YAML file, got {value!r}")
    full = os.path.normpath(os.path.join(src.base_dir, os.path.expanduser(value)))
    if not os.path.isfile(full):
        src.fail(path, f"log_config file {value!r} not found: {full} does not exist")
    from orchestra_nb.logconfig import check_log_config

    try:
        check_log_config(full)
    except ConfigError as exc:
        src.fail(path, f"{value!r}: {exc}")
    return full


def _flow_spec(data: dict[str, Any], src: _Source) -> FlowSpec:
    _check_keys(data, (), FLOW_KEYS, src, "a Flow")
    with_ = _check_keys(data.get("with"), ("with",), FLOW_WITH_KEYS, src, "a Flow's `with:`")
    gw_extra = _check_keys(data.get("gateway"), ("gateway",), GATEWAY_KEYS, src, "`gateway:`")
    gw_data: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    for key, value in with_.items():
        if key in GATEWAY_KEYS:
            gw_data[key], origin[key] = value, ("with", key)
    for key, value in gw_extra.items():
        gw_data[key], origin[key] = value, ("gateway", key)
    gateway = _validate(GatewaySpec, gw_data, ("with",), src, origin)
    raw = data.get("executors") or []
    if not isinstance(raw, list):
        src.fail(("executors",), f"expected a list of executors (`- name: ...` items), got {type(raw).__name__}")
    executors: list[ExecutorSpec] = []
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        path: Path = ("executors", i)
        if not isinstance(item, dict):
            src.fail(path, f"expected a mapping of executor options, got {item!r}")
        item = dict(item)
        if item.get("name") is None:
            base = "executor"
            name = base if base not in names else f"{base}{len(names)}"
            while name in names:
                name += "_"
            item["name"] = name
        if "needs" not in item:
            item["needs"] = [executors[-1].name] if executors else ["gateway"]
        ex_spec = _executor_spec(item, path, src)
        assert ex_spec.name is not None
        if ex_spec.name in names:
            src.fail((*path, "name"), f"two executors are named {ex_spec.name!r} (also executors"
                     f"[{names[ex_spec.name]}]); names in a Flow must be unique", error=TopologyError)
        names[ex_spec.name] = i
        executors.append(ex_spec)
    known = ["gateway", *names]
    for i, ex in enumerate(executors):
        for j, need in enumerate(ex.needs):
            if need not in known:
                close = difflib.get_close_matches(need, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                npath: Path = ("executors", i, "needs", j) if "needs" in raw[i] else ("executors", i)
                if isinstance(raw[i].get("needs"), str):
                    npath = ("executors", i, "needs")
                src.fail(npath, f"executor {ex.name!r} needs {need!r}, which is not in the Flow; {hint}"
                                f"known names: {known}", error=TopologyError)
    spec = FlowSpec(name=str(with_.get("name") or "flow"), gateway=gateway, executors=executors,
                    log_config=_resolve_log_config(with_.get("log_config"), ("with", "log_config"), src),
                    env=_validate(_Env, {"env": with_.get("env") or {}}, ("with",), src).env)
    try:
        validate_topology(spec)
    except TopologyError as exc:
        quoted = re.findall(r"'([^']+)'|(\w[\w\-]*) ->", str(exc))
        target: Path = ("executors",)
        for a, b in quoted:
            if (a or b) in names:
                target = ("executors", names[a or b], "needs")
                break
        src.fail(target, str(exc), error=TopologyError)
    return spec


class _Env(BaseModel):
    env: dict[str, str]


def _deployment_spec(data: dict[str, Any], src: _Source) -> DeploymentSpec:
    _check_keys(data, (), DEPLOYMENT_KEYS, src, "a Deployment")
    with_ = _check_keys(data.get("with"), ("with",), DEPLOYMENT_WITH_KEYS, src, "a Deployment's `with:`")
    gw_extra = _check_keys(data.get("gateway"), ("gateway",), GATEWAY_KEYS, src, "`gateway:`")
    ex_extra = _check_keys(data.get("executor"), ("executor",), EXECUTOR_KEYS, src, "`executor:`")
    name = with_.get("name")
    ex_data: dict[str, Any] = {"name": name if name is not None else "executor"}
    gw_data: dict[str, Any] = {}
    ex_origin: dict[str, Path] = {"name": ("with", "name")}
    gw_origin: dict[str, Path] = {}
    for key, value in with_.items():
        if key in _DEP_EXECUTOR:
            ex_data[key], ex_origin[key] = value, ("with", key)
        if key in _DEP_GATEWAY and (key not in _DEP_EXECUTOR or key in _SHARED):
            gw_data[key], gw_origin[key] = value, ("with", key)
    for key, value in gw_extra.items():
        gw_data[key], gw_origin[key] = value, ("gateway", key)
    for key, value in ex_extra.items():
        ex_data[key], ex_origin[key] = value, ("executor", key)
    # `py_modules` and `uses` are checked where they were written
    check_path: Path = ("executor",) if "uses" in ex_extra else ("with",)
    _check_uses(ex_data, check_path, src, src.base_dir)
    executor = _validate(ExecutorSpec, ex_data, ("with",), src, ex_origin)
    gateway = _validate(GatewaySpec, gw_data, ("with",), src, gw_origin)
    return DeploymentSpec(name=str(name if name is not None else executor.name), executor=executor,
                          gateway=gateway,
                          log_config=_resolve_log_config(with_.get("log_config"), ("with", "log_config"), src))


def parse_config(source: str, context: dict[str, Any] | None = None) -> tuple[FlowSpec | DeploymentSpec, str]:
    """The spec a YAML file or string describes, and the folder its relative paths start from."""
    text, file, base_dir = _read_source(source)
    src = _Source(file, base_dir)
    data = _compose(text, src, context)
    if not isinstance(data, dict):
        src.fail((), f"expected a mapping with 'jtype: Flow' or 'jtype: Deployment', got "
                     f"{type(data).__name__} {data!r}")
    jtype = data.get("jtype")
    if jtype is None:
        hint = " (it has `executors:`: add `jtype: Flow`)" if "executors" in data else ""
        src.fail((), f"missing 'jtype'; expected 'jtype: Flow', 'jtype: Deployment' or an Executor class{hint}")
    if jtype == "Flow":
        return _flow_spec(data, src), base_dir
    if jtype == "Deployment":
        return _deployment_spec(data, src), base_dir
    if not isinstance(jtype, str):
        src.fail(("jtype",), f"expected 'Flow', 'Deployment' or an Executor class name, got {jtype!r}")
    close = difflib.get_close_matches(jtype, ["Flow", "Deployment"], n=1, cutoff=0.7)
    if close:
        src.fail(("jtype",), f"unknown jtype {jtype!r}; did you mean {close[0]!r}?")
    if file == "<string>":
        src.fail(("jtype",), f"jtype {jtype!r} makes this an Executor YAML, which must be a file to be served "
                             "(or use jtype: Flow / Deployment)")
    # an Executor YAML: serve it as a Deployment of that executor
    _check_executor_mapping(data, (), src, base_dir)
    rel = os.path.basename(file)
    executor = ExecutorSpec(name="executor", uses=rel)
    return DeploymentSpec(name="executor", executor=executor), base_dir


def load_config(source: str, context: dict[str, Any] | None = None) -> Flow | Deployment:
    """A Flow or Deployment from a YAML path or string; `context` fills `${{ CONTEXT.x }}`."""
    spec, base_dir = parse_config(source, context)
    if isinstance(spec, FlowSpec):
        from orchestra_nb.orchestration.flow import Flow

        return Flow.from_spec(spec, base_dir=base_dir)
    from orchestra_nb.orchestration.deployment import Deployment

    return Deployment.from_spec(spec, base_dir=base_dir)


def load_executor_uses(uses: dict[str, Any] | str, base_dir: str | None) -> tuple[type[Executor], dict[str, Any]]:
    """Inside a replica: the class and `with:` arguments of an Executor YAML file or inline mapping."""
    from orchestra_nb.runtime.resolve import resolve_executor_class

    folder = base_dir or os.getcwd()
    if isinstance(uses, str):
        full = os.path.normpath(os.path.join(folder, uses))
        text, _, folder = _read_source(full)
        src = _Source(full, folder)
        data = _compose(text, src, None)
    else:
        src = _Source("<uses mapping>", folder)
        data = uses
    _check_executor_mapping(data, (), src, folder)
    metas = data.get("metas") or {}
    py_modules = data.get("py_modules") or metas.get("py_modules") or []
    if isinstance(py_modules, str):
        py_modules = [py_modules]
    cls, extra = resolve_executor_class(data["jtype"], list(py_modules), folder)
    return cls, {**extra, **(data.get("with") or {})}


def save_config(obj: Flow | Deployment, path: str) -> None:
    """Write `obj` as YAML (see orchestra_nb.spec.save)."""
    from orchestra_nb.spec.save import save_config as save

    save(obj, path)
