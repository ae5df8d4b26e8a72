"""Docker Compose export: one service per executor replica (and shard), and the gateway.

Every service joins one network, and only the gateway publishes ports; executors are reached by service
name on `EXECUTOR_PORT`. A service per replica (rather than `deploy.replicas`) gives each replica its
own name, so the gateway balances over them itself, exactly as it does locally. The gateway waits for
every executor's healthcheck (`orchestra ping`, the gRPC health service) before it starts.

Images come from the build context written next to the Compose file (`build:` plus `image:`, so
`docker compose up --build` builds and tags them); an executor with `image=` uses that image, and the
Flow YAML is bind-mounted into it read-only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestra_nb.errors import ConfigError
from orchestra_nb.export._plan import (
    EXECUTOR_PORT,
    FLOW_FILE,
    TLS_CERT,
    TLS_KEY,
    dns_name,
    executor_address,
    executor_command,
    gateway_command,
    gateway_ports,
    gpu_request,
)
from orchestra_nb.export._yaml import dump
from orchestra_nb.export.context import TOKEN_ENV, BuildContext, build_context, default_build_dir
from orchestra_nb.spec.models import ExecutorSpec, FlowSpec

__all__ = ["compose_document", "to_docker_compose_yaml"]

NETWORK = "orchestra"


def _service_names(ex: ExecutorSpec) -> list[tuple[int, int, str]]:
    """(shard, replica, service name) for every replica of `ex`."""
    base = dns_name(ex.name or "executor", "executor name")
    out = []
    for shard in range(ex.shards):
        for replica in range(ex.replicas):
            name = base
            if ex.shards > 1:
                name += f"-shard{shard}"
            if ex.replicas > 1:
                name += f"-rep{replica}"
            out.append((shard, replica, name))
    return out


def _healthcheck(test: list[str]) -> dict[str, Any]:
    return {"test": ["CMD", *test], "interval": "5s", "timeout": "5s", "retries": 12, "start_period": "60s"}


def _build(ctx: BuildContext, key: str, build_rel: str) -> dict[str, Any]:
    if key not in ctx.dockerfiles:
        return {"image": ctx.images[key], "volumes": [f"{build_rel}/flow.yml:{FLOW_FILE}:ro"]}
    return {"image": ctx.images[key], "build": {"context": build_rel, "dockerfile": ctx.dockerfiles[key]}}


def compose_document(spec: FlowSpec, ctx: BuildContext, build_rel: str = ".",
                     base_dir: str | None = None) -> dict[str, Any]:
    """The Compose file as a mapping; `build_rel` is the build context relative to the Compose file."""
    services: dict[str, Any] = {}
    addresses: list[tuple[str, str]] = []
    for ex in spec.executors:
        name = ex.name or "executor"
        for shard, replica, service in _service_names(ex):
            if service == "gateway" or service in services:
                _raise_duplicate(service, name)
            svc = _build(ctx, name, build_rel)
            svc["command"] = executor_command(name, shard, replica, ex.shards)
            env = {**spec.env, **ex.env}
            if env:
                svc["environment"] = env
            volumes = list(svc.get("volumes", [])) + list(ex.volumes)
            if volumes:
                svc["volumes"] = volumes
            svc["networks"] = [NETWORK]
            svc["healthcheck"] = _healthcheck(["orchestra", "ping", f"127.0.0.1:{EXECUTOR_PORT}"])
            svc["restart"] = "on-failure" if ex.restart == "on-failure" else "no"
            count, ids = gpu_request(ex, replica)
            if count:
                device: dict[str, Any] = {"driver": "nvidia", "capabilities": ["gpu"]}
                if ids:
                    device["device_ids"] = ids
                else:
                    device["count"] = count
                svc["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
            services[service] = svc
            addresses.append(executor_address(ex, shard, f"{service}:{EXECUTOR_PORT}"))
    ports = gateway_ports(spec)
    gateway = _build(ctx, "gateway", build_rel)
    gateway["command"] = gateway_command(spec, addresses)
    env = {**spec.env, **spec.gateway.env}
    if spec.gateway.token:  # from the `.env` file written beside the Compose file (see context.py)
        env[TOKEN_ENV] = "${" + TOKEN_ENV + ":?set " + TOKEN_ENV + " (the .env file beside this file does)}"
    if env:
        gateway["environment"] = env
    gateway["ports"] = [f"{port}:{port}" for port in ports.values()]
    gateway["networks"] = [NETWORK]
    tls = spec.gateway.tls_files(base_dir)
    if tls is not None:  # the local files, read-only, where the exported YAML points the gateway
        gateway["volumes"] = [f"{tls[0]}:{TLS_CERT}:ro", f"{tls[1]}:{TLS_KEY}:ro"]
        if "http" in ports:  # a self-signed certificate must not fail the check: it does not verify
            gateway["healthcheck"] = _healthcheck([
                "python", "-c", "import ssl, urllib.request; urllib.request.urlopen("
                f"'https://127.0.0.1:{ports['http']}/health', timeout=4, context=ssl._create_unverified_context())"])
        else:
            gateway["healthcheck"] = _healthcheck([
                "python", "-c", f"import socket; socket.create_connection(('127.0.0.1', {ports['grpc']}), 4).close()"])
    elif "grpc" in ports:
        gateway["healthcheck"] = _healthcheck(["orchestra", "ping", f"127.0.0.1:{ports['grpc']}"])
    else:
        gateway["healthcheck"] = _healthcheck([
            "python", "-c", "import urllib.request; "
            f"urllib.request.urlopen('http://127.0.0.1:{ports['http']}/health', timeout=4)"])
    if services:
        gateway["depends_on"] = {s: {"condition": "service_healthy"} for s in services}
    services["gateway"] = gateway
    return {"services": services, "networks": {NETWORK: {"driver": "bridge"}}}


def _raise_duplicate(service: str, executor: str) -> None:
    raise ConfigError(f"executor {executor!r} would be the Compose service {service!r}, which another "
                      "executor (or the gateway) already uses; rename one of them")


def to_docker_compose_yaml(spec: FlowSpec, output_path: str | None = None, *, build_dir: str | None = None,
                           image_prefix: str = "", base_dir: str | None = None,
                           orchestra_requirement: str | None = None) -> str:
    """The Compose YAML of `spec`; with `output_path`, also write it and its build context.

    The build context goes to `build_dir` (default: `<flow>-build` next to the Compose file) and is
    referenced relative to the Compose file. `image_prefix` (e.g. `registry.example.com/team/`) prefixes
    generated image names; `base_dir` is where relative `py_modules` paths start (default: cwd).
    """
    ctx = build_context(spec, image_prefix=image_prefix, base_dir=base_dir,
                        orchestra_requirement=orchestra_requirement)
    if output_path is None:
        folder = Path(build_dir) if build_dir else Path(f"{dns_name(spec.name, 'Flow name')}-build")
        build_rel = folder.as_posix() if folder.is_absolute() else f"./{folder.as_posix()}"
    else:
        out = Path(output_path).resolve()
        folder = Path(build_dir).resolve() if build_dir else default_build_dir(out, spec)
        try:
            build_rel = "./" + folder.relative_to(out.parent).as_posix()
        except ValueError:
            build_rel = folder.as_posix()
    document = compose_document(spec, ctx, build_rel, base_dir)
    text = (f"# Generated by orchestra-nb from Flow {spec.name!r}. Build and run: "
            "docker compose up --build\n" + dump(document))
    if output_path is not None:
        ctx.write(folder)
        if spec.gateway.token:
            env_file = out.parent / ".env"
            lines = [ln for ln in (env_file.read_text().splitlines() if env_file.exists() else [])
                     if not ln.startswith(f"{TOKEN_ENV}=")]
            env_file.write_text("\n".join([*lines, f"{TOKEN_ENV}={spec.gateway.token}"]) + "\n")
            env_file.chmod(0o600)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return text
