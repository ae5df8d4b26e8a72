"""Spec models: what should run. Plain pydantic data, no behaviour beyond validation.

Everything that describes an orchestration lives here: the Python builders produce these models, the
YAML loader parses into them, the CLI maps its options onto them, and the runtime, the exporters and the
notebook panel only read them (DESIGN.md decision 1).

`ExecutorSpec.uses` may hold a class object (an Executor defined in a notebook cell or `__main__`); it is
sent to replicas by value with cloudpickle and saved to YAML as source next to the file.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestra_nb.errors import ConfigError

__all__ = ["DeploymentSpec", "ExecutorSpec", "FlowSpec", "GatewaySpec", "Polling", "Protocol"]

Protocol = Literal["grpc", "http"]
Port = Annotated[int, Field(ge=0, le=65535)]
Polling = Literal["ANY", "ALL"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
DEFAULT_MAX_MESSAGE = 512 * 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True)


class ExecutorSpec(_Model):
    """One executor node: what it runs, how many copies, and where it sits in the graph."""

    name: str | None = None
    uses: Any = "Executor"
    uses_with: dict[str, Any] = Field(default_factory=dict)
    uses_metas: dict[str, Any] = Field(default_factory=dict)
    uses_requests: dict[str, str] = Field(default_factory=dict)
    py_modules: list[str] = Field(default_factory=list)
    needs: list[str] = Field(default_factory=list)
    replicas: int = Field(default=1, ge=1)
    shards: int = Field(default=1, ge=1)
    polling: Polling | dict[str, Polling] = "ANY"
    when: dict[str, Any] | None = None
    floating: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    gpus: int | str | list[Any] | None = None
    host: str = "127.0.0.1"
    port: Port | list[Port] | None = None
    timeout_ready: float = Field(default=60.0, gt=0)
    timeout_send: float | None = Field(default=None, gt=0)
    retries: int = Field(default=-1, ge=-1)
    restart: Literal["on-failure", "never"] = "on-failure"
    exit_on_exceptions: list[str] = Field(default_factory=list)
    reload: bool = False
    image: str | None = None
    volumes: list[str] = Field(default_factory=list)
    workspace: str | None = None
    requirements: list[str] = Field(default_factory=list)
    max_message_size: int = Field(default=DEFAULT_MAX_MESSAGE, gt=0)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and (not _NAME.match(value) or value == "gateway"):
            raise ValueError(
                f"invalid executor name {value!r}: use letters, digits, '_' or '-', not starting with a "
                "digit, and not the reserved name 'gateway'")
        return value

    @field_validator("needs", mode="before")
    @classmethod
    def _needs_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("polling", mode="before")
    @classmethod
    def _upper_polling(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.upper()
        if isinstance(value, dict):
            return {k: v.upper() if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("when")
    @classmethod
    def _check_when(cls, value: Any) -> Any:
        if value is not None:
            from orchestra_nb.runtime.when import compile_when

            compile_when(value)  # a bad condition fails here, not later in the gateway
        return value

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, value: Any) -> Any:
        from orchestra_nb.runtime.devices import parse_gpus

        return parse_gpus(value)

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value

    def polling_for(self, endpoint: str) -> Polling:
        """The polling mode for one endpoint (`'*'` is the fallback in a per-endpoint dict)."""
        if isinstance(self.polling, str):
            return self.polling
        return self.polling.get(endpoint, self.polling.get("*", "ANY"))

    def fixed_ports(self) -> list[int]:
        """The ports `port=` gives the replicas, in order (the rest are chosen free)."""
        return self.port if isinstance(self.port, list) else ([self.port] if self.port else [])

    @property
    def uses_label(self) -> str:
        """A printable name for `uses`: the class name or the string given."""
        if isinstance(self.uses, type):
            return self.uses.__qualname__
        if isinstance(self.uses, dict):
            return str(self.uses.get("jtype", "Executor"))
        return str(self.uses)


class GatewaySpec(_Model):
    """The front doors: protocols, ports, access rules."""

    protocol: list[Protocol] = Field(default_factory=lambda: ["grpc"])  # type: ignore[arg-type]
    port: list[Port | None] = Field(default_factory=list)
    host: str = "127.0.0.1"
    prefetch: int = Field(default=0, ge=0)
    token: str | None = None
    expose: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    metrics: bool = False
    tracing: bool = False
    traces_endpoint: str | None = None
    cors: bool = False
    max_body_size: int = Field(default=DEFAULT_MAX_MESSAGE, gt=0)
    max_message_size: int = Field(default=DEFAULT_MAX_MESSAGE, gt=0)
    timeout_ready: float = Field(default=60.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [v.lower() if isinstance(v, str) else v for v in value]
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _port_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, int):
            return [value]
        return value

    @model_validator(mode="after")
    def _ports_match(self) -> GatewaySpec:
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            given, missing = (("ssl_certfile", "ssl_keyfile") if self.ssl_certfile else ("ssl_keyfile", "ssl_certfile"))
            raise ValueError(f"{given} is set but {missing} is not: TLS needs both the certificate chain "
                             "(ssl_certfile) and its private key (ssl_keyfile), or neither")
        if len(set(self.protocol)) != len(self.protocol):
            raise ValueError(f"protocol lists a protocol twice: {self.protocol}")
        if self.port and len(self.port) != len(self.protocol):
            raise ValueError(
                f"port gives {len(self.port)} port(s) for {len(self.protocol)} protocol(s) "
                f"{self.protocol}: give one port per protocol, in the same order")
        return self

    def port_for(self, protocol: str) -> int | None:
        if not self.port:
            return None
        return self.port[self.protocol.index(protocol)] if protocol in self.protocol else None

    def tls_files(self, base_dir: str | None = None) -> tuple[str, str] | None:
        """The absolute (certificate, key) paths, checked to exist; None without TLS. The export mounts
        these files and never copies them into a build context or the Flow YAML.

        A relative path is looked up beside the Flow YAML (`base_dir`), then in the working directory.
        """
        if not (self.ssl_certfile and self.ssl_keyfile):
            return None
        found = []
        for option, value in (("ssl_certfile", self.ssl_certfile), ("ssl_keyfile", self.ssl_keyfile)):
            path = os.path.expanduser(value)
            if not os.path.isabs(path):
                beside = os.path.join(base_dir or os.getcwd(), path)
                path = beside if os.path.isfile(beside) or not os.path.isfile(path) else os.path.abspath(path)
            if not os.path.isfile(path):
                raise ConfigError(f"gateway {option}={value!r}: no such file ({path}); give the path of the "
                                  "PEM file, absolute or relative to the Flow YAML")
            found.append(os.path.realpath(path))
        return found[0], found[1]


class FlowSpec(_Model):
    """A Flow: a gateway and a DAG of executors."""

    name: str = "flow"
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    executors: list[ExecutorSpec] = Field(default_factory=list)
    log_config: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    def executor(self, name: str) -> ExecutorSpec:
        for ex in self.executors:
            if ex.name == name:
                return ex
        raise KeyError(name)


class DeploymentSpec(_Model):
    """A Deployment: one executor (replicas, shards) behind its own gateway."""

    name: str = "deployment"
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    log_config: str | None = None

    def to_flow_spec(self) -> FlowSpec:
        """The one-node Flow that runs this Deployment."""
        ex = self.executor
        if ex.name is None:
            ex = ex.model_copy(update={"name": "executor"})
        return FlowSpec(name=self.name, gateway=self.gateway, executors=[ex], log_config=self.log_config)
