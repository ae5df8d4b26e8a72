"""Docker Compose export: schema, structure, and an end-to-end run of the services without Docker.

`test_export_compose_spec.json` is the Compose Specification's JSON Schema as shipped in the
docker-compose 1.29.2 wheel on PyPI (`compose/config/compose_spec.json`, Apache-2.0, from
github.com/compose-spec/compose-spec). Newer keys we emit must be in it too, so it checks our output.

The end-to-end test reads the generated file and runs each service's command and environment as a
local process: `/app` becomes the build context (what the Dockerfiles copy there), service names
resolve to 127.0.0.1 and every container port is remapped to a free one. The gateway starts once every
executor answers the gRPC health check (the Compose file's `depends_on: service_healthy`). Its answers
must equal those of the same Flow run locally.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestra_nb import Client, Doc, DocList, Executor, Flow, requests
from orchestra_nb.errors import TransportError
from orchestra_nb.runtime.ports import free_port
from tests.helpers import poll_for

SCHEMA = json.loads((Path(__file__).parent / "test_export_compose_spec.json").read_text())
SUFFIX = "!"


def exclaim(text: str) -> str:
    return text.upper() + SUFFIX


class Shout(Executor):
    """Defined in a test module, not an installed package: the export embeds its source."""

    @requests(on="/shout")
    def shout(self, docs: DocList[Doc], parameters: dict[str, Any]) -> None:
        for d in docs:
            d.text = exclaim(d.text or "")
            d.tags["shouted_by"] = "shout"


class Count(Executor):
    @requests
    def count(self, docs: DocList[Doc], parameters: dict[str, Any]) -> None:
        for d in docs:
            d.tags["length"] = len(d.text or "")


def _flow() -> Flow:
    return (Flow(name="e2e", protocol=["grpc", "http"])
            .add(uses=Shout, name="shout", replicas=2, env={"SHOUT_MODE": "loud"})
            .add(uses=Count, name="count_", shards=2))


def _validate(document: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(document)


def test_compose_validates_and_only_the_gateway_publishes(tmp_path: Path) -> None:
    flow = (Flow(name="shop", protocol=["grpc", "http"], port=[51000, 51001])
            .add(uses=Shout, name="enc", replicas=2, gpus=1, env={"A": "1"}, volumes=["./data:/data"])
            .add(uses="Executor", name="ext", image="ghcr.io/acme/ext:1.2", shards=2, gpus=[0, [1, 2]])
            .add(uses=Count, name="cnt", requirements=["tqdm>=4"]))
    text = flow.to_docker_compose_yaml(str(tmp_path / "docker-compose.yml"))
    document = yaml.safe_load(text)
    assert yaml.safe_load((tmp_path / "docker-compose.yml").read_text()) == document
    _validate(document)
    services = document["services"]
    assert set(services) == {"enc-rep0", "enc-rep1", "ext-shard0", "ext-shard1", "cnt", "gateway"}
    assert [s for s, svc in services.items() if "ports" in svc] == ["gateway"]
    assert services["gateway"]["ports"] == ["51000:51000", "51001:51001"]
    assert all(svc["networks"] == ["orchestra"] for svc in services.values())
    assert set(services["gateway"]["depends_on"]) == set(services) - {"gateway"}
    # env, volumes, GPUs
    assert services["enc-rep1"]["environment"] == {"A": "1"}
    assert services["enc-rep1"]["volumes"] == ["./data:/data"]
    assert services["enc-rep0"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "capabilities": ["gpu"], "count": 1}]
    ext_devices = [services[f"ext-shard{i}"]["deploy"]["resources"]["reservations"]["devices"][0]
                   for i in range(2)]
    assert [d["device_ids"] for d in ext_devices] == [["0"], ["0"]]  # replica 0 of each shard
    assert "deploy" not in services["cnt"]
    # images: given, or built from the generated context
    assert services["ext-shard0"]["image"] == "ghcr.io/acme/ext:1.2"
    assert "build" not in services["ext-shard0"]
    assert services["ext-shard0"]["volumes"][0].endswith("/flow.yml:/app/flow.yml:ro")
    build = services["cnt"]["build"]
    assert build == {"context": "./shop-build", "dockerfile": "Dockerfile.cnt"}
    dockerfile = (tmp_path / "shop-build" / "Dockerfile.cnt").read_text()
    assert "RUN pip install 'tqdm>=4'" in dockerfile
    assert f"FROM python:{sys.version_info.major}.{sys.version_info.minor}-slim" in dockerfile
    assert "COPY flow.yml /app/flow.yml" in dockerfile and "COPY executors /app/executors" in dockerfile
    assert (tmp_path / "shop-build" / "orchestra-nb" / "orchestra_nb" / "cli.py").exists() or \
        (tmp_path / "shop-build" / "orchestra-nb" / "orchestra_nb" / "executor.py").exists()
    # every executor and the gateway run the orchestra entrypoints on the flow YAML
    assert services["enc-rep1"]["command"][:6] == ["orchestra", "executor", "--uses", "/app/flow.yml",
                                                   "--name", "enc"]
    gw = services["gateway"]["command"]
    assert gw[:4] == ["orchestra", "gateway", "--uses", "/app/flow.yml"]
    assert [gw[i + 1] for i, a in enumerate(gw) if a == "--executor-address"] == [
        "enc=enc-rep0:8081", "enc=enc-rep1:8081", "ext/shard0=ext-shard0:8081", "ext/shard1=ext-shard1:8081",
        "cnt=cnt:8081"]


def test_compose_without_output_path_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = _flow().to_docker_compose_yaml()
    _validate(yaml.safe_load(text))
    assert list(tmp_path.iterdir()) == []


def test_compose_rejects_clashing_service_names() -> None:
    from orchestra_nb.errors import ConfigError

    flow = Flow().add(name="a_b").add(name="a-b")
    with pytest.raises(ConfigError, match=r"'a-b'.*rename"):
        flow.to_docker_compose_yaml()


# ---- end to end: run the services as local processes ---------------------------------------------

def _orchestra() -> list[str]:
    script = Path(sys.executable).with_name("orchestra")
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestra_nb.cli"]


def _localize(command: list[str], app_dir: Path, ports: dict[str, int]) -> list[str]:
    """A container's argv as a local one: /app is the build context, service:port a local port."""
    out = [*_orchestra(), *command[1:]] if command[0] == "orchestra" else list(command)
    out = [a.replace("/app/", f"{app_dir}/") for a in out]
    out = ["127.0.0.1" if a == "0.0.0.0" else a for a in out]

    def remap(match: re.Match[str]) -> str:
        return f"127.0.0.1:{ports[match.group(1)]}"

    for i, arg in enumerate(out):
        if out[i - 1] == "--executor-address":
            name, _, address = arg.partition("=")
            out[i] = f"{name}={re.sub(r'^([^:]+):8081$', remap, address)}"
    return out


def _healthy(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class Services:
    """The Compose services as local processes; always terminated, output shown on failure."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = self.folder / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.folder)
        self.procs[name] = (proc, log)

    def check_alive(self) -> None:
        for name, (proc, _log) in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"service {name} exited with {proc.returncode}:\n{self.output()}")

    def output(self) -> str:
        return "\n".join(f"--- {n} ---\n{log.read_text(errors='replace')[-3000:]}"
                         for n, (_p, log) in self.procs.items())

    def close(self) -> None:
        for proc, _log in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _log in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    running = Services(tmp_path)
    try:
        yield running
    except BaseException:
        print(running.output())
        raise
    finally:
        running.close()


@pytest.mark.slow
def test_compose_services_run_as_local_processes_and_answer_like_the_flow(
        tmp_path: Path, services: Services) -> None:
    flow = _flow()
    document = yaml.safe_load(flow.to_docker_compose_yaml(str(tmp_path / "docker-compose.yml")))
    _validate(document)
    app_dir = tmp_path / "e2e-build"
    dockerfile = (app_dir / "Dockerfile.shout").read_text()
    assert "COPY flow.yml /app/flow.yml" in dockerfile and "COPY executors /app/executors" in dockerfile

    specs = document["services"]
    ports = {name: free_port("127.0.0.1") for name in specs if name != "gateway"}
    for name, svc in specs.items():
        if name == "gateway":
            continue
        command = _localize(svc["command"], app_dir, ports)
        command[command.index("--port") + 1] = str(ports[name])
        services.start(name, command, svc.get("environment", {}))

    def executors_healthy() -> bool:
        services.check_alive()
        return all(_healthy(port) for port in ports.values())

    poll_for(executors_healthy, timeout=60, what="every executor service to be healthy")

    gateway = specs["gateway"]
    command = _localize(gateway["command"], app_dir, ports)
    published = {int(p.split(":")[1]): free_port("127.0.0.1") for p in gateway["ports"]}
    command = [str(published[int(a)]) if command[i - 1] == "--port" else a for i, a in enumerate(command)]
    services.start("gateway", command, gateway.get("environment", {}))
    protocols = [command[i + 1] for i, a in enumerate(command) if a == "--protocol"]
    local_ports = dict(zip(protocols, published.values(), strict=True))

    def gateway_healthy() -> bool:
        services.check_alive()
        return _healthy(local_ports["grpc"])

    poll_for(gateway_healthy, timeout=60, what="the gateway service to be healthy")

    for name, svc in specs.items():  # each service's healthcheck, as Docker would run it in the container
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1:3] == ["orchestra", "ping"], (name, test)
        port = local_ports["grpc"] if name == "gateway" else ports[name]
        probe = [*_orchestra(), *test[2:]]
        probe = [re.sub(r"^127\.0\.0\.1:\d+$", f"127.0.0.1:{port}", a) for a in probe]
        assert any(f"127.0.0.1:{port}" in a for a in probe), (name, probe)
        assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0, (name, probe)

    inputs = [Doc(text="hello"), Doc(text="compose")]
    answers = {}
    for protocol, port in local_ports.items():
        with Client(port=port, protocol=protocol) as client:
            answers[protocol] = client.post("/shout", inputs)
    with flow:
        expected = flow.post("/shout", inputs)
    assert expected.texts == ["HELLO!", "COMPOSE!"]
    for protocol, docs in answers.items():
        assert docs.texts == expected.texts, protocol
        assert [d.tags for d in docs] == [d.tags for d in expected], protocol


def test_compose_keeps_the_token_out_of_the_yaml_and_image(tmp_path: Path) -> None:
    flow = Flow(name="secure", token="s3cret-token").add(uses=Shout, name="s")
    text = flow.to_docker_compose_yaml(str(tmp_path / "docker-compose.yml"))
    _validate(yaml.safe_load(text))
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".env"
              and "s3cret-token" in p.read_text(errors="replace")]
    assert leaked == []
    env_file = tmp_path / ".env"
    assert env_file.read_text() == "ORCHESTRA_GATEWAY_TOKEN=s3cret-token\n"
    assert env_file.stat().st_mode & 0o077 == 0
    gateway = yaml.safe_load(text)["services"]["gateway"]
    assert gateway["environment"]["ORCHESTRA_GATEWAY_TOKEN"].startswith("${ORCHESTRA_GATEWAY_TOKEN:?")
    assert "environment" not in yaml.safe_load(text)["services"]["s"]


@pytest.mark.slow
def test_compose_tls_gateway_runs_with_its_mounted_certificate(tmp_path: Path, services: Services) -> None:
    """The gateway service mounts the local certificate and key read-only where its Flow YAML points;
    run as local processes (each mount as the file it names), it answers over TLS on both front doors
    and its healthcheck passes."""
    from tests.test_tunnel import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    flow = Flow(name="tls", protocol=["grpc", "http"], ssl_certfile=str(cert), ssl_keyfile=str(key)).add(
        uses=Shout, name="s")
    document = yaml.safe_load(flow.to_docker_compose_yaml(str(tmp_path / "docker-compose.yml")))
    _validate(document)
    gateway = document["services"]["gateway"]
    assert gateway["volumes"] == [f"{cert}:/etc/orchestra/tls/tls.crt:ro", f"{key}:/etc/orchestra/tls/tls.key:ro"]
    app_dir = tmp_path / "tls-build"
    flow_text = (app_dir / "flow.yml").read_text()
    assert str(tmp_path) not in flow_text and key.read_text().splitlines()[1] not in flow_text

    ports = {"s": free_port("127.0.0.1")}
    command = _localize(document["services"]["s"]["command"], app_dir, ports)
    command[command.index("--port") + 1] = str(ports["s"])
    services.start("s", command, {})
    poll_for(lambda: (services.check_alive(), _healthy(ports["s"]))[1], timeout=60,
             what="the executor service to be healthy")

    # the container's view of its mounts: the gateway's YAML, with each mount target as its source file
    mounted = flow_text
    for volume in gateway["volumes"]:
        source, target, _mode = volume.split(":")
        mounted = mounted.replace(target, source)
    (app_dir / "flow.gateway.yml").write_text(mounted)
    command = _localize(gateway["command"], app_dir, ports)
    command[command.index("--uses") + 1] = str(app_dir / "flow.gateway.yml")
    published = {int(p.split(":")[1]): free_port("127.0.0.1") for p in gateway["ports"]}
    command = [str(published[int(a)]) if command[i - 1] == "--port" else a for i, a in enumerate(command)]
    services.start("gateway", command, {})
    local = dict(zip([command[i + 1] for i, a in enumerate(command) if a == "--protocol"], published.values(),
                     strict=True))

    test = gateway["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "https://127.0.0.1:8000/health" in test[3]
    probe = [sys.executable, "-c", test[3].replace(":8000/", f":{local['http']}/")]

    def gateway_healthy() -> bool:
        services.check_alive()
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0

    poll_for(gateway_healthy, timeout=60, what="the TLS gateway's healthcheck to pass")
    for protocol, port in local.items():
        with Client(port=port, protocol=protocol, tls=True, ca_file=str(cert)) as client:
            assert client.post("/shout", [Doc(text="tls")]).texts == ["TLS!"], protocol
        with Client(port=port, protocol=protocol) as plain, pytest.raises(TransportError):
            plain.post("/shout", [Doc(text="plain")], timeout=5)
