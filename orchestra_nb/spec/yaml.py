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
* Neighbours: the checks of `uses` against Python files (by `ast`, never importing them) live in
  `pycheck.py`, saving in `save.py`, the substitution rules in `substitute.py`, the JSON Schema in
  `schema.py`.
"""

from __future__ import annotations

import difflib
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


# ---- building specs ----------------------------------------------------------------------------------
def _executor_spec(data: Any, path: Path, src: _Source) -> ExecutorSpec:
    data = _check_keys(data, path, EXECUTOR_KEYS, src, "an executor")
    from orchestra_nb.spec.pycheck import check_uses

    check_uses(data, path, src, src.base_dir)
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
    from orchestra_nb.spec.pycheck import check_uses

    check_uses(ex_data, check_path, src, src.base_dir)
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
    from orchestra_nb.spec.pycheck import check_executor_mapping

    check_executor_mapping(data, (), src, base_dir)
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
    from orchestra_nb.spec.pycheck import check_executor_mapping

    check_executor_mapping(data, (), src, folder)
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
