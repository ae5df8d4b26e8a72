"""Flow: a gateway in front of a DAG of executors.

`add()` chains by default (each executor needs the one added before it, the first needs the gateway);
`needs=` draws any DAG; `.needs([...])` adds a join and `.needs_all()` joins every open branch.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from orchestra_nb.errors import ConfigError, LifecycleError, TopologyError
from orchestra_nb.orchestration.base import Orchestration, State
from orchestra_nb.spec.models import ExecutorSpec, FlowSpec, GatewaySpec

__all__ = ["Flow"]

_GATEWAY_KEYS = set(GatewaySpec.model_fields)


def config_error(exc: ValidationError, what: str, known: Iterable[str] = ()) -> ConfigError:
    """A pydantic error as one readable line; an unknown option gets the closest valid name."""
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            parts.append(f"unknown option {loc!r}{hint}")
        elif not loc:  # a rule across options: its message says which; the input is all of them
            parts.append(e["msg"].removeprefix("Value error, "))
        else:
            parts.append(f"{loc}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})")
    return ConfigError(f"invalid {what}: " + "; ".join(parts) + " (the options are in docs/yaml-spec.md)")


def did_you_mean(unknown: Iterable[str], known: Iterable[str]) -> str:
    hints = [f"{u!r} → {c[0]!r}" for u in sorted(unknown) if (c := difflib.get_close_matches(u, list(known), n=1))]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def check_uses_with(uses: Any, uses_with: dict[str, Any], name: str) -> None:
    """When `uses` is a class, `uses_with` must fit its `__init__` (checked before anything starts)."""
    if not isinstance(uses, type):
        return
    if uses.__init__ is object.__init__:  # type: ignore[misc]
        if uses_with:
            raise ConfigError(f"executor {name!r}: {uses.__qualname__} has no __init__, so it takes no "
                              f"uses_with (got {sorted(uses_with)})")
        return
    try:
        params = inspect.signature(uses).parameters  # the signature of constructing it: __init__ without self
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n != "self" and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in uses_with:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"executor {name!r}: uses_with key {key!r} is not an argument of "
                              f"{uses.__qualname__}.__init__; {hint}it takes {accepted}")
    missing = [n for n in accepted if params[n].default is inspect.Parameter.empty and n not in uses_with]
    if missing:
        raise ConfigError(f"executor {name!r}: {uses.__qualname__}.__init__ needs {missing}; pass them in "
                          f"uses_with={{...}}")


def default_name(uses: Any) -> str:
    """`Upper` → 'upper'; 'pkg.mod.Upper' → 'upper'; 'encoder.yml' → 'encoder'."""
    if isinstance(uses, type):
        return uses.__name__.lower()
    if isinstance(uses, str) and uses and uses != "Executor":
        base = uses.rsplit("/", 1)[-1]
        base = base[: -len(".yml")] if base.endswith(".yml") else base[: -len(".yaml")] if base.endswith(".yaml") else base
        base = base.rsplit(".", 1)[-1].lower().replace(" ", "_")
        if base.isidentifier():
            return base
    return "executor"


class Flow(Orchestration):
    """A pipeline (any DAG) of executors behind one gateway.

    Args:
        name: the Flow's name (process titles, logs; in a notebook, starting a Flow with the name of a
            running one closes that one first).
        protocol: `'grpc'`, `'http'` or both as a list; clients use the gRPC door, browsers and curl HTTP.
        port: one port per protocol, in the same order (default: free ports chosen at start).
        host: the interface the gateway listens on; `127.0.0.1` by default, `0.0.0.0` opens it to the
            network (set a `token` then).
        **kwargs: gateway options: `token`, `ssl_certfile`/`ssl_keyfile`, `metrics`, `tracing`,
            `prefetch`, `expose`, `max_body_size`, `timeout_ready`, `cors`; and `log_config`, `env`.

    Executors are added with `.add()`; `with f:` (or `start()`/`close()`) runs it, `f.post()` sends docs.
    """

    _kind = "Flow"
    _spec: FlowSpec

    def __init__(self, name: str | None = None, protocol: str | list[str] = "grpc",
                 port: int | list[int] | None = None, host: str = "127.0.0.1", **kwargs: Any) -> None:
        super().__init__()
        unknown = set(kwargs) - _GATEWAY_KEYS - {"log_config", "env"}
        if unknown:
            raise ConfigError(f"Flow() got unknown option(s) {sorted(unknown)}{did_you_mean(unknown, _GATEWAY_KEYS)}; "
                              f"gateway options are {sorted(_GATEWAY_KEYS)} (executor options go to .add())")
        gw = {k: v for k, v in kwargs.items() if k in _GATEWAY_KEYS}
        try:
            self._spec = FlowSpec(name=name or "flow", log_config=kwargs.get("log_config"),
                                  env=kwargs.get("env") or {},
                                  gateway=GatewaySpec.model_validate({"protocol": protocol, "port": port,
                                                                      "host": host, **gw}))
        except ValidationError as exc:
            raise config_error(exc, "Flow options", GatewaySpec.model_fields) from None

    @property
    def spec(self) -> FlowSpec:
        return self._spec

    def flow_spec(self) -> FlowSpec:
        return self._spec

    def _sync_spec(self) -> None:
        # only the executors change at run time; the supervisor's gateway has its TLS paths made absolute
        if self._supervisor is not None:
            self._spec = self._spec.model_copy(update={"executors": self._supervisor.spec.executors})

    @property
    def executors(self) -> list[ExecutorSpec]:
        return list(self._spec.executors)

    def add(self, uses: Any = "Executor", name: str | None = None, needs: str | list[str] | None = None,
            **kwargs: Any) -> Flow:
        """Add an executor; returns the Flow so calls chain.

        Args:
            uses: an Executor class (also one defined in a notebook cell), a class name found in
                `py_modules`, a dotted `'package.module.Class'`, or a path to an Executor YAML.
            name: unique in the Flow (default: the class name, lowercased).
            needs: the executor(s) this one waits for, or `'gateway'` (default: the one added last).
            **kwargs: any executor option: `replicas`, `shards`, `polling`, `uses_with`, `py_modules`,
                `gpus`, `env`, `when`, `floating`, `retries`, `timeout_send`, `restart`,
                `exit_on_exceptions`, `reload`, ... (all in docs/yaml-spec.md, or
                `orchestra export schema`). A misspelt option or `uses_with` key is an error naming the
                closest valid one.
        """
        if self.state not in (State.CREATED, State.CLOSED):
            raise LifecycleError("cannot add an executor to a running Flow; close it first, or use "
                                 "f.scale(...) to change replicas while it runs")
        existing = [e.name for e in self._spec.executors]
        if name is None:
            base = default_name(uses)
            name = base if base not in existing else f"{base}{len(existing)}"
            while name in existing:
                name = f"{name}_"
        if name in existing:
            raise TopologyError(f"an executor named {name!r} is already in the Flow; names must be unique")
        if needs is None:
            needs = [str(existing[-1])] if existing else ["gateway"]
        needs_list = [needs] if isinstance(needs, str) else list(needs)
        for n in needs_list:
            if n != "gateway" and n not in existing:
                raise TopologyError(f"executor {name!r} needs {n!r}, which is not in the Flow; "
                                    f"known names: {['gateway', *existing]}")
        try:
            spec = ExecutorSpec(uses=uses, name=name, needs=needs_list, **kwargs)
        except ValidationError as exc:
            raise config_error(exc, f"options for executor {name!r}", ExecutorSpec.model_fields) from None
        except TypeError as exc:
            raise ConfigError(str(exc)) from None
        check_uses_with(uses, spec.uses_with, name)
        self._spec = self._spec.model_copy(update={"executors": [*self._spec.executors, spec]})
        return self

    def needs(self, needs: str | list[str], name: str = "joiner", **kwargs: Any) -> Flow:
        """Add a join: an executor (a pass-through by default) that waits for every name in `needs`."""
        return self.add(uses=kwargs.pop("uses", "Executor"), name=name, needs=needs, **kwargs)

    def needs_all(self, name: str = "joiner", **kwargs: Any) -> Flow:
        """Join every open branch (every executor nothing else needs yet)."""
        needed = {n for e in self._spec.executors for n in e.needs}
        open_ends = [e.name for e in self._spec.executors
                     if e.name not in needed and not e.floating and e.name is not None]
        return self.needs(open_ends or ["gateway"], name=name, **kwargs)

