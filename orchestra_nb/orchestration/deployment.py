"""Deployment: one executor (replicas, shards) behind its own gateway.

It runs as a one-node Flow, so a Deployment and a Flow are served, posted to and exported the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from orchestra_nb.errors import ConfigError
from orchestra_nb.orchestration.base import Orchestration
from orchestra_nb.orchestration.flow import (
    check_uses_with,
    config_error,
    default_name,
    did_you_mean,
)
from orchestra_nb.spec.models import DeploymentSpec, ExecutorSpec, FlowSpec, GatewaySpec

__all__ = ["Deployment"]

_EXECUTOR_KEYS = set(ExecutorSpec.model_fields) - {"name", "uses", "needs", "port", "host"}
_GATEWAY_KEYS = set(GatewaySpec.model_fields) - {"protocol", "port", "host", "timeout_ready", "env"}


class Deployment(Orchestration):
    """Serve one Executor: `Deployment(uses=MyExecutor, replicas=2)`.

    Args:
        uses: an Executor class (also one defined in a notebook cell), a class name found in
            `py_modules`, a dotted `'package.module.Class'`, or a path to an Executor YAML.
        name: default: the class name, lowercased.
        replicas: copies of the executor, each in its own process; requests go to the least busy one.
        port: the gateway's port, one per protocol (default: free ports chosen at start).
        protocol: `'grpc'`, `'http'` or both as a list.
        host: the interface the gateway listens on (`127.0.0.1` by default).
        **kwargs: executor options (`shards`, `uses_with`, `py_modules`, `gpus`, `env`, `retries`, ...) and
            gateway options (`token`, `metrics`, `tracing`, `ssl_certfile`, ...); see docs/yaml-spec.md.
    """

    _kind = "Deployment"
    _spec: DeploymentSpec

    def __init__(self, uses: Any = "Executor", name: str | None = None, replicas: int = 1,
                 port: int | list[int] | None = None, protocol: str | list[str] = "grpc",
                 host: str = "127.0.0.1", **kwargs: Any) -> None:
        super().__init__()
        unknown = set(kwargs) - _EXECUTOR_KEYS - _GATEWAY_KEYS - {"log_config"}
        if unknown:
            raise ConfigError(f"Deployment() got unknown option(s) {sorted(unknown)}"
                              f"{did_you_mean(unknown, _EXECUTOR_KEYS | _GATEWAY_KEYS)}; executor options are "
                              f"{sorted(_EXECUTOR_KEYS)}, gateway options {sorted(_GATEWAY_KEYS)}")
        ex = {k: v for k, v in kwargs.items() if k in _EXECUTOR_KEYS}
        gw = {k: v for k, v in kwargs.items() if k in _GATEWAY_KEYS}
        if name is None:
            name = default_name(uses)
        try:
            self._spec = DeploymentSpec(
                name=name, log_config=kwargs.get("log_config"),
                executor=ExecutorSpec(uses=uses, name=name, replicas=replicas, **ex),
                gateway=GatewaySpec.model_validate({"protocol": protocol, "port": port, "host": host,
                                                    "timeout_ready": ex.get("timeout_ready", 60.0), **gw}))
        except ValidationError as exc:
            raise config_error(exc, "Deployment options",
                               set(ExecutorSpec.model_fields) | set(GatewaySpec.model_fields)) from None
        check_uses_with(uses, self._spec.executor.uses_with, name)

    @property
    def spec(self) -> DeploymentSpec:
        return self._spec

    def _sync_spec(self) -> None:
        if self._supervisor is not None:
            self._spec = self._spec.model_copy(update={"executor": self._supervisor.spec.executors[0]})

    def flow_spec(self) -> FlowSpec:
        return self._spec.to_flow_spec()
