"""Kubernetes export: a folder that `kubectl apply -f` takes as it stands.

Layout: `00-namespace.yml`, `gateway.yml`, and `<executor>.yml` per executor; each file holds that
component's ConfigMap (the Flow YAML, mounted read-only at /app/flow.yml through `subPath`, so the
image's /app/executors stays visible), its workload and its Service. The build context goes next to the
folder (not inside it, where `kubectl apply -R` would try to apply flow.yml).

Per executor shard: a Deployment with `spec.replicas` = the executor's replicas, or a StatefulSet with a
volumeClaimTemplate when the executor has volumes (`ORCHESTRA_K8S_ACCESS_MODES` — comma-separated,
default ReadWriteOnce —, `ORCHESTRA_K8S_STORAGE_CLASS_NAME`, `ORCHESTRA_K8S_STORAGE_CAPACITY` — default
10G — shape the claim). A shard's replicas share one headless Service, and the gateway addresses each
shard by its service DNS name, which resolves to every ready pod; its gRPC channels use round_robin, so
single requests (not only connections) are spread over the replicas. Probes use Kubernetes' native gRPC probe against
the standard health service (GA since Kubernetes 1.27).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from orchestra_nb.errors import ConfigError
from orchestra_nb.export._plan import (
    EXECUTOR_PORT,
    FLOW_FILE,
    TLS_DIR,
    dns_name,
    executor_address,
    executor_command,
    gateway_command,
    gateway_ports,
    gpu_request,
    volume_target,
)
from orchestra_nb.export._yaml import dump_all
from orchestra_nb.export.context import TOKEN_ENV, BuildContext, build_context, default_build_dir
from orchestra_nb.spec.models import ExecutorSpec, FlowSpec

__all__ = ["kubernetes_objects", "to_kubernetes_yaml"]


def _labels(flow: str, component: str, shard: int | None = None) -> dict[str, str]:
    labels = {"app": component, "app.kubernetes.io/part-of": flow,
              "app.kubernetes.io/managed-by": "orchestra-nb"}
    if shard is not None:
        labels["orchestra-nb/shard"] = str(shard)
    return labels


def _env(env: dict[str, str]) -> dict[str, Any]:
    return {"env": [{"name": k, "value": v} for k, v in env.items()]} if env else {}


def _config_map(name: str, namespace: str, labels: dict[str, str], flow_yaml: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "data": {"flow.yml": flow_yaml}}


def _probes(port: int | None, http_port: int | None, tls: bool = False) -> dict[str, Any]:
    probe: dict[str, Any]
    if tls and http_port is not None:  # an HTTPS probe does not verify the certificate
        probe = {"httpGet": {"path": "/health", "port": http_port, "scheme": "HTTPS"}}
    elif tls:  # Kubernetes' gRPC probe cannot speak TLS: a TCP connect is what it can check
        probe = {"tcpSocket": {"port": port}}
    elif port is not None:
        probe = {"grpc": {"port": port}}
    else:
        probe = {"httpGet": {"path": "/health", "port": http_port}}
    return {
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 60},
        "readinessProbe": {**probe, "periodSeconds": 5, "timeoutSeconds": 5},
        "livenessProbe": {**probe, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
    }


def _claim(name: str) -> dict[str, Any]:
    modes = [m.strip() for m in os.environ.get("ORCHESTRA_K8S_ACCESS_MODES", "ReadWriteOnce").split(",")
             if m.strip()]
    allowed = {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}
    bad = [m for m in modes if m not in allowed]
    if bad or not modes:
        raise ConfigError(f"ORCHESTRA_K8S_ACCESS_MODES={os.environ.get('ORCHESTRA_K8S_ACCESS_MODES')!r}: "
                          f"give comma-separated access modes from {sorted(allowed)}")
    spec: dict[str, Any] = {"accessModes": modes, "resources": {"requests": {
        "storage": os.environ.get("ORCHESTRA_K8S_STORAGE_CAPACITY", "10G")}}}
    storage_class = os.environ.get("ORCHESTRA_K8S_STORAGE_CLASS_NAME")
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"metadata": {"name": name}, "spec": spec}


def _pod(container: dict[str, Any], config_map: str, labels: dict[str, str]) -> dict[str, Any]:
    container.setdefault("volumeMounts", []).append(
        {"name": "flow-config", "mountPath": FLOW_FILE, "subPath": "flow.yml", "readOnly": True})
    return {"metadata": {"labels": labels}, "spec": {
        "containers": [container],
        "volumes": [{"name": "flow-config", "configMap": {"name": config_map}}],
    }}


def _executor_objects(spec: FlowSpec, ex: ExecutorSpec, ctx: BuildContext, namespace: str,
                      flow: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    name = ex.name or "executor"
    base = dns_name(name, "executor name")
    config_map = f"{base}-config"
    objects: list[dict[str, Any]] = [_config_map(config_map, namespace, _labels(flow, base), ctx.flow_yaml)]
    addresses = []
    for shard in range(ex.shards):
        component = base if ex.shards == 1 else f"{base}-{shard}"
        labels = _labels(flow, component, shard if ex.shards > 1 else None)
        container: dict[str, Any] = {
            "name": "executor", "image": ctx.images[name], "imagePullPolicy": "IfNotPresent",
            "command": executor_command(name, shard, None, ex.shards),
            "ports": [{"name": "grpc", "containerPort": EXECUTOR_PORT}],
            **_env({**spec.env, **ex.env}),
            **_probes(EXECUTOR_PORT, None),
        }
        count, _ids = gpu_request(ex)
        if count:
            container["resources"] = {"limits": {"nvidia.com/gpu": count}}
        claims = []
        for index, volume in enumerate(ex.volumes):
            _source, target = volume_target(volume)
            claim = f"{component}-data-{index}"
            claims.append(_claim(claim))
            container.setdefault("volumeMounts", []).append({"name": claim, "mountPath": target})
        pod = _pod(container, config_map, labels)
        meta = {"name": component, "namespace": namespace, "labels": labels}
        workload: dict[str, Any] = {"replicas": ex.replicas, "selector": {"matchLabels": {"app": component}},
                                    "template": pod}
        if claims:
            workload.update(serviceName=component, volumeClaimTemplates=claims)
            objects.append({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": workload})
        else:
            objects.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": workload})
        # headless: the name resolves to every pod, and the gateway's round_robin policy spreads the
        # requests over them (a ClusterIP would pin one gateway connection to one pod)
        objects.append({"apiVersion": "v1", "kind": "Service", "metadata": dict(meta), "spec": {
            "type": "ClusterIP", "clusterIP": "None", "selector": {"app": component},
            "ports": [{"name": "grpc", "port": EXECUTOR_PORT, "targetPort": EXECUTOR_PORT,
                       "protocol": "TCP", "appProtocol": "grpc"}]}})
        addresses.append(executor_address(ex, shard, f"{component}.{namespace}.svc:{EXECUTOR_PORT}"))
    return objects, addresses


def kubernetes_objects(spec: FlowSpec, ctx: BuildContext, namespace: str | None = None,
                       base_dir: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The objects of the export, per file name."""
    tls = spec.gateway.tls_files(base_dir)
    flow = dns_name(spec.name, "Flow name")
    ns = dns_name(namespace, "k8s_namespace") if namespace else flow
    files: dict[str, list[dict[str, Any]]] = {
        "00-namespace.yml": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}]}
    addresses: list[tuple[str, str]] = []
    for ex in spec.executors:
        objects, addrs = _executor_objects(spec, ex, ctx, ns, flow)
        file = f"{dns_name(ex.name or 'executor')}.yml"
        if file in files or file == "gateway.yml":
            raise ConfigError(f"executor {ex.name!r} would be written to {file}, which another executor (or "
                              "the gateway) already uses; rename one of them")
        files[file] = objects
        addresses += addrs
    ports = gateway_ports(spec)
    labels = _labels(flow, "gateway")
    container: dict[str, Any] = {
        "name": "gateway", "image": ctx.images["gateway"], "imagePullPolicy": "IfNotPresent",
        "command": gateway_command(spec, addresses),
        "ports": [{"name": p, "containerPort": port} for p, port in ports.items()],
        **_env({**spec.env, **spec.gateway.env}),
        **_probes(ports.get("grpc"), ports.get("http"), tls=tls is not None),
    }
    meta = {"name": "gateway", "namespace": ns, "labels": labels}
    tls_secret: list[dict[str, Any]] = []
    if tls is not None:  # a kubernetes.io/tls Secret, mounted where the exported YAML points the gateway
        cert, key = (base64.b64encode(Path(path).read_bytes()).decode("ascii") for path in tls)
        tls_secret = [{"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                       "metadata": {"name": "gateway-tls", "namespace": ns, "labels": labels},
                       "data": {"tls.crt": cert, "tls.key": key}}]
        container.setdefault("volumeMounts", []).append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    secret: list[dict[str, Any]] = []
    if spec.gateway.token:
        secret = [{"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "gateway-token", "namespace": ns, "labels": labels},
                   "stringData": {"token": spec.gateway.token}}]
        container.setdefault("env", []).append({"name": TOKEN_ENV, "valueFrom": {
            "secretKeyRef": {"name": "gateway-token", "key": "token"}}})
    pod = _pod(container, "gateway-config", labels)
    if tls is not None:
        pod["spec"]["volumes"].append({"name": "tls", "secret": {"secretName": "gateway-tls", "defaultMode": 0o400}})
    files["gateway.yml"] = [
        *secret,
        *tls_secret,
        _config_map("gateway-config", ns, labels, ctx.flow_yaml),
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": 1, "selector": {"matchLabels": {"app": "gateway"}},
            "template": pod}},
        {"apiVersion": "v1", "kind": "Service", "metadata": dict(meta), "spec": {
            "type": "ClusterIP", "selector": {"app": "gateway"},
            "ports": [{"name": p, "port": port, "targetPort": port, "protocol": "TCP",
                       **({"appProtocol": "grpc"} if p == "grpc" else {})} for p, port in ports.items()]}},
    ]
    return files


def to_kubernetes_yaml(spec: FlowSpec, output_base_path: str, k8s_namespace: str | None = None, *,
                       build_dir: str | None = None, image_prefix: str = "", base_dir: str | None = None,
                       orchestra_requirement: str | None = None) -> str:
    """Write the manifests of `spec` into the folder `output_base_path` and its build context next to it.

    Returns every object as one multi-document YAML string. Build the images with the generated
    `build.sh` (and push them when `image_prefix` names a registry) before `kubectl apply -f`.
    """
    ctx = build_context(spec, image_prefix=image_prefix, base_dir=base_dir,
                        orchestra_requirement=orchestra_requirement)
    files = kubernetes_objects(spec, ctx, k8s_namespace, base_dir=base_dir)
    out = Path(output_base_path).resolve()
    out.mkdir(parents=True, exist_ok=True)
    texts = []
    for file, objects in files.items():
        text = dump_all(objects)
        (out / file).write_text(text, encoding="utf-8")
        texts.append(text)
    ctx.write(Path(build_dir).resolve() if build_dir else default_build_dir(out, spec))
    return "---\n".join(texts)
