"""Start-up progress: the model, the console display (real rich Consoles that record what they print)
and, once the runtime reports phases, a real Flow whose executor sleeps in `__init__`.

Times come from an injected clock so the printed seconds are exact; nothing sleeps.
"""

from __future__ import annotations

import inspect
import io
import re
import threading
import time
from typing import Any

import pytest
from rich.console import Console

from orchestra_nb import Executor, Flow, requests
from orchestra_nb.progress import (
    PHASES,
    ConsoleProgress,
    StartupProgress,
    progress_html,
    progress_text,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def recording_console(terminal: bool) -> Console:
    return Console(record=True, file=io.StringIO(), force_terminal=terminal, width=110, color_system=None)


def scripted_start(model: StartupProgress, clock: Clock) -> None:
    """Two encoder replicas (one slow to load), a ranker and the gateway start; all get ready."""
    for key in ("enc/0", "enc/1", "rank/0", "gateway"):
        model.update(key, "spawning")
    clock.tick(0.5)
    for key in ("enc/0", "enc/1", "rank/0"):
        model.update(key, "importing")
    clock.tick(0.5)
    model.update("enc/0", "loading", detail="weights")
    model.update("enc/1", "loading", detail="weights")
    model.update("rank/0", "loading")
    model.update("gateway", "serving")
    clock.tick(0.2)
    for phase in ("serving", "ready"):
        model.update("rank/0", phase)
    clock.tick(2.0)
    for phase in ("serving", "ready"):
        model.update("enc/0", phase)
    clock.tick(3.0)
    for phase in ("serving", "ready"):
        model.update("enc/1", phase)
    model.update("gateway", "ready")


def test_model_follows_the_slowest_replica() -> None:
    clock = Clock()
    model = StartupProgress("search", ["enc/0", "enc/1", "rank/0", "gateway"], clock=clock)
    snap = model.snapshot()
    assert snap["executors"]["enc"] == {**snap["executors"]["enc"], "replicas": 2, "ready": 0, "phase": "waiting",
                                        "fraction": 0.0}
    model.update("enc/0", "spawning")
    model.update("enc/1", "spawning")
    clock.tick(1.0)
    model.update("enc/0", "importing")
    clock.tick(0.5)
    model.update("enc/0", "loading", detail="3 of 5 files")
    clock.tick(0.25)
    enc = model.snapshot()["executors"]["enc"]
    assert enc["phase"] == "spawning"  # enc/1 is the one everyone waits for
    assert enc["phase_s"] == 1.75
    assert enc["fraction"] == pytest.approx((2 / 4 + 0 / 4) / 2)
    assert enc["history"] == {"enc/0": ["spawning", "importing", "loading"], "enc/1": ["spawning"]}
    for phase in ("importing", "loading", "serving", "ready"):
        model.update("enc/1", phase)
    enc = model.snapshot()["executors"]["enc"]
    assert (enc["phase"], enc["detail"], enc["ready"]) == ("loading", "3 of 5 files", 1)
    assert enc["fraction"] == pytest.approx((2 / 4 + 1) / 2)
    model.update("rank/0", "importing")
    model.update("rank/0", "downloading")  # a phase we do not know keeps the bar where it was
    assert model.snapshot()["executors"]["rank"]["fraction"] == pytest.approx(1 / 4)
    assert model.snapshot()["executors"]["rank"]["phase"] == "downloading"
    model.update("rank/0", "failed", detail="ImportError: no module named 'faiss'")
    clock.tick(1.0)
    model.finish(False, "executor 'rank' (replica 0) failed to start: ImportError")
    model.finish(True)  # the first end stands
    snap = model.snapshot()
    assert snap["executors"]["rank"]["failed"] is True and snap["executors"]["rank"]["phase"] == "failed"
    assert (snap["finished"], snap["ok"]) == (True, False)
    assert snap["reason"].startswith("executor 'rank'")
    assert snap["elapsed_s"] == 2.75
    clock.tick(5.0)
    assert model.snapshot()["elapsed_s"] == 2.75  # frozen once finished


def test_subscribers_see_every_change_until_they_unsubscribe() -> None:
    model = StartupProgress("f")
    seen: list[str] = []
    unsubscribe = model.subscribe(lambda m: seen.append(m.replicas["a/0"].phase))
    model.update("a/0", "spawning")
    model.update("a/0", "importing")
    unsubscribe()
    unsubscribe()  # harmless twice
    model.update("a/0", "loading")
    assert seen == ["spawning", "importing"]


def test_rows_for_a_spec_match_the_supervisor_keys() -> None:
    from orchestra_nb.runtime.supervisor import Supervisor

    flow = Flow(name="keys").add(name="enc", shards=2, replicas=2).add(name="rank")
    model = StartupProgress.for_spec(flow.flow_spec())
    sup = Supervisor(flow.flow_spec(), echo=False)
    sup.plan()
    sup._make_workers()  # builds the ChildProcess objects without starting anything
    assert set(model.replicas) == {str(k) for k in sup.workers} | {"gateway"}
    assert set(model.replicas) == {"enc/0", "enc/1", "enc/shard1/0", "enc/shard1/1", "rank/0", "gateway"}
    assert model.name == "keys"


def test_console_lines_show_every_phase_in_order() -> None:
    """Off a terminal (CI logs, redirected stderr) each phase change is one line."""
    clock = Clock()
    model = StartupProgress("search", ["enc/0", "enc/1", "rank/0", "gateway"], clock=clock)
    console = recording_console(terminal=False)
    with ConsoleProgress(model, console) as display:
        assert display.live is False
        scripted_start(model, clock)
        display.log("enc/0 | INFO loaded 22M parameters")
        model.finish(True)
    text = console.export_text()
    lines = [line for line in text.splitlines() if "enc/1" in line and "|" not in line]
    assert [line.split()[-1] if "(" not in line else line.split()[-2] for line in lines] == list(PHASES)
    assert "  6.2s  enc/1                    ready" in text
    assert "  1.0s  enc/0                    loading (weights)" in text
    assert "enc/0 | INFO loaded 22M parameters" in text
    assert text.rstrip().endswith("✓ 'search' ready in 6.2s")
    # rows in time order
    stamps = [float(m) for m in re.findall(r"^\s*(\d+\.\d)s ", text, re.M)]
    assert stamps == sorted(stamps) and len(stamps) == 4 + 3 + 3 + 4 + 4  # spawning, importing, loading, serving, ready


def test_console_failure_ends_with_the_reason() -> None:
    clock = Clock()
    model = StartupProgress("search", ["enc/0", "gateway"], clock=clock)
    console = recording_console(terminal=False)
    with ConsoleProgress(model, console):
        model.update("enc/0", "spawning")
        model.update("enc/0", "importing")
        clock.tick(1.5)
        model.update("enc/0", "failed", detail="ModuleNotFoundError")
        model.finish(False, "executor 'enc' (replica 0) failed to start: ModuleNotFoundError: torch")
        model.update("enc/0", "spawning")  # after the end nothing more is printed
    text = console.export_text()
    assert "  1.5s  enc/0                    failed (ModuleNotFoundError)" in text
    assert text.rstrip().endswith("✗ 'search' failed after 1.5s: executor 'enc' (replica 0) failed to start: "
                                  "ModuleNotFoundError: torch")
    assert text.count("spawning") == 1


def test_live_bars_on_a_terminal_show_the_current_phase() -> None:
    clock = Clock()
    model = StartupProgress("search", ["enc/0", "enc/1", "rank/0", "gateway"], clock=clock)
    console = recording_console(terminal=True)
    frames: list[str] = []
    with ConsoleProgress(model, console, auto_refresh=False) as display:
        assert display.live is True
        model.update("enc/0", "spawning")
        model.update("enc/0", "importing")
        clock.tick(0.5)
        model.update("enc/0", "loading", detail="weights")
        model.update("enc/1", "spawning")
        clock.tick(2.0)
        display.refresh()
        frames.append(console.export_text(clear=False))
        scripted_start(model, clock)
        model.finish(True)
    text = console.export_text()
    assert "enc/1" not in frames[0]  # one row per executor, not per replica
    assert re.search(r"enc\s+━*\s+0/2 ready\s+spawning 2\.0s", frames[0]), frames[0]
    final = text[text.rindex("enc "):]
    assert re.search(r"enc\s+━+ 2/2 ready after 8\.7s", final), final
    assert re.search(r"rank\s+━+ 1/1 ready after 3\.7s", final)
    assert re.search(r"gateway\s+━+ 1/1 ready after 8\.7s", final)
    assert text.rstrip().endswith("ready in 8.7s")


def test_live_display_takes_updates_from_many_threads() -> None:
    """The status-reader threads update concurrently while rich refreshes on its own thread."""
    keys = [f"ex{i}/{r}" for i in range(4) for r in range(3)]
    model = StartupProgress("busy", keys)
    console = recording_console(terminal=True)
    errors: list[BaseException] = []

    def start_one(key: str) -> None:
        try:
            for phase in PHASES:
                model.update(key, phase)
        except BaseException as exc:  # pragma: no cover - what the test looks for
            errors.append(exc)

    with ConsoleProgress(model, console):
        threads = [threading.Thread(target=start_one, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        model.finish(True)
    assert not errors
    snap = model.snapshot()
    assert all(ex["ready"] == 3 and ex["fraction"] == 1.0 for ex in snap["executors"].values())
    assert "3/3 ready" in console.export_text()


def test_progress_html_for_the_panel() -> None:
    clock = Clock()
    model = StartupProgress("search", ["enc/0", "enc/1", "gateway"], clock=clock)
    model.update("enc/0", "ready")
    model.update("enc/1", "loading", detail="weights")
    clock.tick(1.25)
    page = progress_html(model.snapshot())
    assert "<b>enc</b>" in page and "1/2 ready" in page and "loading (weights) 1.2 s" in page
    assert "data-fraction='0.75'" in page and "width:75%" in page
    assert "search starting… 1.2 s" in page
    model.update("enc/1", "failed")
    model.finish(False, "<boom>")
    page = progress_html(model.snapshot())
    assert "search failed after 1.2 s: &lt;boom&gt;" in page
    assert "#d9534f" in page  # the failed executor's bar is red


def test_progress_text_says_the_same_in_plain_text() -> None:
    clock = Clock()
    model = StartupProgress("search", ["enc/0", "enc/1", "gateway"], clock=clock)
    model.update("enc/0", "ready")
    model.update("enc/1", "loading", detail="weights")
    clock.tick(1.25)
    assert progress_text(model.snapshot()).splitlines() == [
        "enc              1/2 ready  loading 1.2 s (weights)",
        "gateway          0/1 ready  waiting 1.2 s",
        "search starting… 1.2 s"]
    model.update("enc/1", "ready")
    model.update("gateway", "ready")
    model.finish(True)
    assert progress_text(model.snapshot()).splitlines()[-1] == "search ready after 1.2 s"
    assert progress_html(model.snapshot(), bars=False) == \
        "<div class='orchestra-progress'><div>search ready after 1.2 s</div></div>"


class Sleepy(Executor):
    """Takes a while to 'load a model'."""

    def __init__(self, seconds: float = 1.0, **kwargs: Any) -> None:
        time.sleep(seconds)  # the slow start-up under test, inside the replica process

    @requests
    def noop(self, docs: Any, parameters: Any) -> None:
        pass


def _supervisor_reports_phases() -> bool:
    from orchestra_nb.runtime.supervisor import Supervisor

    return "on_phase" in inspect.signature(Supervisor.__init__).parameters


@pytest.mark.skipif(not _supervisor_reports_phases(),
                    reason="the runtime does not report start-up phases yet: needs Supervisor(on_phase=...) "
                           "and the phase events from child/worker (issue 12 wiring)")
def test_slow_executor_shows_its_phases_in_order() -> None:
    from orchestra_nb.runtime.supervisor import Supervisor

    spec = Flow(name="slowstart").add(uses=Sleepy, name="sleepy", uses_with={"seconds": 1.0}).flow_spec()
    model = StartupProgress.for_spec(spec)
    console = recording_console(terminal=False)
    sup = Supervisor(spec, echo=False, on_phase=model.update)
    try:
        with ConsoleProgress(model, console):
            sup.start()
            model.finish(True)
    finally:
        sup.close()
    history = model.replicas["sleepy/0"].history
    assert [p for p, _ in history] == list(PHASES)
    times = dict(history)
    assert times["serving"] - times["loading"] >= 1.0  # the slow phase is the one that showed
    assert [p for p, _ in model.replicas["gateway"].history][-1] == "ready"
    text = console.export_text()
    order = [m for m in re.findall(r"sleepy/0\s+(\w+)", text)]
    assert order == list(PHASES)


@pytest.mark.skipif(not _supervisor_reports_phases(),
                    reason="the runtime does not report start-up phases yet: needs Supervisor(on_phase=...) "
                           "and the phase events from child/worker (issue 12 wiring)")
def test_failing_executor_ends_in_failed_with_the_reason() -> None:
    from orchestra_nb.errors import ExecutorStartupError
    from orchestra_nb.runtime.supervisor import Supervisor
    from tests.executors import BrokenInit

    spec = Flow(name="brokenstart").add(uses=BrokenInit, name="broken").flow_spec()
    model = StartupProgress.for_spec(spec)
    console = recording_console(terminal=False)
    sup = Supervisor(spec, echo=False, on_phase=model.update)
    with ConsoleProgress(model, console), pytest.raises(ExecutorStartupError) as info:
        try:
            sup.start()
        except ExecutorStartupError as exc:
            model.finish(False, str(exc).splitlines()[0])
            raise
    phases = [p for p, _ in model.replicas["broken/0"].history]
    assert phases[:3] == ["spawning", "importing", "loading"] and phases[-1] == "failed"
    assert "ready" not in phases and "serving" not in phases
    text = console.export_text()
    assert re.search(r"broken/0\s+failed \(.*RuntimeError", text), text
    assert text.rstrip().endswith(str(info.value).splitlines()[0])


def test_flow_start_on_a_terminal_shows_live_bars_through_the_phases() -> None:
    """`Flow.start()` itself, run in a pseudo-terminal as a user's console would: the live bars go
    through the slow executor's phases in order and end with how long it took."""
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = ("from orchestra_nb import Flow\nfrom tests.test_progress import Sleepy\n"
              "f = Flow(name='ptyprogress').add(uses=Sleepy, name='sleepy', uses_with={'seconds': 1.5})\n"
              "f.start()\nf.close()\nprint('DONE', flush=True)\n")
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "ORCHESTRA_QUIET": "0", "ORCHESTRA_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, env=env, stdin=follower,
                            stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []
    try:
        while True:  # read until the child closes the terminal (EIO once no process holds it open)
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    assert "DONE" in text, text
    shown = re.findall(r"sleepy\b.*?0/1 ready\s+(\w+) \d+\.\d+s", text)
    phases = [p for i, p in enumerate(shown) if i == 0 or shown[i - 1] != p]
    assert "loading" in phases, text  # the slow phase is what the user sees while waiting
    order = ("waiting", *PHASES)
    assert phases == [p for p in order if p in phases], phases  # in order, never backwards
    assert re.search(r"sleepy\b.*1/1 ready after (\d+\.\d)s", text), text
    assert re.search(r"'ptyprogress' ready in \d+\.\ds", text), text
