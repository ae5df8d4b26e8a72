"""Build contexts: notebook-defined executors become importable modules; exports are offline; the CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestra_nb import Flow
from orchestra_nb.export.cli import export_group
from tests.test_export_compose import SCHEMA, Count, Shout

NOTEBOOK = '''
import sys

import numpy as np

from orchestra_nb import Doc, DocList, Executor, Flow, requests

GREETING = "hi"


def greet(text):
    return f"{GREETING} {text}"


class Polite(Executor):
    def __init__(self, punct: str = "!", **kwargs):
        self.punct = punct


class Greeter(Polite):
    @requests(on="/greet")
    def greet(self, docs: DocList[Doc], parameters):
        for d in docs:
            d.text = greet(d.text) + self.punct
            d.embedding = np.ones(2)


def shout(self, docs, parameters):
    for d in docs:
        d.text = d.text.upper()


# built dynamically: no source to read, so the export falls back to cloudpickle
Dynamic = type("Dynamic", (Executor,), {"shout": requests(on="/shout")(shout)})

if __name__ == "__main__":
    flow = (Flow(name="nb").add(uses=Greeter, name="greeter", uses_with={"punct": "?"})
            .add(uses=Dynamic, name="dynamic"))
    flow.to_docker_compose_yaml(sys.argv[1])
'''

FRESH = '''
import importlib.util, json, pathlib, sys
from orchestra_nb import Doc, Executor, Flow

build = pathlib.Path(sys.argv[1])
found = {}
for path in sorted((build / "executors").glob("*.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("Greeter", "Dynamic"):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, Executor):
            found[name] = path.name
with Flow.load_config(str(build / "flow.yml")) as flow:
    greeted = flow.post("/greet", [Doc(text="bob")])
    shouted = flow.post("/shout", [Doc(text="bob")])
print(json.dumps({"found": found, "greet": greeted.texts, "embedding": greeted[0].embedding.tolist(),
                  "shout": shouted.texts}))
'''


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=90,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_notebook_defined_executor_exports_a_module_a_fresh_process_imports(tmp_path: Path) -> None:
    (tmp_path / "notebook.py").write_text(NOTEBOOK)
    _run(["notebook.py", str(tmp_path / "out" / "docker-compose.yml")], tmp_path)
    build = tmp_path / "out" / "nb-build"
    flow_yml = yaml.safe_load((build / "flow.yml").read_text())
    assert [e["uses"] for e in flow_yml["executors"]] == ["Greeter", "Dynamic"]
    greeter_module = (build / flow_yml["executors"][0]["py_modules"][0]).read_text()
    assert "class Polite(Executor):" in greeter_module and "def greet(text):" in greeter_module
    assert "GREETING = 'hi'" in greeter_module and "import numpy as np" in greeter_module
    assert "cloudpickle" in (build / flow_yml["executors"][1]["py_modules"][0]).read_text()

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "check.py").write_text(FRESH)
    result = json.loads(_run(["check.py", str(build)], fresh).strip().splitlines()[-1])
    assert set(result["found"]) == {"Greeter", "Dynamic"}
    assert result["greet"] == ["hi bob?"]
    assert result["embedding"] == [1.0, 1.0]
    assert result["shout"] == ["BOB"]


def test_exports_need_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"an export used the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    flow = Flow(name="offline").add(uses=Shout, name="s", replicas=2).add(uses=Count, name="c", shards=2)
    flow.to_docker_compose_yaml(str(tmp_path / "compose" / "docker-compose.yml"))
    flow.to_kubernetes_yaml(str(tmp_path / "k8s"))
    assert (tmp_path / "compose" / "offline-build" / "Dockerfile.s").exists()
    assert (tmp_path / "offline-build" / "flow.yml").exists()


ENCODERS = '''
from orchestra_nb import Executor, requests


class Enc(Executor):
    @requests
    def enc(self, docs, parameters):
        for d in docs:
            d.text = "enc:" + d.text
'''

FLOW_YML = '''
jtype: Flow
with:
  name: cli-flow
  protocol: [grpc, http]
executors:
  - name: enc
    uses: Enc
    py_modules: [encoders.py]
    replicas: 2
'''


def test_cli_exports_a_flow_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "project"
    src.mkdir()
    (src / "encoders.py").write_text(ENCODERS)
    (src / "flow.yml").write_text(FLOW_YML)
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)  # py_modules are relative to the YAML, not the working directory
    runner = CliRunner()
    result = runner.invoke(export_group, ["docker-compose", str(src / "flow.yml"), "compose/docker-compose.yml"])
    assert result.exit_code == 0, result.output
    document = yaml.safe_load((work / "compose" / "docker-compose.yml").read_text())
    import jsonschema

    jsonschema.Draft7Validator(SCHEMA).validate(document)
    assert set(document["services"]) == {"enc-rep0", "enc-rep1", "gateway"}
    assert (work / "compose" / "cli-flow-build" / "executors" / "encoders.py").read_text() == ENCODERS

    result = runner.invoke(export_group, ["kubernetes", str(src / "flow.yml"), "k8s", "--k8s-namespace", "prod",
                                          "--image-prefix", "registry.example.com/team/"])
    assert result.exit_code == 0, result.output
    enc = [o for o in yaml.safe_load_all((work / "k8s" / "enc.yml").read_text()) if o]
    deployment = next(o for o in enc if o["kind"] == "Deployment")
    assert deployment["metadata"]["namespace"] == "prod"
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("registry.example.com/team/cli-flow-enc:")
    assert "docker push" in (work / "cli-flow-build" / "build.sh").read_text()
    assert "(cd cli-flow-build && sh build.sh), then: kubectl apply -f k8s" in result.output


def test_cli_reports_a_missing_py_module_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "flow.yml").write_text(FLOW_YML)
    result = CliRunner().invoke(export_group, ["kubernetes", str(tmp_path / "flow.yml"), str(tmp_path / "k8s")])
    assert result.exit_code != 0
    assert "encoders.py" in result.output
    assert "Traceback" not in result.output


def test_source_of_a_class_keeps_what_it_uses() -> None:
    from orchestra_nb.export._source import class_module_source

    source = class_module_source(Shout)
    namespace: dict[str, Any] = {}
    exec(compile(source, "<shout>", "exec"), namespace)
    assert namespace["exclaim"]("a") == "A!"
    assert namespace["SUFFIX"] == "!"
    assert textwrap.dedent('''
        @requests(on="/shout")''').strip() in source


def test_magic_exports_a_cell_defined_flow_to_compose_and_kubernetes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`%%orchestra f --export compose PATH` and `%orchestra export f k8s DIR` from a notebook, with an
    executor class defined in a cell: both outputs validate and carry the class's source."""
    pytest.importorskip("IPython")
    import types

    import jsonschema
    import kubernetes_validate

    from orchestra_nb.notebook.magics import OrchestraMagics
    from tests.test_yaml import _notebook_class

    magics = OrchestraMagics(types.SimpleNamespace(user_ns={"NotebookUpper": _notebook_class()}))
    body = "jtype: Flow\nwith: {name: cell-export}\nexecutors:\n  - name: up\n    uses: NotebookUpper\n"
    compose_file = tmp_path / "compose" / "docker-compose.yml"
    magics.cell(f"f --no-panel --export compose {compose_file}", body)
    flow = magics.shell.user_ns["f"]
    try:
        magics.line(f"export f k8s {tmp_path / 'k8s'}")
    finally:
        flow.close()
    assert f"wrote {tmp_path / 'k8s'}" in capsys.readouterr().out
    document = yaml.safe_load(compose_file.read_text())
    jsonschema.Draft7Validator(SCHEMA).validate(document)
    assert set(document["services"]) == {"up", "gateway"}
    for build in (tmp_path / "compose" / "cell-export-build", tmp_path / "cell-export-build"):
        modules = [p.read_text() for p in (build / "executors").glob("*.py")]
        assert len(modules) == 1 and "class NotebookUpper(Executor):" in modules[0], build
        namespace: dict[str, Any] = {}
        exec(compile(modules[0], str(build), "exec"), namespace)  # what it reaches: shout, SUFFIX, np, requests
        assert namespace["shout"]("a") == "A-nb" and namespace["NotebookUpper"].requests_table == {"/run": "run"}
    objects = [o for p in sorted((tmp_path / "k8s").glob("*.yml")) for o in yaml.safe_load_all(p.read_text()) if o]
    for obj in objects:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} >= {("Deployment", "up"), ("Deployment", "gateway")}
