"""Operations: self-healing, rolling reload and live scaling under load, exit_on_exceptions (issue 9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestra_nb import Doc, DocList, Executor, Flow, requests
from orchestra_nb.errors import ExecutorError
from orchestra_nb.runtime.supervisor import MAX_RESTARTS
from tests.executors import Failing, Tagger, Upper
from tests.helpers import pid_alive, poll_for

ROOT = Path(__file__).resolve().parent.parent

LOAD = """
import os, sys, time
from orchestra_nb import Client, Doc
client = Client(port=int(sys.argv[1]))
stop_file = sys.argv[3]
deadline = time.monotonic() + float(sys.argv[2])
ok = failed = 0
texts = []
# a steady stream, bounded in time and count, that runs until the test says stop (by a file)
while time.monotonic() < deadline and ok + failed < 50000 and not os.path.exists(stop_file):
    try:
        out = client.post('/upper', Doc(text='a'))
        ok += 1
        texts.append(out[0].text)
    except Exception as exc:
        failed += 1
        print('FAIL', repr(exc), file=sys.stderr, flush=True)
print(ok, failed, ''.join(sorted(set(texts))), flush=True)
client.close()
"""


class Load:
    """A second process posting to the Flow until `stop()`; always ended after the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.script = tmp_path / "load.py"
        self.script.write_text(textwrap.dedent(LOAD))
        self.stop_file = tmp_path / "stop"
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, port: int, seconds: float = 90.0) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, str(self.script), str(port), str(seconds), str(self.stop_file)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> tuple[int, int, str, str]:
        """(requests answered, requests failed, the distinct answers, stderr)."""
        self.stop_file.touch()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        ok, failed, texts = [*out.split(), ""][:3]
        return int(ok), int(failed), texts, err


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Load]:
    helper = Load(tmp_path)
    yield helper
    helper.stop_file.touch()
    for proc in helper.procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def served(f: Flow, name: str) -> list[int]:
    """Requests each replica of `name` has answered, from status()."""
    return [int(rep["stats"]["requests"]) for rep in f.status()["executors"][name]]


def gateway_retries(f: Flow) -> int:
    """How often the gateway had to retry a request on another replica (it logs each time)."""
    return sum("retrying on another" in line for line in f.logs("gateway", n=10_000))


def test_kill_reload_and_scale_under_load(load: Load) -> None:
    f = Flow().add(uses=Upper, name="up", replicas=2)
    with f:
        proc = load.start(f.port)
        poll_for(lambda: min(served(f, "up")) > 20, timeout=30, what="load on both replicas")

        # SIGKILL one replica: back within 5 s, the load sees no failure
        key, child = next(iter(f._supervisor.workers.items()))
        victim = child.pid
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        poll_for(lambda: child.state == "ready" and child.pid not in (None, victim), timeout=5,
                 what="killed replica back")
        assert time.monotonic() - started < 5
        assert {p["key"]: p["restarts"] for p in f.status()["processes"]}[str(key)] == 1

        # scale 2 -> 4 -> 1 while serving; the new replicas take traffic
        f.scale("up", 4)
        assert len(f.status()["executors"]["up"]) == 4 and f.executors[0].replicas == 4
        poll_for(lambda: min(served(f, "up")) > 5, timeout=30, what="traffic on all 4 replicas")
        retried = gateway_retries(f)
        f.scale("up", 1)  # the gateway stops sending to a replica before it is stopped: nothing retried
        assert len(f.status()["executors"]["up"]) == 1 and len(f._supervisor.workers) == 1
        before = served(f, "up")[0]
        poll_for(lambda: served(f, "up")[0] > before + 20, timeout=30, what="load on the one replica left")
        assert gateway_retries(f) == retried

        # reload onto a new class with 2 replicas: answers switch, nothing fails
        f.scale("up", 2)
        retried = gateway_retries(f)
        f.reload("up", Tagger)  # new behaviour: tags instead of upper-casing
        assert f.post("/upper", Doc(text="b"))[0].text == "b"
        poll_for(lambda: min(served(f, "up")) > 20, timeout=30, what="load on the reloaded replicas")
        assert gateway_retries(f) == retried  # traffic was switched before each old replica stopped
        ok, failed, texts, err = load.stop(proc)
        assert failed == 0, err
        assert ok > 200
        assert texts == "Aa"  # answers switched from Upper ('A') to Tagger ('a')


class Picky(Executor):
    """Raises ValueError on /value and KeyError on /key; answers /ok."""

    @requests(on="/value")
    def value(self, docs: DocList[Doc]) -> None:
        raise ValueError("bad value on purpose")

    @requests(on="/key")
    def key(self, docs: DocList[Doc]) -> None:
        raise KeyError("missing key on purpose")

    @requests(on="/ok")
    def ok(self, docs: DocList[Doc]) -> None:
        for d in docs:
            d.text = "ok"


class CrashOnRestart(Executor):
    """Starts once; every later start fails while the marker file exists."""

    def __init__(self, marker: str = "", **kwargs: Any) -> None:
        if os.path.exists(marker):
            raise RuntimeError(f"weights corrupted on purpose ({os.path.basename(marker)})")
        with open(marker, "w") as f:
            f.write("started once")

    @requests
    def noop(self, docs: DocList[Doc]) -> None:
        return None


def test_exit_on_exceptions_stops_and_restarts_the_replica() -> None:
    f = Flow().add(uses=Picky, name="p", exit_on_exceptions=["ValueError"])
    with f:
        child = next(iter(f._supervisor.workers.values()))
        pid = child.pid
        with pytest.raises(ExecutorError, match="KeyError"):  # not in the list: the replica stays
            f.post("/key", Doc())
        with pytest.raises(ExecutorError, match="ValueError"):
            f.post("/value", Doc())
        poll_for(lambda: not pid_alive(pid), timeout=10, what="replica to exit")
        poll_for(lambda: child.state == "ready" and child.pid != pid, timeout=10, what="restart")
        assert child.restarts == 1
        # the replica logs its decision in order on one pipe: only the ValueError made it stop
        stops = [line for line in f.logs("p") if "is in exit_on_exceptions" in line]
        assert len(stops) == 1 and "ValueError is in exit_on_exceptions" in stops[0], stops
        assert [p["restarts"] for p in f.status()["processes"] if p["key"] == child.key] == [1]
        assert f.post("/ok", Doc()).texts == ["ok"]
        assert f.dry_run()


def test_exit_on_exceptions_with_restart_never_keeps_it_down() -> None:
    f = Flow().add(uses=Failing, name="t", restart="never", exit_on_exceptions=["ValueError"])
    with f:
        child = next(iter(f._supervisor.workers.values()))
        pid = child.pid
        assert pid is not None and f.is_ready()
        with pytest.raises(ExecutorError, match="ValueError"):
            f.post("/fail", Doc())
        poll_for(lambda: child.done.is_set(), timeout=10, what="exit noticed")
        assert not pid_alive(pid)
        assert child.restarts == 0 and child.state == "exited"
        assert not f.is_ready()


def test_repeated_failures_leave_the_replica_failed_with_its_output(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    f = Flow().add(uses=CrashOnRestart, uses_with={"marker": str(marker)}, name="c")
    with f:
        child = next(iter(f._supervisor.workers.values()))
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        # each restart fails in __init__; after MAX_RESTARTS of them (with backoff) it stays down
        poll_for(lambda: child.restarts == MAX_RESTARTS and child.state == "failed" and child.done.is_set(),
                 timeout=90, what=f"{MAX_RESTARTS} failed restarts")
        assert [p["state"] for p in f.status()["processes"] if p["key"] == child.key] == ["failed"]
        assert child.failure is not None
        assert "weights corrupted on purpose (marker)" in child.failure["traceback"]
        assert not f.is_ready()
        assert "weights corrupted on purpose" in "\n".join(f.logs("c"))  # the reason reaches the user


def test_handler_errors_are_counted_per_executor() -> None:
    import httpx

    f = Flow(metrics=True).add(uses=Picky, name="p")
    with f:
        for _ in range(3):
            with pytest.raises(ExecutorError):
                f.post("/value", Doc())
        for _ in range(2):
            f.post("/ok", Doc())
        status = f.status()
        assert status["executors"]["p"][0]["stats"]["errors"] == 3
        scraped = httpx.get(f"http://127.0.0.1:{status['executors']['p'][0]['metrics_port']}/metrics",
                            timeout=10).text
        samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in scraped.splitlines()
                   if line.startswith("orchestra_executor_")}
        assert samples['orchestra_executor_errors_total{endpoint="/value",executor="p"}'] == 3
        assert samples['orchestra_executor_requests_total{endpoint="/value",executor="p"}'] == 3
        assert samples.get('orchestra_executor_errors_total{endpoint="/ok",executor="p"}', 0.0) == 0
        assert samples['orchestra_executor_requests_total{endpoint="/ok",executor="p"}'] == 2
        assert samples['orchestra_executor_seconds_count{endpoint="/ok",executor="p"}'] == 2
        gateway = httpx.get(f"http://127.0.0.1:{status['metrics_port']}/metrics", timeout=10).text
        assert 'orchestra_gateway_errors_total{endpoint="/value",executor="p"} 3.0' in gateway


def test_metrics_count_exactly_the_requests() -> None:
    import httpx

    f = Flow(protocol=["grpc", "http"], metrics=True).add(uses=Tagger, name="a").add(uses=Tagger, name="b",
                                                                                      replicas=2)
    with f:
        n = 37
        for i in range(n):
            f.post("/x", [Doc(text=str(i)), Doc()])
        status = f.status()
        text = httpx.get(f"http://127.0.0.1:{status['metrics_port']}/metrics", timeout=10).text
        assert "orchestra_gateway_requests_total" in httpx.get(f"http://127.0.0.1:{f.ports['http']}/metrics", timeout=10).text
        for name in ("a", "b"):
            assert f'orchestra_gateway_requests_total{{endpoint="/x",executor="{name}"}} {float(n)}' in text
        for name in ("a", "b"):
            total = 0.0
            docs = 0.0
            for rep in status["executors"][name]:
                scraped = httpx.get(f"http://127.0.0.1:{rep['metrics_port']}/metrics", timeout=10).text
                for line in scraped.splitlines():
                    if line.startswith(f'orchestra_executor_requests_total{{endpoint="/x",executor="{name}"}}'):
                        total += float(line.split()[-1])
                    if line.startswith(f'orchestra_executor_docs_total{{endpoint="/x",executor="{name}"}}'):
                        docs += float(line.split()[-1])
            assert total == n and docs == 2 * n


HOT_V1 = """
from orchestra_nb import Executor, requests

class Hot(Executor):
    @requests
    def answer(self, docs):
        for d in docs:
            d.text = "VERSION-1"
"""


def test_file_edit_under_reload_rolls_replicas(tmp_path: Path) -> None:
    module = tmp_path / "hot_exec.py"
    module.write_text(HOT_V1)
    f = Flow().add(uses="Hot", py_modules=[str(module)], name="hot", replicas=2, reload=True)
    with f:
        assert f.post("/x", Doc())[0].text == "VERSION-1"
        old = set(f.pids())
        module.write_text(HOT_V1.replace("VERSION-1", "VERSION-2"))
        poll_for(lambda: f.post("/x", Doc())[0].text == "VERSION-2", timeout=30, what="new code to answer")
        poll_for(lambda: f._reloader.reloads >= 1, timeout=10, what="reload counted")
        answers = {f.post("/x", Doc())[0].text for _ in range(10)}
        assert answers == {"VERSION-2"}
        assert len(old & set(f.pids())) == 1  # only the gateway is the same process
