"""What every exported container runs, shared by the Compose and Kubernetes writers.

Each executor replica runs `orchestra executor --uses /app/flow.yml --name NAME ...` and the gateway
runs `orchestra gateway --uses /app/flow.yml ... --executor-address NAME=HOST:PORT`: the entrypoints the
local runtime's processes correspond to. Every container has its own network namespace, so every
executor listens on the same port (`EXECUTOR_PORT`) and is told apart by its host name.

`--executor-address NAME=HOST:PORT` is repeated once per address; a sharded executor's addresses say
their shard, `NAME/shardS=HOST:PORT`. Compose gives one address per replica (each replica is a
service), Kubernetes one per shard (the replicas of a shard sit behind one Service).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from orchestra_nb.errors import ConfigError
from orchestra_nb.spec.models import ExecutorSpec, FlowSpec

__all__ = [
    "APP_DIR",
    "EXECUTOR_PORT",
    "FLOW_FILE",
    "TLS_CERT",
    "TLS_DIR",
    "TLS_KEY",
    "Container",
    "dns_name",
    "executor_address",
    "executor_command",
    "gateway_command",
    "gateway_ports",
    "gpu_request",
    "volume_target",
]

APP_DIR = "/app"
FLOW_FILE = f"{APP_DIR}/flow.yml"
EXECUTOR_PORT = 8081
DEFAULT_GATEWAY_PORTS = {"grpc": 8080, "http": 8000}
# the gateway's certificate and key inside its container, mounted from a Secret (Kubernetes) or the
# local files (Compose); the names are those of a `kubernetes.io/tls` Secret
TLS_DIR = "/etc/orchestra/tls"
TLS_CERT = f"{TLS_DIR}/tls.crt"
TLS_KEY = f"{TLS_DIR}/tls.key"

_DNS_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass
class Container:
    """One executor container (Compose service / Kubernetes pod template): which shard, which replica."""

    spec: ExecutorSpec
    shard: int
    replica: int | None
    name: str
    command: list[str] = field(default_factory=list)


def dns_name(name: str, what: str = "name") -> str:
    """A DNS-1123 label (lowercase letters, digits, '-') for Kubernetes objects and host names."""
    label = _DNS_BAD.sub("-", name.lower()).strip("-")[:63].strip("-")
    if not label:
        raise ConfigError(f"cannot make a Kubernetes/DNS name from {what} {name!r}: use letters or digits")
    return label


def gateway_ports(spec: FlowSpec) -> dict[str, int]:
    """Port per protocol inside the gateway container: the spec's, else 8080 (gRPC) and 8000 (HTTP)."""
    gw = spec.gateway
    return {p: gw.port_for(p) or DEFAULT_GATEWAY_PORTS[p] for p in gw.protocol}


def executor_address(ex: ExecutorSpec, shard: int, address: str) -> tuple[str, str]:
    """The (key, address) of one `--executor-address`: the key names the shard when there are several."""
    name = ex.name or "executor"
    return (f"{name}/shard{shard}" if ex.shards > 1 else name), address


def executor_command(name: str, shard: int, replica: int | None, shards: int) -> list[str]:
    command = ["orchestra", "executor", "--uses", FLOW_FILE, "--name", name,
               "--port", str(EXECUTOR_PORT), "--host", "0.0.0.0"]
    if replica is not None:
        command += ["--replica-id", str(replica)]
    if shards > 1:
        command += ["--shard-id", str(shard)]
    return command


def gateway_command(spec: FlowSpec, addresses: list[tuple[str, str]]) -> list[str]:
    ports = gateway_ports(spec)
    command = ["orchestra", "gateway", "--uses", FLOW_FILE]
    for port in ports.values():
        command += ["--port", str(port)]
    for protocol in ports:
        command += ["--protocol", protocol]
    command += ["--host", "0.0.0.0"]
    for name, address in addresses:
        command += ["--executor-address", f"{name}={address}"]
    return command


def gpu_request(ex: ExecutorSpec, replica: int | None = None) -> tuple[int, list[str] | None]:
    """(GPUs per replica, explicit device ids for this replica or None) from `gpus=`.

    None/0: none. An int: that many per replica. 'auto', 'all', 'RR...': one per replica (the cluster
    scheduler picks which). A list is one device per replica, in order; in Compose the replica gets
    that id, in Kubernetes only the count can be asked for.
    """
    gpus = ex.gpus
    if gpus is None or gpus == 0 or gpus == "0":
        return 0, None
    if isinstance(gpus, bool):
        raise ConfigError(f"executor {ex.name!r}: gpus={gpus!r} is not a GPU request; give a count, "
                          "'auto', 'RR' or a list of device ids")
    if isinstance(gpus, int):
        return gpus, None
    if isinstance(gpus, list):
        if not gpus:
            return 0, None
        if replica is None:
            return 1, None
        chosen = gpus[replica % len(gpus)]
        ids = [str(g) for g in chosen] if isinstance(chosen, list) else [str(chosen)]
        return len(ids), ids
    return 1, None


def volume_target(volume: str) -> tuple[str | None, str]:
    """('host-or-volume', '/container/path') of a Compose-style volume string."""
    parts = volume.split(":")
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], parts[1]
