"""The documentation: every code block on a page comes from a file that runs here, and the site builds.

Pages include code with pymdownx.snippets (`--8<-- "docs/snippets/x.py"`); a fenced block with any other
content fails `test_every_code_block_is_included`. Each snippet then runs as a user would run it: a
fresh `python` (or `bash`, or an IPython shell for the magics) in a temporary folder holding the example
files of docs/examples, against the real runtime, and what it prints is checked against what the page
claims. `mkdocs build --strict` runs when mkdocs is installed (the `dev` extra).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestra_nb.runtime.ports import free_port
from tests.helpers import poll_for

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"
EXAMPLES = DOCS / "examples"
BIN = Path(sys.executable).parent
INCLUDE = re.compile(r'^\s*--8<--\s+"([^"]+)"\s*$')
FENCE = re.compile(r"^(\s*)(```+)(.*)$")

# what each snippet prints, as its comments on the page say
EXPECTED: dict[str, list[str]] = {
    "add_executors.py": ["[2. 2. 2.]", "{'lang': 'de'}"],
    "client.py": ["{'words': 3} {'counter': {'seen': 1}}", "5 {'counter': [{'seen': 2}, {'seen': 2}, {'seen': 1}]}",
                  "200 {'words': 3}"],
    "convert_yaml.py": ["['cba']"],
    "deployment.py": ["['HELLO']", "['OVER HTTP']"],
    "deployment_shards.py": ["[0, 1]"],
    "exceptions.py": ["picky /run ValueError", "I only take requests without 'fail'", "['x']"],
    "exit_on_exceptions.py": ["MemoryError\n", "\n1\n"],
    "flow_dag.py": ["['clean', 'left', 'right']"],
    "gpus.py": ["0 cpu", "1 cpu"],
    "hot_reload_class.py": ["['hello ada']", "['good morning ada']"],
    "hot_reload_watch.py": ["['HI']", "['HI!']"],
    "logging_config.py": ['[\'{"asctime"'],
    "metrics.py": ['orchestra_gateway_requests_total{endpoint="/index",executor="encoder"} 1.0'],
    "multiprocessing_main.py": ["True"],
    "readiness.py": ["True\nTrue\n200\n200\nSERVING\nFalse"],
    "readiness_background.py": ["True ['ready']"],
    "scale.py": ["3\n1\n['still served']"],
    "start_stop.py": ["['hello']", "{'grpc': "],
    "tunnel.py": ["https://hub.example.org/user/ada/proxy/", "Authorization: Bearer ", "401\n200\n",
                  "['no token needed again']"],
    "notebook_panel.py": ["3\n", " INFO    encoder/", ": serving encoder on "],
    "notebook_magics.ipy": ["['FROM A CELL']", "wrote my-flow.yml", "stopped Flow 'f'"],
}
# files each snippet leaves behind, as the page says it does
CREATES: dict[str, list[str]] = {
    "convert_yaml.py": ["copy.yml", "rev.yml", "rev_executors.py"],
    "export.py": ["docker-compose.yml", "deployment-compose.yml", "k8s"],
    "export_cli.sh": ["docker-compose.yml", "k8s", "orchestra.schema.json"],
    "notebook_magics.ipy": ["my-flow.yml"],
}
# the environment a snippet is documented for, provided at the outermost boundary
ENV: dict[str, dict[str, str]] = {
    "tunnel.py": {"JUPYTERHUB_SERVICE_PREFIX": "/user/ada/",
                  "JUPYTERHUB_PUBLIC_URL": "https://hub.example.org/user/ada/"},
}
RUN_IPY = """
import sys
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
for cell in open(sys.argv[1]).read().split("# %%")[1:]:
    body = cell.split("\\n", 1)[1].strip() + "\\n"
    if not shell.run_cell(body, store_history=True).success:
        sys.exit(1)
"""


def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _code_blocks(page: Path) -> list[list[str]]:
    """The lines inside each fenced code block of a page."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    fence = ""
    for line in page.read_text().splitlines():
        match = FENCE.match(line)
        if current is None and match:
            current, fence = [], match.group(2)
        elif current is not None and match and match.group(2) == fence and not match.group(3).strip():
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, f"{page.name}: a code block is not closed"
    return blocks


def _included() -> set[str]:
    return {m.group(1) for page in _pages() for block in _code_blocks(page) for line in block
            if (m := INCLUDE.match(line))}


def _snippets() -> list[str]:
    return sorted(p.name for p in SNIPPETS.iterdir() if p.is_file() and not p.name.startswith("_")
                  and p.suffix in (".py", ".sh", ".ipy"))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder holding the example files, as a user's project folder would."""
    for path in EXAMPLES.iterdir():
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("JUPYTERHUB_SERVICE_PREFIX", None)
    env.update(extra)
    return env


# ---- the pages only show tested code ---------------------------------------------------------------
def test_every_code_block_is_included() -> None:
    for page in _pages():
        for block in _code_blocks(page):
            content = [line for line in block if line.strip()]
            assert content and all(INCLUDE.match(line) for line in content), (
                f"{page.name}: a code block that is not included from a tested file:\n" + "\n".join(block))


def test_every_snippet_is_on_a_page_and_every_include_exists() -> None:
    included = _included()
    for name in _snippets():
        assert f"docs/snippets/{name}" in included, f"docs/snippets/{name} is on no page"
    for path in included:
        assert (ROOT / path).is_file(), f"a page includes {path}, which does not exist"
        assert path.startswith(("docs/snippets/", "docs/examples/")), f"{path}: include only tested files"
    assert set(EXPECTED) | set(CREATES) <= set(_snippets())


def test_example_yaml_files_load(workdir: Path) -> None:
    from orchestra_nb import Deployment, Flow, load_config

    for path in sorted(workdir.glob("*.yml")):
        if path.name.startswith("logging"):
            continue
        obj = load_config(str(path))
        assert isinstance(obj, (Flow, Deployment)), path.name
        assert f"docs/examples/{path.name}" in _included(), f"{path.name} is shown on no page"


# ---- the snippets run ------------------------------------------------------------------------------
def _run(name: str, cwd: Path, **env: str) -> str:
    shutil.copy(SNIPPETS / name, cwd / name)
    if name.endswith(".sh"):
        cmd = ["bash", "-e", name]
    elif name.endswith(".ipy"):
        cmd = [sys.executable, "-c", RUN_IPY, name]
    else:
        cmd = [sys.executable, name]
    out = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=100)
    output = out.stdout + out.stderr
    assert out.returncode == 0, f"{name} failed (exit {out.returncode}):\n{output}"
    assert "Traceback" not in output, output
    return out.stdout


RUNNABLE = [n for n in _snippets() if n not in ("serve_forever.py", "ping.sh")]


@pytest.mark.parametrize("name", RUNNABLE)
def test_snippet_runs(name: str, workdir: Path) -> None:
    stdout = _run(name, workdir, **ENV.get(name, {}))
    for expected in EXPECTED.get(name, []):
        assert expected in stdout, f"{name} should print {expected!r}; it printed:\n{stdout}"
    for created in CREATES.get(name, []):
        assert (workdir / created).exists(), f"{name} should create {created}"


def test_serve_forever_until_sigint(workdir: Path) -> None:
    shutil.copy(SNIPPETS / "serve_forever.py", workdir)
    proc = subprocess.Popen([sys.executable, "serve_forever.py"], cwd=workdir, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None

        def ready() -> str | None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            lines.append(line)
            assert line or proc.poll() is None, "".join(lines)
            return line if "gateway ready" in line else None

        line = poll_for(ready, timeout=60, what="the gateway to be ready")
        grpc_port = re.search(r"grpc on 127\.0\.0\.1:(\d+)", line)
        assert grpc_port, line
        ping = subprocess.run([str(BIN / "orchestra"), "ping", f"grpc://127.0.0.1:{grpc_port.group(1)}"],
                              capture_output=True, text=True, timeout=30)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ping_script(workdir: Path) -> None:
    stdout = _run("ping.sh", workdir, GRPC_PORT=str(free_port()), HTTP_PORT=str(free_port()))
    assert "healthy (HTTP 200)" in stdout


def test_cli_page_lists_every_command_and_option() -> None:
    """docs/cli.md keeps up with the `orchestra` command: each subcommand and each of its options."""
    import click

    from orchestra_nb.cli import cli

    page = (DOCS / "cli.md").read_text()
    missing = []

    def walk(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            if f"{prefix} {name}" not in page:
                missing.append(f"{prefix} {name}")
            if isinstance(command, click.Group):
                walk(command, f"{prefix} {name}")
                continue
            for param in command.params:
                for opt in getattr(param, "opts", []):
                    if opt.startswith("--") and opt != "--help" and f"`{opt}" not in page:
                        missing.append(f"{prefix} {name} {opt}")

    walk(cli, "orchestra")
    assert missing == [], f"docs/cli.md does not mention: {missing}"


# ---- the site builds --------------------------------------------------------------------------------
def test_schema_tables_list_every_key() -> None:
    sys.path.insert(0, str(SNIPPETS))
    try:
        from _hooks import on_page_markdown
    finally:
        sys.path.remove(str(SNIPPETS))
    from orchestra_nb.spec.schema import yaml_schema

    page = on_page_markdown((DOCS / "yaml-spec.md").read_text())
    assert "<!-- schema:" not in page
    defs = yaml_schema()["$defs"]
    sections = {"Flow.with": defs["Flow"]["properties"]["with"], "Executor": defs["Executor"],
                "Gateway": defs["Gateway"], "Deployment.with": defs["Deployment"]["properties"]["with"],
                "ExecutorYAML": defs["ExecutorYAML"]}
    for name, obj in sections.items():
        assert f"<!-- schema: {name} -->" in (DOCS / "yaml-spec.md").read_text()
        for key in obj["properties"]:
            assert f"| `{key}` |" in page, f"{name}: key {key!r} is missing from the YAML reference"
    with pytest.raises(ValueError, match="known definitions"):
        on_page_markdown("<!-- schema: Nope -->")


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[dev]'")
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e '.[dev]'")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed: pip install -e '.[dev]'")
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=ROOT, env=_env(NO_MKDOCS_2_WARNING="1"), capture_output=True, text=True,
                         timeout=110)
    assert out.returncode == 0, out.stdout + out.stderr
    spec = (site / "yaml-spec" / "index.html").read_text()
    assert "uses_with" in spec and "<table>" in spec
    assert "orchestra_nb.orchestration.flow.Flow" in (site / "api" / "index.html").read_text()
    assert (site / "img" / "notebook-panel.png").is_file()
