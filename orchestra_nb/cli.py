"""The `orchestra` command: a thin adapter from click options onto specs (DESIGN.md decision 1).

```
orchestra flow --uses flow.yml            serve a Flow until SIGINT/SIGTERM
orchestra deployment --uses dep.yml       serve a Deployment until SIGINT/SIGTERM
orchestra executor --uses flow.yml --name enc --port 8081     one replica, in this process
orchestra gateway --uses flow.yml --port 8080 --executor-address enc=enc:8081   the gateway, in this process
orchestra ping grpc://host:port | http://host:port            exit 0 when healthy, 1 otherwise
orchestra export schema | docker-compose | kubernetes
```

Decisions:

* `executor` and `gateway` run in the current process, exactly the code a local replica or gateway
  runs (`run_worker` / `run_gateway`), so a container runs what a notebook runs (decision 10).
* Signals are handled here, on the main thread, and nowhere in the library: SIGINT and SIGTERM both ask
  for a graceful stop, the orchestration closes its children, and the command exits 0.
* Library errors (`OrchestraError`) become one `Error: ...` line and exit status 1; no pydantic or YAML
  traceback reaches a user. Usage errors exit 2, as click does.
* `export` is another module's click group, attached lazily when importable; the `schema` subcommand
  (the JSON Schema of the YAML format) is added to it from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click

from orchestra_nb._version import __version__
from orchestra_nb.errors import ConfigError, OrchestraError

__all__ = ["cli", "main"]


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn library errors into one-line CLI errors."""
    try:
        yield
    except OrchestraError as exc:
        _fail(str(exc))


def _context(values: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--context")
        try:
            out[key] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def _setup_parent_logging(log_config: str | None, name: str) -> None:
    from orchestra_nb.logs import ContextFilter, level_from_env

    context = ContextFilter(name, None)
    if log_config:
        from orchestra_nb.logconfig import apply_log_config

        apply_log_config(log_config, context)
        return
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True)
    handler.addFilter(context)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_from_env())


@contextlib.contextmanager
def _stop_on_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Install `handler` for SIGINT and SIGTERM on the main thread; restore the old ones after."""
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _with_gateway(spec: Any, port: tuple[int, ...], protocol: tuple[str, ...], host: str | None) -> Any:
    """`spec` with --port/--protocol/--host applied to its gateway (validated by the spec model)."""
    from pydantic import ValidationError

    from orchestra_nb.spec.models import GatewaySpec

    if not (port or protocol or host):
        return spec
    data = spec.gateway.model_dump()
    if protocol:
        data["protocol"] = [p.lower() for p in protocol]
        if not port and data["port"] and len(data["port"]) != len(protocol):
            data["port"] = []
    if port:
        data["port"] = list(port)
    if host:
        data["host"] = host
    try:
        gateway = GatewaySpec.model_validate(data)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'gateway'}: {e['msg'].removeprefix('Value error, ')}"
                           for e in exc.errors())
        _fail(f"invalid gateway options: {errors}")
    return spec.model_copy(update={"gateway": gateway})


def _serve(kind: str, uses: str, context: tuple[str, ...], port: tuple[int, ...], protocol: tuple[str, ...],
           host: str | None) -> None:
    from orchestra_nb.spec.yaml import load_config
    with _errors():
        obj = load_config(uses, context=_context(context))
    if type(obj).__name__ != kind:
        _fail(f"{uses} describes a {type(obj).__name__} (see its jtype); run `orchestra "
              f"{type(obj).__name__.lower()} --uses {uses}`")
    if port or protocol or host:
        obj = type(obj).from_spec(_with_gateway(obj.spec, port, protocol, host), base_dir=obj.base_dir)
    _setup_parent_logging(obj.flow_spec().log_config, obj.name)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    log = logging.getLogger("orchestra_nb.cli")
    with _stop_on_signals(on_signal):
        with _errors():
            obj.start()
        try:
            if not stop.is_set():  # start() printed the start-up summary
                log.info("%s %r serving on %s; stop with Ctrl-C or SIGTERM", kind, obj.name,
                         ", ".join(f"{p} port {n}" for p, n in obj.ports.items()))
        finally:
            obj.block(stop)
        log.info("%s %r stopped", kind, obj.name)


_uses = click.option("--uses", required=True, metavar="YAML", help="The YAML file (or YAML text).")
_ctx = click.option("--context", multiple=True, metavar="KEY=VALUE",
                    help="A value for ${{ CONTEXT.KEY }} in the YAML (repeatable).")
_port = click.option("--port", type=click.IntRange(0, 65535), multiple=True, help="Gateway port, one per protocol (repeatable).")
_protocol = click.option("--protocol", type=click.Choice(["grpc", "http"], case_sensitive=False),
                         multiple=True, help="Gateway protocol (repeatable).")
_host = click.option("--host", default=None, help="Interface the gateway listens on (0.0.0.0 for all).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="orchestra")
def cli() -> None:
    """Serve and chain model Executors; run what a notebook runs, from YAML."""


@cli.command()
@_uses
@_ctx
@_port
@_protocol
@_host
def flow(uses: str, context: tuple[str, ...], port: tuple[int, ...], protocol: tuple[str, ...],
         host: str | None) -> None:
    """Serve a Flow until SIGINT or SIGTERM."""
    _serve("Flow", uses, context, port, protocol, host)


@cli.command()
@_uses
@_ctx
@_port
@_protocol
@_host
def deployment(uses: str, context: tuple[str, ...], port: tuple[int, ...], protocol: tuple[str, ...],
               host: str | None) -> None:
    """Serve a Deployment until SIGINT or SIGTERM."""
    _serve("Deployment", uses, context, port, protocol, host)


def _flow_spec_of(uses: str, context: tuple[str, ...]) -> tuple[Any, str]:
    from orchestra_nb.spec.models import FlowSpec
    from orchestra_nb.spec.yaml import parse_config

    with _errors():
        spec, base_dir = parse_config(uses, context=_context(context))
    return (spec if isinstance(spec, FlowSpec) else spec.to_flow_spec()), base_dir


@cli.command()
@_uses
@_ctx
@click.option("--name", default=None, help="Which executor of the YAML (optional when it has one).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="gRPC port of this replica.")
@click.option("--host", default=None, help="Interface to listen on (default: the spec's host).")
@click.option("--replica-id", type=int, default=0, show_default=True,
              help="Which replica this process is (its logs and runtime_args say so).")
@click.option("--shard-id", type=int, default=0, show_default=True,
              help="Which shard this process serves.")
def executor(uses: str, context: tuple[str, ...], name: str | None, port: int | None, host: str | None,
             replica_id: int, shard_id: int) -> None:
    """Run one executor replica in this process.

    This is what an exported container runs; its options map onto the spec in the YAML.
    """
    from orchestra_nb import logs
    from orchestra_nb.runtime.child import Status
    from orchestra_nb.runtime.ports import free_port
    from orchestra_nb.runtime.worker import run_worker

    spec, base_dir = _flow_spec_of(uses, context)
    names = [e.name for e in spec.executors]
    if name is None:
        if len(names) != 1:
            _fail(f"{uses} has executors {names}; choose one with --name")
        name = names[0]
    if name not in names:
        _fail(f"no executor named {name!r} in {uses}; its executors: {names}")
    ex = spec.executor(name)
    if port is None:
        fixed = ex.fixed_ports()
        index = shard_id * ex.replicas + replica_id
        port = fixed[index] if index < len(fixed) else free_port(host or ex.host)
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    device = os.environ.get("ORCHESTRA_DEVICE") or ("cuda" if cvd and not cvd.startswith("-") else "cpu")
    config = {
        "kind": "worker", "spec": ex, "replica_id": replica_id, "shard_id": shard_id,
        "host": host or ex.host, "port": port, "base_dir": base_dir, "device": device,
        "title": f"orchestra-nb: {spec.name}/{name}/{replica_id}", "log_name": name,
        "log_config": spec.log_config,
    }
    os.environ.update({k: v for k, v in {**spec.env, **ex.env}.items() if k not in os.environ})
    with _errors():
        logs.setup_child(spec.log_config, name=name, replica=replica_id)
    _run_in_process(run_worker, config, Status(None))


def _run_in_process(run: Callable[..., Any], config: dict[str, Any], status: Any) -> None:
    """asyncio.run the worker or gateway; SIGINT is turned into the SIGTERM they stop on."""
    def interrupt(signum: int, frame: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        with _errors():
            asyncio.run(run(config, status))
    except (ValueError, TypeError, ImportError, OSError) as exc:
        _fail(f"{type(exc).__name__}: {exc}")
    finally:
        signal.signal(signal.SIGINT, previous)


def _addresses(values: tuple[str, ...], spec: Any) -> dict[str, list[list[str]]]:
    """NAME[/SHARD]=HOST:PORT, repeatable (several for replicas) → {name: [[addr, ...] per shard]}."""
    names = [e.name for e in spec.executors]
    found: dict[str, dict[int, list[str]]] = {}
    for item in values:
        key, sep, address = item.partition("=")
        name, _, shard = key.partition("/")
        if not sep or not address or ":" not in address:
            raise click.BadParameter(f"{item!r} is not NAME=HOST:PORT", param_hint="--executor-address")
        if name not in names:
            raise click.BadParameter(f"{name!r} is not an executor of the Flow; executors: {names}",
                                     param_hint="--executor-address")
        found.setdefault(name, {}).setdefault(int(shard.removeprefix("shard") or 0), []).append(address)
    missing = [n for n in names if n not in found]
    if missing:
        _fail(f"no --executor-address for {missing}; give NAME=HOST:PORT for every executor (repeat it "
              "for each replica)")
    return {n: [found[n][s] for s in sorted(found[n])] for n in names}


@cli.command()
@_uses
@_ctx
@click.option("--port", type=click.IntRange(0, 65535), multiple=True, help="Port, one per protocol, in order (repeatable).")
@click.option("--protocol", type=click.Choice(["grpc", "http"], case_sensitive=False), multiple=True,
              help="Protocols to serve (repeatable; default: the spec's).")
@click.option("--host", default=None, help="Interface to listen on (default: the spec's host).")
@click.option("--executor-address", "executor_address", multiple=True, metavar="NAME=HOST:PORT",
              help="Where an executor's replica listens, NAME=HOST:PORT or NAME/shardN=HOST:PORT for "
                   "a sharded one (repeatable; once per replica).")
def gateway(uses: str, context: tuple[str, ...], port: tuple[int, ...], protocol: tuple[str, ...],
            host: str | None, executor_address: tuple[str, ...]) -> None:
    """Run a Flow's gateway in this process.

    This is what an exported container runs; give every executor replica's address.
    """
    from orchestra_nb import logs
    from orchestra_nb.runtime.child import Status
    from orchestra_nb.runtime.gateway import run_gateway
    from orchestra_nb.runtime.ports import free_port
    from orchestra_nb.runtime.supervisor import gateway_view

    spec, _base_dir = _flow_spec_of(uses, context)
    spec = _with_gateway(spec, port, protocol, host)
    gw = spec.gateway
    ports = {p: gw.port_for(p) or free_port(gw.host) for p in gw.protocol}
    config = {"kind": "gateway", "spec": gateway_view(spec), "addresses": _addresses(executor_address, spec),
              "ports": ports, "host": gw.host, "title": f"orchestra-nb: {spec.name}/gateway",
              "log_name": "gateway", "log_config": spec.log_config}
    os.environ.update({k: v for k, v in {**spec.env, **gw.env}.items() if k not in os.environ})
    with _errors():
        logs.setup_child(spec.log_config, name="gateway", replica=None)
    _run_in_process(run_gateway, config, Status(None))


def _ping(address: str, timeout: float) -> tuple[bool, str]:
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "grpc", address
    if scheme in ("http", "https"):
        import httpx

        try:
            response = httpx.get(f"{scheme}://{rest.rstrip('/')}/health", timeout=timeout)
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return response.status_code == 200, f"HTTP {response.status_code}"
    if scheme != "grpc":
        return False, f"unknown scheme {scheme!r}; use grpc://, http:// or https://"
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or not host or not port.isdigit():
        return False, (f"{rest!r} is not HOST:PORT with a numeric port (gRPC has no default port), "
                       "e.g. 127.0.0.1:8080 or grpc://127.0.0.1:8080")
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    ok = reply.status == health_pb2.HealthCheckResponse.SERVING
    return ok, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@cli.command()
@click.argument("address")
@click.option("--timeout", type=float, default=3.0, show_default=True, help="Seconds to wait for an answer.")
def ping(address: str, timeout: float) -> None:
    """Health-check ADDRESS; exit 0 when healthy, 1 otherwise.

    ADDRESS is grpc://host:port, http://host:port, https://host:port or host:port (gRPC).
    """
    ok, detail = _ping(address, timeout)
    click.echo(f"{address}: {'healthy' if ok else 'unhealthy'} ({detail})", err=not ok)
    sys.exit(0 if ok else 1)


@click.command("schema")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write to this file instead of stdout.")
def schema_command(output: str | None) -> None:
    """Print the JSON Schema of the YAML format (for editor completion and checks)."""
    from orchestra_nb.spec.schema import yaml_schema

    text = json.dumps(yaml_schema(), indent=2)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        click.echo(f"wrote {output}")
    else:
        click.echo(text)


def _attach_export() -> None:
    try:
        from orchestra_nb.export.cli import export_group
    except ImportError:
        @click.group("export")
        def export_fallback() -> None:
            """Export a Flow: the JSON Schema of its YAML format."""

        export_fallback.add_command(schema_command)
        cli.add_command(export_fallback)
        return
    if "schema" not in export_group.commands:
        export_group.add_command(schema_command)
    cli.add_command(export_group)


_attach_export()


def main() -> None:
    """Console entry point."""
    try:
        cli.main(prog_name="orchestra")
    except ConfigError as exc:  # raised outside a command's own handling
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
