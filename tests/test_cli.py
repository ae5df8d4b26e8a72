"""The `orchestra` command as users and containers run it: real subprocesses, real signals.

`OrchestraProcess` starts the command, reads its stdout and stderr in threads (so a full pipe never
blocks it), always terminates it, and prints its output when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from orchestra_nb import Client, Doc, __version__
from orchestra_nb.cli import cli
from orchestra_nb.runtime.ports import free_port
from tests.helpers import children_of, pid_alive, poll_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


class OrchestraProcess:
    """`python -m orchestra_nb.cli ARGS` with its output collected line by line."""

    def __init__(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestra_nb.cli", *args], cwd=cwd or ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200",
                                          **(env or {})})
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.descendants: set[int] = set()
        self._threads = [threading.Thread(target=self._read, args=(s, out), daemon=True)
                         for s, out in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream: object, out: list[str]) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            out.append(raw.decode(errors="replace").rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.stdout)

    def wait_ready(self, timeout: float = 60) -> dict[str, int]:
        """Wait for the start-up summary; return {protocol: port} read from it."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"orchestra exited with {self.proc.returncode}:\n{self.output()}")
            return "ready to serve" in self.text()

        poll_for(ready, timeout=timeout, what="the start-up summary")
        poll_for(lambda: re.search(r"│\s*$", self.text(), re.M) and "╰" in self.text(), timeout=5,
                 what="the whole summary panel")
        self.remember_descendants()
        return {p.lower(): int(n) for p, n in re.findall(r"(GRPC|HTTP)\s+\w+://[\d.]+:(\d+)", self.text())}

    def remember_descendants(self) -> None:
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child in children_of(pid):
                self.descendants.add(child)
                todo.append(child)

    def output(self) -> str:
        return f"--- stdout ---\n{self.text()}\n--- stderr ---\n" + "\n".join(self.stderr)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.descendants:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        for t in self._threads:
            t.join(5)


@pytest.fixture
def orchestra() -> Iterator[list[OrchestraProcess]]:
    """The commands a test starts; all are killed after it, and their output printed (pytest shows
    captured output only for a failing test)."""
    started: list[OrchestraProcess] = []
    yield started
    for proc in started:
        proc.close()
        print(proc.output())


def _start(started: list[OrchestraProcess], *args: str, **kwargs: object) -> OrchestraProcess:
    proc = OrchestraProcess(*args, **kwargs)  # type: ignore[arg-type]
    started.append(proc)
    return proc


def _ping(address: str) -> int:
    return subprocess.run([sys.executable, "-m", "orchestra_nb.cli", "ping", "--timeout", "2", address],
                          capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode


SMALL_FLOW = textwrap.dedent("""\
    jtype: Flow
    with:
      name: cli-small
      protocol: [grpc, http]
    executors:
      - name: upper
        uses: Upper
        py_modules: [executors.py]
    """)


@pytest.fixture
def small_flow(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLES / "executors.py", tmp_path / "executors.py")
    path = tmp_path / "flow.yml"
    path.write_text(SMALL_FLOW)
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_flow_serves_grpc_and_http_and_stops_on_signal(sig: int, small_flow: Path,
                                                       orchestra: list[OrchestraProcess]) -> None:
    proc = _start(orchestra, "flow", "--uses", str(small_flow))
    ports = proc.wait_ready()
    assert set(ports) == {"grpc", "http"}
    assert "OpenAPI docs" in proc.text()
    with Client(port=ports["grpc"], protocol="grpc") as client:
        assert client.post("/run", [Doc(text="a")]).texts == ["A"]
    reply = httpx.post(f"http://127.0.0.1:{ports['http']}/post", json={"on": "/run", "docs": [{"text": "b"}]})
    assert reply.json()["docs"][0]["text"] == "B"
    assert _ping(f"grpc://127.0.0.1:{ports['grpc']}") == 0
    assert _ping(f"http://127.0.0.1:{ports['http']}") == 0
    assert len(proc.descendants) >= 2  # a replica and the gateway
    started = time.monotonic()
    assert proc.stop(sig) == 0, proc.output()
    assert time.monotonic() - started < 5
    assert [p for p in proc.descendants if pid_alive(p)] == []
    assert _ping(f"grpc://127.0.0.1:{ports['grpc']}") == 1
    assert _ping(f"http://127.0.0.1:{ports['http']}") == 1


def test_deployment_command_serves_the_example(orchestra: list[OrchestraProcess]) -> None:
    proc = _start(orchestra, "deployment", "--uses", str(EXAMPLES / "deployment.yml"), "--protocol", "http")
    ports = proc.wait_ready()
    assert list(ports) == ["http"]
    reply = httpx.post(f"http://127.0.0.1:{ports['http']}/post", json={"on": "/run", "docs": [{"text": "d"}]})
    assert reply.json()["docs"][0]["text"] == "D"
    assert proc.stop(signal.SIGINT) == 0


def test_executor_and_gateway_commands_run_a_flow_as_containers_would(orchestra: list[OrchestraProcess]) -> None:
    flow = str(EXAMPLES / "flow.yml")
    up0, up1, suffix, grpc_port, http_port = (free_port() for _ in range(5))
    workers = [
        _start(orchestra, "executor", "--uses", flow, "--name", "upper", "--port", str(up0)),
        _start(orchestra, "executor", "--uses", flow, "--name", "upper", "--port", str(up1), "--replica-id", "1"),
        _start(orchestra, "executor", "--uses", flow, "--name", "suffix", "--port", str(suffix)),
    ]
    gateway = _start(orchestra, "gateway", "--uses", flow, "--protocol", "grpc", "--protocol", "http",
                     "--port", str(grpc_port), "--port", str(http_port),
                     "--executor-address", f"upper=127.0.0.1:{up0}", "--executor-address", f"upper=127.0.0.1:{up1}",
                     "--executor-address", f"suffix=127.0.0.1:{suffix}")
    for port in (up0, up1, suffix):
        poll_for(lambda p=port: _ping(f"127.0.0.1:{p}") == 0, timeout=60, what=f"executor on {port}")
    poll_for(lambda: _ping(f"http://127.0.0.1:{http_port}") == 0, timeout=60, what="the gateway")
    with Client(port=grpc_port, protocol="grpc") as client:
        assert client.post("/run", [Doc(text="x")]).texts == ["X !!"]
    assert gateway.stop(signal.SIGINT) == 0, gateway.output()
    assert [w.stop(signal.SIGTERM) for w in workers] == [0, 0, 0]


def test_saved_main_script_flow_starts_in_a_fresh_process(tmp_path: Path, orchestra: list[OrchestraProcess]) -> None:
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent("""\
        import json, sys
        from orchestra_nb import Doc, Executor, Flow, requests

        class Reverse(Executor):
            @requests(on="/run")
            def run(self, docs, parameters):
                for d in docs:
                    d.text = d.text[::-1]

        if __name__ == "__main__":
            f = Flow(name="script", protocol=["grpc", "http"]).add(uses=Reverse, name="rev", replicas=2)
            with f:
                print(json.dumps(f.post("/run", [Doc(text="abc"), Doc(text="xy")]).texts))
            f.save_config(sys.argv[1])
        """))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "out" / "flow.yml")], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=90)
    assert out.returncode == 0, out.stderr
    expected = json.loads(out.stdout.strip().splitlines()[-1])
    assert (tmp_path / "out" / "flow_executors.py").exists()
    proc = _start(orchestra, "flow", "--uses", str(tmp_path / "out" / "flow.yml"), cwd=ROOT)
    ports = proc.wait_ready()
    with Client(port=ports["grpc"], protocol="grpc") as client:
        assert client.post("/run", [Doc(text="abc"), Doc(text="xy")]).texts == expected == ["cba", "yx"]
    assert proc.stop(signal.SIGTERM) == 0


def test_notebook_class_saved_then_served_by_the_cli_in_a_fresh_process(
        tmp_path: Path, orchestra: list[OrchestraProcess]) -> None:
    """Issue 4's acceptance: a Python-built Flow whose executor was defined in a notebook cell, saved with
    save_config, starts with `orchestra flow --uses` in a fresh process and gives the same answers."""
    from orchestra_nb import Flow
    from orchestra_nb.spec.models import FlowSpec
    from orchestra_nb.spec.yaml import parse_config
    from tests.test_yaml import _notebook_class

    flow = Flow(name="nb", protocol=["grpc", "http"]).add(uses=_notebook_class(), name="up")
    with flow:
        expected = flow.post("/run", [Doc(text="hi"), Doc(text="there")])
    flow.save_config(str(tmp_path / "nb.yml"))
    module = (tmp_path / "nb_executors.py").read_text()
    assert "class NotebookUpper(Executor):" in module
    assert "def shout(text):" in module and "SUFFIX = '-nb'" in module
    assert "import numpy as np" in module and "from orchestra_nb.executor import Executor" in module
    data = yaml.safe_load((tmp_path / "nb.yml").read_text())
    assert data["executors"][0] == {"name": "up", "uses": "NotebookUpper", "py_modules": ["nb_executors.py"]}
    assert isinstance(parse_config(str(tmp_path / "nb.yml"))[0], FlowSpec)
    proc = _start(orchestra, "flow", "--uses", str(tmp_path / "nb.yml"), cwd=ROOT)
    ports = proc.wait_ready()
    for protocol in ("grpc", "http"):
        with Client(port=ports[protocol], protocol=protocol) as client:
            got = client.post("/run", [Doc(text="hi"), Doc(text="there")])
        assert got.texts == expected.texts == ["HI-nb", "THERE-nb"], protocol
        assert [d.tags for d in got] == [d.tags for d in expected] == [{"n": 5}, {"n": 8}], protocol
    assert proc.stop(signal.SIGTERM) == 0, proc.output()


def test_bad_yaml_exits_1_with_one_line(small_flow: Path) -> None:
    small_flow.write_text(SMALL_FLOW.replace("uses: Upper", "uses: Uper"))
    result = subprocess.run([sys.executable, "-m", "orchestra_nb.cli", "flow", "--uses", str(small_flow)],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {small_flow}:7:11: executors[0].uses: no class 'Uper'")
    assert "did you mean 'Upper'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_ping_and_wrong_kind() -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.strip() == f"orchestra, version {__version__}"
    port = free_port()
    result = runner.invoke(cli, ["ping", "--timeout", "0.5", f"127.0.0.1:{port}"])
    assert result.exit_code == 1 and "unhealthy" in result.output
    assert runner.invoke(cli, ["ping", f"ftp://127.0.0.1:{port}"]).exit_code == 1
    for no_port in ("localhost", "grpc://127.0.0.1", "127.0.0.1:grpc"):
        result = runner.invoke(cli, ["ping", no_port])
        assert result.exit_code == 1 and "is not HOST:PORT with a numeric port" in result.output, no_port
    ports = runner.invoke(cli, ["flow", "--uses", str(EXAMPLES / "flow.yml"), "--port", "1", "--port", "2",
                                "--port", "3"])
    assert ports.exit_code == 1 and "3 port(s) for 2 protocol(s)" in ports.output
    assert "Value error" not in ports.output and "pydantic" not in ports.output
    too_big = runner.invoke(cli, ["flow", "--uses", str(EXAMPLES / "flow.yml"), "--port", "99999", "--port", "1"])
    assert too_big.exit_code == 2 and "99999 is not in the range 0<=x<=65535" in too_big.output
    wrong = runner.invoke(cli, ["flow", "--uses", str(EXAMPLES / "deployment.yml")])
    assert wrong.exit_code == 1 and "orchestra deployment --uses" in wrong.output
    bad_context = runner.invoke(cli, ["flow", "--uses", str(EXAMPLES / "flow.yml"), "--context", "novalue"])
    assert bad_context.exit_code == 2 and "is not KEY=VALUE" in bad_context.output
    missing = runner.invoke(cli, ["executor", "--uses", str(EXAMPLES / "flow.yml"), "--name", "nope"])
    assert missing.exit_code == 1 and "['upper', 'suffix']" in missing.output
    no_addr = runner.invoke(cli, ["gateway", "--uses", str(EXAMPLES / "flow.yml"), "--executor-address",
                                  "upper=127.0.0.1:1"])
    assert no_addr.exit_code == 1 and "no --executor-address for ['suffix']" in no_addr.output


def test_export_schema(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["$defs"]["Executor"]["properties"]["replicas"]
    out = tmp_path / "schema.json"
    assert runner.invoke(cli, ["export", "schema", "-o", str(out)]).exit_code == 0
    assert json.loads(out.read_text()) == schema


def test_start_up_summary_lists_every_address() -> None:
    from rich.console import Console

    from orchestra_nb import Flow
    from orchestra_nb.summary import addresses, private_ip, render_summary, summary_line

    with Flow(name="summary", protocol=["grpc", "http"], host="0.0.0.0", metrics=True).add(name="e") as flow:
        console = Console(record=True, width=200)
        console.print(render_summary(flow))
        text = console.export_text()
        rows = addresses(flow)
        line = summary_line(flow)
        grpc_port, http_port = flow.ports["grpc"], flow.ports["http"]
    assert f"grpc://127.0.0.1:{grpc_port}" in text and f"http://127.0.0.1:{http_port}" in text
    assert f"http://127.0.0.1:{http_port}/docs" in text and f"http://127.0.0.1:{http_port}/metrics" in text
    assert "Flow 'summary' is ready to serve" in text
    ip = private_ip()
    assert [r["private"] for r in rows] == ([f"grpc://{ip}:{grpc_port}", f"http://{ip}:{http_port}"] if ip else [None, None])
    assert [r["public"] for r in rows] == [None, None]
    assert line.startswith("Flow 'summary' is ready to serve: grpc grpc://127.0.0.1:") and "\n" not in line
    assert f"OpenAPI docs http://127.0.0.1:{http_port}/docs" in line
    assert f"metrics http://127.0.0.1:{http_port}/metrics" in line
