"""YAML load/save: docs examples validate, round-trip and serve; substitution; uses forms; saving
classes defined in `__main__` or a notebook cell so the YAML starts in fresh processes."""

from __future__ import annotations

import linecache
import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from orchestra_nb import Deployment, Doc, Flow, load_config
from orchestra_nb.spec.models import DeploymentSpec, ExecutorSpec, GatewaySpec
from orchestra_nb.spec.schema import yaml_schema

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


def _orchestration_yamls() -> list[Path]:
    """Every Flow/Deployment/Executor YAML under docs/ and notebooks/ (logging configs have no jtype)."""
    found = []
    for folder in (ROOT / "docs", ROOT / "notebooks"):
        for path in sorted([*folder.rglob("*.yml"), *folder.rglob("*.yaml")]) if folder.exists() else []:
            data = yaml.safe_load(path.read_text())
            if isinstance(data, dict) and "jtype" in data:
                found.append(path)
    return found


DOC_YAMLS = _orchestration_yamls()
IDS = [str(p.relative_to(ROOT)) for p in DOC_YAMLS]


def test_docs_have_examples() -> None:
    names = {p.name for p in DOC_YAMLS}
    assert {"flow.yml", "deployment.yml", "flow-json-logs.yml"} <= names


def test_schema_is_valid_and_rejects_typos() -> None:
    schema = yaml_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    bad = {"jtype": "Flow", "executors": [{"name": "a", "replica": 2}]}
    assert any("replica" in e.message for e in validator.iter_errors(bad))
    assert list(validator.iter_errors({"jtype": "Deployment", "with": {"replicas": "${{ ENV.N }}"}})) == []
    assert list(validator.iter_errors({"jtype": "Deployment", "with": {"replicas": "two"}}))


@pytest.mark.parametrize("path", DOC_YAMLS, ids=IDS)
def test_docs_yaml_validates_against_schema(path: Path) -> None:
    validator = jsonschema.Draft202012Validator(yaml_schema())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def _cell_yamls() -> list[tuple[str, str]]:
    """YAML bodies of `%%orchestra` cells in notebooks/*.ipynb and docs/snippets/*.ipy."""
    import json

    found = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and source.startswith("%%orchestra"):
                found.append((f"{nb.name}[{i}]", source.split("\n", 1)[1]))
    for ipy in sorted((ROOT / "docs" / "snippets").glob("*.ipy")):
        for i, cell in enumerate(ipy.read_text().split("# %%")[1:]):
            body = cell.split("\n", 1)[1].lstrip("\n")
            if body.startswith("%%orchestra"):
                found.append((f"{ipy.name}[{i}]", body.split("\n", 1)[1]))
    return found


CELL_YAMLS = _cell_yamls()


def test_cell_yamls_exist_and_validate_against_schema() -> None:
    assert {name.split("[")[0] for name, _ in CELL_YAMLS} >= {"magic.ipynb", "notebook_magics.ipy"}
    validator = jsonschema.Draft202012Validator(yaml_schema())
    for name, text in CELL_YAMLS:
        data = yaml.safe_load(text)
        assert isinstance(data, dict) and "jtype" in data, name
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
        assert errors == [], name


@pytest.mark.parametrize("path", DOC_YAMLS, ids=IDS)
def test_docs_yaml_round_trips_to_an_equal_spec(path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(path.parent, copy)
    first = load_config(str(copy / path.name))
    first.save_config(str(copy / "saved.yml"))
    second = load_config(str(copy / "saved.yml"))
    assert second.spec == first.spec
    assert type(second) is type(first)


@pytest.mark.parametrize("path", DOC_YAMLS, ids=IDS)
def test_docs_yaml_serves_requests(path: Path) -> None:
    with load_config(str(path)) as orch:
        docs = orch.post("/run", [Doc(text="hi")])
    assert len(docs) == 1
    if path.parent == EXAMPLES and path.name in ("flow.yml", "deployment.yml", "flow-json-logs.yml"):
        assert docs[0].text in {"HI !!", "HI"}


def test_example_flow_answers_as_written() -> None:
    with Flow.load_config(str(EXAMPLES / "flow.yml")) as flow:
        assert flow.post("/run", [Doc(text="hey")]).texts == ["HEY !!"]
        assert set(flow.ports) == {"grpc", "http"}


def test_load_config_returns_what_jtype_says() -> None:
    assert isinstance(load_config(str(EXAMPLES / "deployment.yml")), Deployment)
    assert isinstance(load_config(str(EXAMPLES / "flow.yml")), Flow)
    with pytest.raises(ValueError, match="describes a Deployment, not a Flow"):
        Flow.load_config(str(EXAMPLES / "deployment.yml"))


def test_yaml_text_and_chained_needs() -> None:
    flow = load_config("jtype: Flow\nexecutors:\n  - name: a\n  - name: b\n  - name: c\n    needs: [gateway]\n")
    needs = {e.name: e.needs for e in flow.flow_spec().executors}
    assert needs == {"a": ["gateway"], "b": ["a"], "c": ["gateway"]}


def test_env_and_context_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_TEST_NAME", "from-env")
    monkeypatch.delenv("ORCH_TEST_UNSET", raising=False)
    text = textwrap.dedent("""\
        jtype: Flow
        with:
          name: ${{ ENV.ORCH_TEST_NAME }}
        executors:
          - name: enc
            replicas: ${{ CONTEXT.replicas }}
            uses_with: {label: 'x-${{ CONTEXT.label }}-${{ ENV.ORCH_TEST_UNSET:-dflt }}', sizes: '${{ CONTEXT.sizes }}'}
        """)
    spec = load_config(text, context={"replicas": 3, "label": "L", "sizes": [1, 2]}).flow_spec()
    assert spec.name == "from-env"
    ex = spec.executors[0]
    assert ex.replicas == 3
    assert ex.uses_with == {"label": "x-L-dflt", "sizes": [1, 2]}


def test_executor_yaml_and_inline_mapping_uses_serve(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "executors.py", tmp_path / "executors.py")
    (tmp_path / "suffix.yml").write_text("jtype: Suffix\npy_modules: [executors.py]\nwith:\n  suffix: '?'\n")
    (tmp_path / "flow.yml").write_text(textwrap.dedent("""\
        jtype: Flow
        executors:
          - name: upper
            uses: {jtype: Upper, py_modules: [executors.py]}
          - name: suffix
            uses: suffix.yml
            uses_with: {suffix: '!'}
          - name: again
            uses: suffix.yml
        """))
    with load_config(str(tmp_path / "flow.yml")) as flow:
        assert flow.post("/run", [Doc(text="a")]).texts == ["A!?"]
    served = load_config(str(tmp_path / "suffix.yml"))
    assert isinstance(served, Deployment)
    assert served.spec.executor.uses == "suffix.yml"


def test_dotted_uses_serves() -> None:
    text = "jtype: Deployment\nwith:\n  uses: tests.executors.Upper\n  protocol: http\n"
    with load_config(text) as dep:
        assert dep.spec.executor.uses == "tests.executors.Upper"
        assert dep.post("/upper", [Doc(text="q")]).texts == ["Q"]


def test_deployment_sections_round_trip(tmp_path: Path) -> None:
    spec = DeploymentSpec(
        name="dep", log_config=str(EXAMPLES / "logging.json.yml"),
        executor=ExecutorSpec(name="inner", uses="Executor", replicas=2, host="0.0.0.0", env={"A": "1"},
                              timeout_ready=30, uses_with={"k": [1, 2]}),
        gateway=GatewaySpec(protocol=["http", "grpc"], port=[1234, 1235], env={"G": "2"}, cors=True,
                            timeout_ready=45))
    Deployment.from_spec(spec).save_config(str(tmp_path / "dep.yml"))
    assert load_config(str(tmp_path / "dep.yml")).spec == spec


def test_python_built_flow_round_trips(tmp_path: Path) -> None:
    flow = (Flow(name="big", protocol=["grpc", "http"], port=[4001, 4002], cors=True, prefetch=3,
                 env={"X": "1"}, log_config=str(EXAMPLES / "logging.json.yml"))
            .add(name="a", replicas=2, shards=2, polling={"/x": "ALL", "*": "ANY"}, uses_with={"n": 1})
            .add(name="b", needs="gateway", when={"tags__k": {"$eq": 1}}, uses_requests={"/y": "close"})
            .needs(["a", "b"], name="join")
            .add(name="float", needs="gateway", floating=True, uses_metas={"m": 1}))
    flow.save_config(str(tmp_path / "f.yml"))
    loaded = load_config(str(tmp_path / "f.yml"))
    assert loaded.spec == flow.spec
    text = (tmp_path / "f.yml").read_text()
    assert "needs:" in text and text.count("needs:") == 3  # b, join and float; a follows the chain


NOTEBOOK_CELL = '''\
import numpy as np
from orchestra_nb import Executor, requests

SUFFIX = "-nb"

def shout(text):
    return text.upper() + SUFFIX

class NotebookUpper(Executor):
    @requests(on="/run")
    def run(self, docs, parameters):
        for d in docs:
            d.text = shout(d.text)
            d.tags["n"] = int(np.int64(len(d.text)))
'''


def _notebook_class() -> Any:
    """Define a class the way ipykernel runs a cell: code from a file name that only linecache knows."""
    filename = "/tmp/ipykernel_4242/1234567.py"
    linecache.cache[filename] = (len(NOTEBOOK_CELL), None, NOTEBOOK_CELL.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(NOTEBOOK_CELL, filename, "exec"), namespace)
    return namespace["NotebookUpper"]


@pytest.mark.kernel
def test_class_from_a_real_notebook_cell_saves_and_serves(tmp_path: Path) -> None:
    jupyter_client = pytest.importorskip("jupyter_client")
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": str(ROOT)})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        errors: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "error":
                errors.append("\n".join(msg["content"]["traceback"]))

        for cell in (NOTEBOOK_CELL,
                     f"from orchestra_nb import Flow\nFlow(name='cell').add(uses=NotebookUpper, name='up')"
                     f".save_config({str(tmp_path / 'cell.yml')!r})\n"):
            reply = kc.execute_interactive(cell, timeout=60, output_hook=hook)
            assert reply["content"]["status"] == "ok", "\n".join(errors)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert "class NotebookUpper(Executor):" in (tmp_path / "cell_executors.py").read_text()
    with load_config(str(tmp_path / "cell.yml")) as flow:
        assert flow.post("/run", [Doc(text="ok")]).texts == ["OK-nb"]
