"""The malformed-YAML corpus: every file gives a ConfigError with file:line:col and its hint.

Each case states what it expects on its first line (see tests/yaml_cases/README.md). The same files
through the CLI must give one `Error:` line and exit status 1, never a traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestra_nb.cli import cli
from orchestra_nb.errors import ConfigError, TopologyError
from orchestra_nb.spec.yaml import load_config

CASES = Path(__file__).parent / "yaml_cases"
FILES = sorted(CASES.glob("*.yml"))


def _expectation(path: Path) -> tuple[Path, str, list[str]]:
    lines = path.read_text().splitlines()
    where = path
    expect = ""
    for line in lines[:3]:
        if line.startswith("# expect-file:"):
            where = (path.parent / line.split(":", 1)[1].strip()).resolve()
        elif line.startswith("# expect:"):
            expect = line.split(":", 1)[1]
    assert expect, f"{path} has no '# expect:' line"
    location, *hints = (part.strip() for part in expect.split("|"))
    return where, location, hints


def test_corpus_is_big_enough() -> None:
    assert len(FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_malformed_yaml_gives_located_error_with_hint(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHESTRA_TEST_SURELY_UNSET", raising=False)
    where, location, hints = _expectation(path)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    prefix = f"{where}:{location}:" if where != path else f"{path}:{location}:"
    assert message.startswith(prefix), f"expected {prefix!r} at the start of:\n{message}"
    for hint in hints:
        assert hint in message, f"expected {hint!r} in:\n{message}"
    for leak in ("pydantic", "Traceback", "yaml.scanner", "For further information"):
        assert leak not in message


@pytest.mark.parametrize("name", ["cycle", "unknown_needs", "duplicate_names"])
def test_graph_errors_are_topology_errors(name: str) -> None:
    with pytest.raises(TopologyError):
        load_config(str(CASES / f"{name}.yml"))


def test_cli_reports_each_case_in_one_line_without_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHESTRA_TEST_SURELY_UNSET", raising=False)
    runner = CliRunner()
    for path in FILES:
        result = runner.invoke(cli, ["flow", "--uses", str(path)])
        assert result.exit_code == 1, (path, result.output)
        assert result.output.startswith("Error: "), (path, result.output)
        assert "Traceback" not in result.output
        assert re.search(r"\.yml:\d+:\d+: ", result.output), (path, result.output)


def test_yaml_string_errors_name_the_string() -> None:
    with pytest.raises(ConfigError, match=r"^<string>:3:5: executors\[0\]\.replica: .*did you mean 'replicas'"):
        load_config("jtype: Flow\nexecutors:\n  - replica: 2\n")


def test_missing_file_names_resolved_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        load_config(os.path.relpath(missing))


def test_context_value_fixes_context_case() -> None:
    flow = load_config(str(CASES / "context_missing.yml"), context={"replicas": 3})
    assert flow.flow_spec().executors[0].replicas == 3


def test_a_misspelt_path_a_folder_or_a_bare_word_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "flow.yml").write_text("jtype: Flow\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"YAML file 'flw.yml' not found .*did you mean 'flow.yml'\?"):
        load_config("flw.yml")
    with pytest.raises(ConfigError, match=r"'\./' is a folder; give a Flow or Deployment YAML file"):
        load_config("./")
    with pytest.raises(ConfigError, match=r"'flow' is neither a YAML file that exists .* nor YAML text"):
        load_config("flow")
    assert load_config("jtype: Flow").flow_spec().executors == []  # one line of YAML text still is YAML


def test_uses_with_is_left_to_the_replica_when_the_file_cannot_tell(tmp_path: Path) -> None:
    """No false alarms: constructors written by a decorator, reading **kwargs, or from another module."""
    (tmp_path / "execs.py").write_text(
        "from dataclasses import dataclass\n"
        "from orchestra_nb import Executor\n"
        "from elsewhere import Base\n\n"
        "@dataclass\nclass Data(Executor):\n    size: int = 1\n\n"
        "class Reads(Executor):\n    def __init__(self, **kwargs):\n        self.size = kwargs.get('size')\n\n"
        "class Foreign(Base):\n    pass\n\n"
        "class Child(Reads):\n    def __init__(self, extra=1, **kwargs):\n        super().__init__(**kwargs)\n")
    for cls in ("Data", "Reads", "Foreign", "Child"):
        text = f"jtype: Flow\nexecutors:\n  - uses: {cls}\n    py_modules: [execs.py]\n    uses_with: {{size: 2}}\n"
        (tmp_path / "f.yml").write_text(text)
        assert load_config(str(tmp_path / "f.yml")).flow_spec().executors[0].uses_with == {"size": 2}, cls
