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

import pytest

from orchestra_nb import Doc, Flow
from orchestra_nb.errors import ExecutorError
from tests.executors import Failing, Tagger, Upper
from tests.helpers import pid_alive, poll_for

ROOT = Path(__file__).resolve().parent.parent

LOAD = """
import sys, time
from orchestra_nb import Client, Doc
client = Client(port=int(sys.argv[1]))
deadline = time.monotonic() + float(sys.argv[2])
ok = failed = 0
texts = []
while time.monotonic() < deadline and ok + failed < 20000:
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


@pytest.fixture
def load(tmp_path: Path) -> Iterator[object]:
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(LOAD))
    procs: list[subprocess.Popen[str]] = []

    def start(port: int, seconds: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, str(script), str(port), str(seconds)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def finish(proc: subprocess.Popen[str]) -> tuple[int, int, str, str]:
    out, err = proc.communicate(timeout=120)
    ok, failed, texts = [*out.split(), ""][:3]
    return int(ok), int(failed), texts, err


class Lower(Upper):
    pass


def test_kill_reload_and_scale_under_load(load: object) -> None:
    f = Flow().add(uses=Upper, name="up", replicas=2)
    with f:
        proc = load(f.port, 12.0)  # type: ignore[operator]
        poll_for(lambda: f.status()["executors"]["up"][0]["stats"]["requests"] > 20, timeout=20, what="load")
        victim = f._supervisor.workers[next(iter(f._supervisor.workers))].pid
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        poll_for(lambda: all(c.state == "ready" and c.pid != victim for c in f._supervisor.workers.values()),
                 timeout=5, what="killed replica back")
        assert time.monotonic() - started < 5
        f.scale("up", 4)
        assert len(f.status()["executors"]["up"]) == 4 and f.executors[0].replicas == 4
        f.scale("up", 1)
        assert len(f.status()["executors"]["up"]) == 1
        f.scale("up", 2)
        f.reload("up", Tagger)  # new behaviour: tags instead of upper-casing
        assert f.post("/upper", Doc(text="b"))[0].text == "b"
        ok, failed, texts, err = finish(proc)
        assert failed == 0, err
        assert ok > 100
        assert texts == "Aa"  # answers switched from Upper ('A') to Tagger ('a')


def test_exit_on_exceptions_stops_and_restarts_the_replica() -> None:
    f = Flow().add(uses=Failing, name="f", exit_on_exceptions=["ValueError"])
    with f:
        child = next(iter(f._supervisor.workers.values()))
        pid = child.pid
        with pytest.raises(ExecutorError, match="ValueError"):
            f.post("/fail", Doc())
        poll_for(lambda: not pid_alive(pid), timeout=10, what="replica to exit")
        poll_for(lambda: child.state == "ready" and child.pid != pid, timeout=10, what="restart")
        assert child.restarts == 1
        assert f.post("/ok", Doc()).texts == ["ok"]
        assert f.dry_run()


def test_restart_never_keeps_it_down() -> None:
    f = Flow().add(uses=Tagger, name="t", restart="never")
    with f:
        child = next(iter(f._supervisor.workers.values()))
        pid = child.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        poll_for(lambda: child.done.is_set(), timeout=10, what="exit noticed")
        assert child.restarts == 0 and child.state == "exited"
        assert not f.is_ready()


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
