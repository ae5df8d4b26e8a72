"""The build context next to an export: Dockerfiles, the Flow YAML, executor modules, orchestra-nb.

One folder serves every image of the export: `Dockerfile.gateway` and one `Dockerfile.<executor>` per
executor that has no `image=`. Each image installs orchestra-nb and that executor's `requirements` on a
slim Python base of the local minor version, and holds `/app/flow.yml` plus `/app/executors/*.py`.

Decisions:
- **orchestra-nb is vendored** (its package source and a small pyproject) rather than installed by
  version from PyPI: the image then runs exactly the code that ran locally, and an unreleased or edited
  checkout exports as it stands. `orchestra_requirement="orchestra-nb==X"` installs from an index instead.
- **The YAML holds only names.** Executor classes become `uses: Name` plus a `py_modules` entry under
  `executors/`: notebook/`__main__` classes as generated source (see `_source.py`), files named in
  `py_modules` copied; classes from installed packages stay dotted paths (add the package to
  `requirements`). The YAML is written by `orchestra_nb.spec.yaml.save_config` when that module exists,
  else by a minimal writer of the same `jtype/with/executors` format.
- Everything is computed in memory first (`build_context`), so an export without an output path still
  returns the files it would write; `BuildContext.write` puts them on disk. Nothing touches the network.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestra_nb._version import __version__
from orchestra_nb.errors import ConfigError
from orchestra_nb.export._plan import APP_DIR, TLS_CERT, TLS_KEY, dns_name
from orchestra_nb.export._source import class_module_source, needs_embedding
from orchestra_nb.export._yaml import dump
from orchestra_nb.spec.models import ExecutorSpec, FlowSpec

__all__ = ["TOKEN_ENV", "BuildContext", "build_context", "default_build_dir", "flow_yaml_files"]

_VENDOR = "orchestra-nb"
TOKEN_ENV = "ORCHESTRA_GATEWAY_TOKEN"
# The gateway's token never lands in the YAML (a ConfigMap, an image layer): the YAML refers to an
# environment variable that a Kubernetes Secret or Compose's `.env` file sets in the gateway only. The
# empty default lets executors, which never read the token, load the same YAML.
TOKEN_REFERENCE = "${{ ENV." + TOKEN_ENV + ":- }}"


@dataclass
class BuildContext:
    """The files of a build context (relative path -> content) and the image of each container."""

    files: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    dockerfiles: dict[str, str] = field(default_factory=dict)

    @property
    def flow_yaml(self) -> str:
        return self.files["flow.yml"]

    def write(self, folder: str | os.PathLike[str]) -> Path:
        root = Path(folder)
        for rel, content in sorted(self.files.items()):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            if rel == "build.sh":
                path.chmod(0o755)
        return root


def default_build_dir(output: str | os.PathLike[str], spec: FlowSpec) -> Path:
    """`<flow name>-build` in the folder that holds the output (a file or a folder)."""
    out = Path(output).resolve()
    return out.parent / f"{dns_name(spec.name, 'Flow name')}-build"


def _module_name(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    return ident if ident and not ident[0].isdigit() else f"_{ident}"


def _portable_executor(ex: ExecutorSpec, base_dir: str, files: dict[str, str]) -> ExecutorSpec:
    """`ex` with `uses` a name and `py_modules` under executors/, their sources added to `files`."""
    name = ex.name or "executor"
    update: dict[str, Any] = {}
    py_modules: list[str] = []
    for module in ex.py_modules:
        src = Path(base_dir, module)
        if not src.is_file():
            raise ConfigError(f"executor {name!r}: py_modules lists {module!r}, but {src.resolve()} does "
                              "not exist; export from the folder the paths are relative to, or pass "
                              "base_dir=")
        rel = f"executors/{src.name}"
        text = src.read_text(encoding="utf-8")
        if files.setdefault(rel, text) != text:
            raise ConfigError(f"executor {name!r}: py_modules file {module!r} has the same name as another "
                              f"executor's different file; rename one, both become {rel} in the image")
        py_modules.append(rel)
    uses = ex.uses
    if isinstance(uses, type):
        if needs_embedding(uses):
            rel = f"executors/{_module_name(name)}_{_module_name(uses.__name__).lower()}.py"
            files[rel] = class_module_source(uses)
            py_modules.append(rel)
            update["uses"] = uses.__name__
        else:
            update["uses"] = f"{uses.__module__}.{uses.__qualname__}"
    elif isinstance(uses, str) and uses.endswith((".yml", ".yaml")):
        src = Path(base_dir, uses)
        if not src.is_file():
            raise ConfigError(f"executor {name!r}: uses={uses!r}, but {src.resolve()} does not exist")
        rel = f"executors/{src.name}"
        files[rel] = src.read_text(encoding="utf-8")
        update["uses"] = rel
    update["py_modules"] = py_modules
    return ex.model_copy(update=update)


def _minimal_flow_yaml(spec: FlowSpec) -> str:
    """The `jtype: Flow` document of orchestra_nb.spec.yaml, for a spec whose `uses` are all strings."""
    gw = spec.gateway.model_dump(mode="json", exclude_defaults=True, exclude={"env", "protocol"})
    with_: dict[str, Any] = {"name": spec.name, "protocol": list(spec.gateway.protocol), **gw}
    if spec.env:
        with_["env"] = dict(spec.env)
    if spec.log_config:
        with_["log_config"] = spec.log_config
    executors = []
    for ex in spec.executors:
        entry: dict[str, Any] = {"name": ex.name, "uses": ex.uses}
        entry.update(ex.model_dump(mode="json", exclude_defaults=True, exclude={"name", "uses"}))
        executors.append(entry)
    doc = {"jtype": "Flow", "with": with_, "executors": executors}
    return "# Generated by orchestra-nb export\n" + dump(doc)


def flow_yaml_files(spec: FlowSpec, base_dir: str | None = None) -> dict[str, str]:
    """`flow.yml` and the executor modules it names, as relative path -> text."""
    files: dict[str, str] = {}
    update: dict[str, Any] = {"executors": [
        _portable_executor(ex, base_dir or os.getcwd(), files) for ex in spec.executors]}
    gateway: dict[str, Any] = {}
    if spec.gateway.token:
        gateway["token"] = TOKEN_REFERENCE
    if spec.gateway.ssl_certfile and spec.gateway.ssl_keyfile:  # mounted there (see _plan.tls_files)
        gateway.update(ssl_certfile=TLS_CERT, ssl_keyfile=TLS_KEY)
    if gateway:
        update["gateway"] = spec.gateway.model_copy(update=gateway)
    portable = spec.model_copy(update=update)
    try:
        from orchestra_nb.spec.yaml import save_config  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        files["flow.yml"] = _minimal_flow_yaml(portable)
        return files
    from orchestra_nb.orchestration.flow import Flow

    with tempfile.TemporaryDirectory(prefix="orchestra-export-") as tmp:
        for rel, text in files.items():
            Path(tmp, rel).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp, rel).write_text(text, encoding="utf-8")
        save_config(Flow.from_spec(portable, base_dir=tmp), os.path.join(tmp, "flow.yml"))
        for path in Path(tmp).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files[path.relative_to(tmp).as_posix()] = path.read_text(encoding="utf-8")
    return files


def _vendored_package() -> dict[str, str]:
    """orchestra-nb's own source and a pyproject that installs it with its runtime dependencies."""
    import orchestra_nb

    root = Path(orchestra_nb.__file__).parent
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".pyi", ".proto", ".typed"):
            files[f"{_VENDOR}/orchestra_nb/{path.relative_to(root).as_posix()}"] = path.read_text(encoding="utf-8")
    try:
        requires = importlib.metadata.requires("orchestra-nb") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    deps = [r for r in requires if "extra ==" not in r]
    if not deps:
        raise ConfigError("cannot vendor orchestra-nb: its installed metadata lists no dependencies; "
                          "pass orchestra_requirement='orchestra-nb==<version>' to install it from an index")
    pyproject = (
        "# Generated by orchestra-nb export: installs the vendored copy of orchestra-nb.\n"
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "orchestra-nb"\nversion = "{__version__}"\nrequires-python = ">=3.10"\n'
        f"dependencies = {deps!r}\n\n"
        '[project.scripts]\norchestra = "orchestra_nb.cli:main"\n\n'
        '[tool.setuptools.packages.find]\ninclude = ["orchestra_nb*"]\n\n'
        '[tool.setuptools.package-data]\n"*" = ["*.proto", "*.pyi", "py.typed"]\n'
    ).replace("'", '"')
    files[f"{_VENDOR}/pyproject.toml"] = pyproject
    return files


def _dockerfile(what: str, requirements: list[str], has_modules: bool, install: str) -> str:
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = [
        f"# Generated by orchestra-nb {__version__}: image for {what}.",
        f"FROM python:{py}-slim",
        "ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
    ]
    if install == _VENDOR:
        lines += [f"COPY {_VENDOR} /opt/{_VENDOR}", f"RUN pip install /opt/{_VENDOR}"]
    else:
        lines += [f"RUN pip install {shlex.quote(install)}"]
    if requirements:
        lines += [f"RUN pip install {' '.join(shlex.quote(r) for r in requirements)}"]
    lines += [f"WORKDIR {APP_DIR}", f"COPY flow.yml {APP_DIR}/flow.yml"]
    if has_modules:
        lines += [f"COPY executors {APP_DIR}/executors"]
    return "\n".join(lines) + "\n"


def build_context(spec: FlowSpec, *, image_prefix: str = "", base_dir: str | None = None,
                  orchestra_requirement: str | None = None) -> BuildContext:
    """Compute every file of the build context and the image name of the gateway and each executor."""
    ctx = BuildContext(files=flow_yaml_files(spec, base_dir))
    has_modules = any(rel.startswith("executors/") for rel in ctx.files)
    install = orchestra_requirement or _VENDOR
    if install == _VENDOR:
        ctx.files.update(_vendored_package())
    flow = dns_name(spec.name, "Flow name")
    tag = __version__.replace("+", "-")
    build_lines = ["#!/bin/sh", "# Build the images of this export: run from this folder.", "set -e"]

    def add_image(key: str, what: str, requirements: list[str]) -> None:
        image = f"{image_prefix}{flow}-{dns_name(key)}:{tag}"
        dockerfile = f"Dockerfile.{key}"
        ctx.images[key] = image
        ctx.dockerfiles[key] = dockerfile
        ctx.files[dockerfile] = _dockerfile(what, requirements, has_modules, install)
        build_lines.append(f"docker build -f {dockerfile} -t {shlex.quote(image)} .")

    add_image("gateway", f"the gateway of Flow {spec.name!r}", [])
    for ex in spec.executors:
        name = ex.name or "executor"
        if ex.image:
            ctx.images[name] = ex.image
        else:
            add_image(name, f"executor {name!r} of Flow {spec.name!r}", list(ex.requirements))
    if image_prefix.endswith("/"):
        build_lines.append("# then push them: " + " && ".join(
            f"docker push {shlex.quote(img)}" for k, img in ctx.images.items() if k in ctx.dockerfiles))
    ctx.files["build.sh"] = "\n".join(build_lines) + "\n"
    return ctx
