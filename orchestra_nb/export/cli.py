"""`orchestra export ...`: the export commands, a click group that orchestra_nb.cli attaches.

The commands only load the YAML into a spec and call the same functions as `Flow.to_*`; errors of ours
(`OrchestraError`) become a one-line click error, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from orchestra_nb.errors import OrchestraError
from orchestra_nb.spec.models import FlowSpec

__all__ = ["export_group"]

F = TypeVar("F", bound=Callable[..., Any])


def _load_spec(path: str) -> FlowSpec:
    try:
        from orchestra_nb.spec.yaml import load_config  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:  # pragma: no cover - only while orchestra_nb.spec.yaml is missing
        raise click.ClickException(f"cannot read {path}: YAML loading is unavailable ({exc})") from None
    obj = load_config(path)
    flow_spec = getattr(obj, "flow_spec", None)
    if flow_spec is None:
        raise click.ClickException(f"{path} describes a {type(obj).__name__}; export takes a Flow or a "
                                   "Deployment (jtype: Flow | Deployment)")
    spec: FlowSpec = flow_spec()
    return spec


def _common(func: F) -> F:
    options = [
        click.option("--image-prefix", default="", show_default=True,
                     help="Prefix of generated image names, e.g. registry.example.com/team/"),
        click.option("--build-dir", type=click.Path(file_okay=False), default=None,
                     help="Where to write the build context [default: <flow>-build next to the output]"),
        click.option("--orchestra-requirement", default=None,
                     help="Install orchestra-nb from an index with this requirement instead of vendoring "
                          "the local copy, e.g. 'orchestra-nb==0.1.0'"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group("export")
def export_group() -> None:
    """Export a Flow/Deployment YAML: Compose, Kubernetes, flowchart, JSON Schema (offline, no Docker)."""


@export_group.command("flowchart")
@click.argument("flow_yml", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
def flowchart(flow_yml: str, out: str) -> None:
    """Draw the Flow's topology to OUT: .svg, .png/.pdf (need Graphviz), .mmd/.md (Mermaid), .dot."""
    from orchestra_nb.plot import plot

    spec = _load_spec(flow_yml)
    try:
        plot(spec, out)
    except (ValueError, RuntimeError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out}")


@export_group.command("docker-compose")
@click.argument("flow_yml", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@_common
def docker_compose(flow_yml: str, out: str, image_prefix: str, build_dir: str | None,
                   orchestra_requirement: str | None) -> None:
    """Write a Compose file OUT (and its build context) for FLOW_YML."""
    from orchestra_nb.export import to_docker_compose_yaml

    try:
        spec = _load_spec(flow_yml)
        to_docker_compose_yaml(spec, out, build_dir=build_dir, image_prefix=image_prefix,
                               base_dir=os.path.dirname(os.path.abspath(flow_yml)),
                               orchestra_requirement=orchestra_requirement)
    except OrchestraError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out}; run: docker compose -f {out} up --build")


@export_group.command("kubernetes")
@click.argument("flow_yml", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--k8s-namespace", default=None, help="Namespace of every object [default: the Flow's name]")
@_common
def kubernetes(flow_yml: str, out_dir: str, k8s_namespace: str | None, image_prefix: str,
               build_dir: str | None, orchestra_requirement: str | None) -> None:
    """Write Kubernetes manifests for FLOW_YML into OUT_DIR (and the build context next to it)."""
    from orchestra_nb.export import to_kubernetes_yaml

    try:
        spec = _load_spec(flow_yml)
        to_kubernetes_yaml(spec, out_dir, k8s_namespace=k8s_namespace, build_dir=build_dir,
                           image_prefix=image_prefix, base_dir=os.path.dirname(os.path.abspath(flow_yml)),
                           orchestra_requirement=orchestra_requirement)
    except OrchestraError as exc:
        raise click.ClickException(str(exc)) from None
    from orchestra_nb.export.context import default_build_dir

    build = Path(build_dir).resolve() if build_dir else default_build_dir(out_dir, spec)
    script = os.path.relpath(build / "build.sh")
    click.echo(f"wrote {out_dir}; build the images: (cd {os.path.dirname(script) or '.'} && sh build.sh), "
               f"then: kubectl apply -f {out_dir}")
