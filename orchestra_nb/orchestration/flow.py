"""Flow: a gateway in front of a DAG of executors.

`add()` chains by default (each executor needs the one added before it, the first needs the gateway);
`needs=` draws any DAG; `.needs([...])` adds a join and `.needs_all()` joins every open branch.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from orchestra_nb.errors import ConfigError, LifecycleError, TopologyError
from orchestra_nb.orchestration.base import Orchestration, State
from orchestra_nb.spec.models import ExecutorSpec, FlowSpec, GatewaySpec

__all__ = ["Flow"]

_GATEWAY_KEYS = set(GatewaySpec.model_fields)


def config_error(exc: ValidationError, what: str) -> ConfigError:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return ConfigError(f"invalid {what}: " + "; ".join(parts))


class Flow(Orchestration):
    """A pipeline of executors behind one gateway (gRPC and/or HTTP)."""

    _kind = "Flow"
    _spec: FlowSpec

    def __init__(self, name: str | None = None, protocol: str | list[str] = "grpc",
                 port: int | list[int] | None = None, host: str = "127.0.0.1", **kwargs: Any) -> None:
        super().__init__()
        unknown = set(kwargs) - _GATEWAY_KEYS - {"log_config", "env"}
        if unknown:
            raise ConfigError(f"Flow() got unknown option(s) {sorted(unknown)}; gateway options are "
                              f"{sorted(_GATEWAY_KEYS)}")
        gw = {k: v for k, v in kwargs.items() if k in _GATEWAY_KEYS}
        try:
            self._spec = FlowSpec(name=name or "flow", log_config=kwargs.get("log_config"),
                                  env=kwargs.get("env") or {},
                                  gateway=GatewaySpec.model_validate({"protocol": protocol, "port": port,
                                                                      "host": host, **gw}))
        except ValidationError as exc:
            raise config_error(exc, "Flow options") from None

    @property
    def spec(self) -> FlowSpec:
        return self._spec

    def flow_spec(self) -> FlowSpec:
        return self._spec

    def _sync_spec(self) -> None:
        if self._supervisor is not None:
            self._spec = self._supervisor.spec

    @property
    def executors(self) -> list[ExecutorSpec]:
        return list(self._spec.executors)

    def add(self, uses: Any = "Executor", name: str | None = None, needs: str | list[str] | None = None,
            **kwargs: Any) -> Flow:
        """Add an executor; returns the Flow so calls chain."""
        if self.state not in (State.CREATED, State.CLOSED):
            raise LifecycleError("cannot add an executor to a running Flow; close it first, or use "
                                 "f.scale(...) to change replicas while it runs")
        existing = [e.name for e in self._spec.executors]
        if name is None:
            base = uses.__name__.lower() if isinstance(uses, type) else "executor"
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
            raise config_error(exc, f"options for executor {name!r}") from None
        except TypeError as exc:
            raise ConfigError(str(exc)) from None
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

