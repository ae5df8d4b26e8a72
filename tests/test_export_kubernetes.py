"""Kubernetes export: every object validates against the Kubernetes schemas, and the folder is complete.

Schemas come from the `kubernetes-validate` package (offline), at its latest Kubernetes version, in
strict mode (unknown fields are errors).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestra_nb import Deployment, Flow
from orchestra_nb.errors import ConfigError
from tests.test_export_compose import Count, Shout

K8S_VERSION = kubernetes_validate.latest_version()


def _objects(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.name: [o for o in yaml.safe_load_all(p.read_text()) if o]
            for p in sorted(folder.iterdir()) if p.suffix == ".yml"}


def _by_kind(files: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for objs in files.values() for o in objs}


def _validate_all(files: dict[str, list[dict[str, Any]]]) -> None:
    for name, objects in files.items():
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{name}: {obj['kind']} {obj['metadata']['name']}: {exc}") from None


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0]
    return container


def test_kubernetes_objects_validate_and_wire_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRA_K8S_ACCESS_MODES", "ReadWriteOnce,ReadOnlyMany")
    monkeypatch.setenv("ORCHESTRA_K8S_STORAGE_CLASS_NAME", "fast-ssd")
    monkeypatch.setenv("ORCHESTRA_K8S_STORAGE_CAPACITY", "5Gi")
    flow = (Flow(name="Search_Flow", protocol=["grpc", "http"], env={"SHARED": "x"})
            .add(uses=Shout, name="enc", replicas=3, gpus=2, env={"A": "1"})
            .add(uses=Count, name="index_", shards=2, volumes=["./idx:/workspace"])
            .add(uses="Executor", name="ext", image="ghcr.io/acme/ext:1.2"))
    out = tmp_path / "k8s"
    text = flow.to_kubernetes_yaml(str(out), k8s_namespace="search")
    files = _objects(out)
    assert sorted(files) == ["00-namespace.yml", "enc.yml", "ext.yml", "gateway.yml", "index.yml"]
    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    returned = sorted((o for o in yaml.safe_load_all(text) if o), key=key)
    assert returned == sorted((o for objs in files.values() for o in objs), key=key)
    _validate_all(files)
    objs = _by_kind(files)
    assert ("Namespace", "search") in objs
    assert {o["metadata"].get("namespace") for o in objs.values() if o["kind"] != "Namespace"} == {"search"}

    enc = objs[("Deployment", "enc")]
    assert enc["spec"]["replicas"] == 3
    container = _container(enc)
    assert container["command"][:6] == ["orchestra", "executor", "--uses", "/app/flow.yml", "--name", "enc"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 2}}
    assert {"name": "A", "value": "1"} in container["env"] and {"name": "SHARED", "value": "x"} in container["env"]
    assert container["readinessProbe"]["grpc"] == {"port": 8081}
    assert container["livenessProbe"]["grpc"] == {"port": 8081}
    assert container["image"] == "search-flow-enc:" + container["image"].split(":")[1]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "flow-config")
    assert mount == {"name": "flow-config", "mountPath": "/app/flow.yml", "subPath": "flow.yml",
                     "readOnly": True}
    config = objs[("ConfigMap", "enc-config")]["data"]["flow.yml"]
    assert yaml.safe_load(config)["jtype"] == "Flow"
    assert config == (tmp_path / "search-flow-build" / "flow.yml").read_text()

    # shards: one StatefulSet (it has a volume) and one Service per shard
    for shard in range(2):
        sts = objs[("StatefulSet", f"index-{shard}")]
        assert sts["spec"]["serviceName"] == f"index-{shard}"
        claim = sts["spec"]["volumeClaimTemplates"][0]
        assert claim["spec"] == {"accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                                 "resources": {"requests": {"storage": "5Gi"}},
                                 "storageClassName": "fast-ssd"}
        assert {"name": claim["metadata"]["name"], "mountPath": "/workspace"} in _container(sts)["volumeMounts"]
        assert _container(sts)["command"][-2:] == ["--shard-id", str(shard)]
        service = objs[("Service", f"index-{shard}")]
        assert service["spec"]["selector"] == {"app": f"index-{shard}"}
        assert sts["spec"]["template"]["metadata"]["labels"]["app"] == f"index-{shard}"
    assert ("Deployment", "index") not in objs

    assert _container(objs[("Deployment", "ext")])["image"] == "ghcr.io/acme/ext:1.2"
    gateway = _container(objs[("Deployment", "gateway")])
    command = gateway["command"]
    assert [command[i + 1] for i, a in enumerate(command) if a == "--executor-address"] == [
        "enc=enc.search.svc:8081", "index_/shard0=index-0.search.svc:8081",
        "index_/shard1=index-1.search.svc:8081",
        "ext=ext.search.svc:8081"]
    assert [p["containerPort"] for p in gateway["ports"]] == [8080, 8000]
    assert gateway["readinessProbe"]["grpc"] == {"port": 8080}
    assert [p["port"] for p in objs[("Service", "gateway")]["spec"]["ports"]] == [8080, 8000]


def test_kubernetes_http_only_gateway_and_deployment(tmp_path: Path) -> None:
    dep = Deployment(uses=Shout, name="shout", replicas=2, protocol="http", port=9000)
    dep.to_kubernetes_yaml(str(tmp_path / "k8s"))
    files = _objects(tmp_path / "k8s")
    _validate_all(files)
    objs = _by_kind(files)
    assert ("Namespace", "shout") in objs
    gateway = _container(objs[("Deployment", "gateway")])
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/health", "port": 9000}
    assert "--protocol" in gateway["command"] and "http" in gateway["command"]
    module = next((tmp_path / "shout-build" / "executors").glob("*.py")).read_text()
    assert "class Shout(Executor):" in module


def test_kubernetes_rejects_bad_access_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRA_K8S_ACCESS_MODES", "ReadWriteAlways")
    flow = Flow().add(name="store", volumes=["/data"])
    with pytest.raises(ConfigError, match="ORCHESTRA_K8S_ACCESS_MODES='ReadWriteAlways'"):
        flow.to_kubernetes_yaml(str(tmp_path / "k8s"))


def test_kubernetes_token_lives_in_a_secret(tmp_path: Path) -> None:
    Flow(name="secure", token="s3cret-token").add(name="a").to_kubernetes_yaml(str(tmp_path / "k8s"))
    files = _objects(tmp_path / "k8s")
    _validate_all(files)
    objs = _by_kind(files)
    assert objs[("Secret", "gateway-token")]["stringData"] == {"token": "s3cret-token"}
    leaked = [k for k, o in objs.items() if k[0] != "Secret" and "s3cret-token" in yaml.safe_dump(o)]
    assert leaked == []
    env = _container(objs[("Deployment", "gateway")])["env"]
    assert {"name": "ORCHESTRA_GATEWAY_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "gateway-token", "key": "token"}}} in env


def test_kubernetes_shards_each_run_the_executors_replicas(tmp_path: Path) -> None:
    flow = Flow(name="grid").add(uses=Shout, name="enc", shards=2, replicas=3, gpus=1)
    flow.to_kubernetes_yaml(str(tmp_path / "k8s"))
    files = _objects(tmp_path / "k8s")
    _validate_all(files)
    objs = _by_kind(files)
    for shard in range(2):
        deployment = objs[("Deployment", f"enc-{shard}")]
        assert deployment["spec"]["replicas"] == 3
        assert _container(deployment)["command"][-2:] == ["--shard-id", str(shard)]
        assert _container(deployment)["resources"] == {"limits": {"nvidia.com/gpu": 1}}
        assert objs[("Service", f"enc-{shard}")]["spec"]["selector"] == {"app": f"enc-{shard}"}
    command = _container(objs[("Deployment", "gateway")])["command"]
    assert [command[i + 1] for i, a in enumerate(command) if a == "--executor-address"] == [
        "enc/shard0=enc-0.grid.svc:8081", "enc/shard1=enc-1.grid.svc:8081"]


def test_kubernetes_tls_gateway_mounts_its_certificate_from_a_tls_secret(tmp_path: Path) -> None:
    from tests.test_tunnel import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    for protocols, probe in [(["grpc", "http"], {"httpGet": {"path": "/health", "port": 8000, "scheme": "HTTPS"}}),
                             (["grpc"], {"tcpSocket": {"port": 8080}})]:
        out = tmp_path / f"k8s-{len(protocols)}"
        Flow(name="tls", protocol=protocols, ssl_certfile=str(cert), ssl_keyfile=str(key)).add(
            uses=Shout, name="s").to_kubernetes_yaml(str(out))
        files = _objects(out)
        _validate_all(files)
        objs = _by_kind(files)
        secret = objs[("Secret", "gateway-tls")]
        assert secret["type"] == "kubernetes.io/tls"
        assert base64.b64decode(secret["data"]["tls.crt"]) == cert.read_bytes()
        assert base64.b64decode(secret["data"]["tls.key"]) == key.read_bytes()
        gateway = objs[("Deployment", "gateway")]
        container = _container(gateway)
        assert {"name": "tls", "mountPath": "/etc/orchestra/tls", "readOnly": True} in container["volumeMounts"]
        assert {"name": "tls", "secret": {"secretName": "gateway-tls", "defaultMode": 0o400}} in \
            gateway["spec"]["template"]["spec"]["volumes"]
        assert container["readinessProbe"] == {**probe, "periodSeconds": 5, "timeoutSeconds": 5}
        # the Flow YAML the gateway loads points at the mount, and carries neither the local paths nor the key
        flow_yml = yaml.safe_load(objs[("ConfigMap", "gateway-config")]["data"]["flow.yml"])
        assert flow_yml["with"]["ssl_certfile"] == "/etc/orchestra/tls/tls.crt"
        assert flow_yml["with"]["ssl_keyfile"] == "/etc/orchestra/tls/tls.key"
        key_body = key.read_text().splitlines()[1]
        leaked = [p for p in tmp_path.rglob("*") if p.is_file() and p != key and p.suffix != ".pem"
                  and (key_body in p.read_text(errors="replace") or str(tmp_path) in p.read_text(errors="replace"))]
        assert leaked == []
        # executors talk plain gRPC inside the cluster and keep their native gRPC probe
        assert _container(objs[("Deployment", "s")])["readinessProbe"]["grpc"] == {"port": 8081}


def test_kubernetes_tls_files_must_exist(tmp_path: Path) -> None:
    flow = Flow(name="tls", ssl_certfile="missing-cert.pem", ssl_keyfile="missing-key.pem").add(name="a")
    with pytest.raises(ConfigError, match=r"ssl_certfile='missing-cert.pem': no such file"):
        flow.to_kubernetes_yaml(str(tmp_path / "k8s"))


def test_cli_export_finds_tls_files_beside_the_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from orchestra_nb.cli import cli
    from tests.test_tunnel import self_signed_certificate

    project = tmp_path / "project"
    project.mkdir()
    cert, key = self_signed_certificate(project)
    assert key.name == "key.pem"
    (project / "flow.yml").write_text("jtype: Flow\nwith:\n  name: tls\n  ssl_certfile: cert.pem\n"
                                      "  ssl_keyfile: key.pem\nexecutors:\n  - name: a\n")
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    result = CliRunner().invoke(cli, ["export", "kubernetes", str(project / "flow.yml"), "k8s"])
    assert result.exit_code == 0, result.output
    objs = _by_kind(_objects(tmp_path / "k8s"))
    assert base64.b64decode(objs[("Secret", "gateway-tls")]["data"]["tls.crt"]) == cert.read_bytes()
    key.unlink()
    result = CliRunner().invoke(cli, ["export", "kubernetes", str(project / "flow.yml"), "k8s2"])
    assert result.exit_code != 0 and "ssl_keyfile='key.pem': no such file" in result.output
    assert not (tmp_path / "k8s2").exists()  # nothing half-written
