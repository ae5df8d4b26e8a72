"""Orchestrations inside a real Jupyter kernel (ipykernel via jupyter_client).

One kernel serves the module (a module-scoped fixture that always shuts it down); the SIGKILL test
starts its own, because killing is the point. Processes are told apart by the flow name in their
title (`orchestra-nb: <flow>/<executor>/<replica>`), so other test sessions on the machine do not count.
"""

from __future__ import annotations

import os
import re
import signal
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import orchestra_processes, pid_alive, poll_for

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[1]
RUN = uuid.uuid4().hex[:6]

SETUP = """
from orchestra_nb import Doc, Executor, Flow, requests
import orchestra_nb

class Upper(Executor):  # defined in a cell: travels to the replicas by value
    @requests(on='/up')
    def up(self, docs, parameters):
        for d in docs:
            d.text = d.text.upper()
"""


def start_cell(name: str) -> str:
    return f"""
f = Flow(name={name!r}, protocol=['grpc', 'http']).add(uses=Upper, name='up')
f.start()
print(f.post('/up', [Doc(text='hi')]).texts, sorted(f.pids()))
"""


def ours(flow: str, *, prefix: bool = False) -> list[int]:
    """Live processes of flow `flow` (or of every flow whose name starts with it), by their title."""
    start = f"orchestra-nb: {flow}" if prefix else f"orchestra-nb: {flow}/"
    out = []
    for pid in orchestra_processes():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                title = fh.read().decode(errors="replace")
        except OSError:
            continue
        if title.startswith(start) and pid_alive(pid):
            out.append(pid)
    return sorted(out)


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports in LISTEN state held by any of `pids`."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for row in fh:
                    cols = row.split()
                    if cols[3] == "0A":
                        inodes[cols[9]] = int(cols[1].rsplit(":", 1)[1], 16)
        except OSError:
            continue
    ports = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                ports.add(inodes[link[8:-1]])
    return ports


class Kernel:
    """A running kernel and a blocking client, with helpers that fail loudly."""

    def __init__(self) -> None:
        self.km = jupyter_client.KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(ROOT))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.process.pid)

    def run(self, code: str, timeout: float = 60, allow_error: bool = False) -> tuple[str, list[dict[str, Any]]]:
        """Execute `code`; return its stdout and its display messages' data."""
        out: list[str] = []
        displays: list[dict[str, Any]] = []
        errors: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("display_data", "execute_result"):
                displays.append(content["data"])
            elif kind == "error":
                errors.append("\n".join(content["traceback"]))

        reply = self.kc.execute_interactive(textwrap.dedent(code), timeout=timeout, output_hook=hook)
        if not allow_error and reply["content"]["status"] != "ok":
            raise AssertionError(f"cell {reply['content']['status']}:\n{code}\n{''.join(out)}\n{''.join(errors)}")
        return "".join(out + errors), displays

    def value(self, expr: str) -> Any:
        import ast

        text, _ = self.run(f"print(repr({expr}))")
        return ast.literal_eval(text.strip())

    def shutdown(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=False)


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    try:
        k.run(SETUP)
        yield k
    finally:
        k.shutdown()


def test_executor_from_a_cell_serves_and_top_level_await_works(kernel: Kernel) -> None:
    name = f"nbk-{RUN}-a"
    out, _ = kernel.run(start_cell(name))
    assert out.startswith("['HI']")
    assert len(ours(name)) == 2  # one replica and the gateway
    out, _ = kernel.run("r = await f.post_async('/up', [Doc(text='x'), Doc(text='y')])\nprint(r.texts)")
    assert out.strip() == "['X', 'Y']"


def test_rerunning_the_start_cell_leaves_one_flow(kernel: Kernel) -> None:
    name = f"nbk-{RUN}-rerun"
    kernel.run(start_cell(name))
    first = ours(name)
    first_ports = listening_ports(first)
    assert len(first) == 2 and first_ports
    seen = set(first)
    for _ in range(9):
        kernel.run(start_cell(name))
        seen.update(ours(name))
    now = ours(name)
    assert len(now) == len(first)
    assert len(listening_ports(now)) == len(first_ports)
    assert not [p for p in seen - set(now) if pid_alive(p)]  # every replaced process is gone
    assert len(seen) == 2 * 10  # each run really started fresh processes
    assert kernel.value(f"[o.name for o in orchestra_nb.running()].count({name!r})") == 1


def test_interrupt_leaves_the_flow_serving(kernel: Kernel) -> None:
    name = f"nbk-{RUN}-int"
    kernel.run(start_cell(name))
    before = ours(name)
    # stop_on_error=False: otherwise the kernel aborts the next request that arrives right after it
    msg_id = kernel.kc.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)",
                               stop_on_error=False)
    deadline = time.monotonic() + 30
    while True:  # wait until the long cell's own code runs (a signal before that hits the kernel loop)
        msg = kernel.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    kernel.km.interrupt_kernel()  # SIGINT to the kernel's whole process group, like the stop button
    while True:
        reply = kernel.kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    out, _ = kernel.run("print(f.post('/up', [Doc(text='again')]).texts, f.state.value)")
    assert out.strip() == "['AGAIN'] ready"
    assert ours(name) == before


def test_display_bundle_and_panel_in_the_kernel(kernel: Kernel) -> None:
    name = f"nbk-{RUN}-panel"
    kernel.run(start_cell(name).replace(".add(uses=Upper, name='up')",
                                        ".add(uses=Upper, name='up', replicas=2).add(name='b')"))
    _, displays = kernel.run("f")
    kernel.run("from orchestra_nb.notebook.panel import get_panel")
    assert len(displays) == 1
    bundle = displays[0]
    assert {"text/plain", "text/html", "application/vnd.jupyter.widget-view+json"} <= set(bundle)
    assert f"Flow {name!r}" in bundle["text/plain"]
    for key in ("up/0", "up/1", "b/0"):
        assert f'data-key="{key}"' in bundle["text/html"]
    poll_for(lambda: kernel.value(
        "orchestra_nb.notebook.panel.get_panel(f).status_html.value.count('data-state=\"ready\"')") == 4,
        timeout=20, interval=0.5, what="the panel to show 3 ready replicas and the gateway")
    # the refresh thread updates widgets and never prints into whatever cell runs meanwhile
    out, _ = kernel.run("f.post('/up', [Doc(text='q')])\nimport time\ntime.sleep(2.5)")
    assert out == ""
    assert kernel.value("orchestra_nb.notebook.panel.get_panel(f).running") is True
    titles = kernel.value("[f.panel().children[1].get_title(i) for i in range(len(f.panel().children[1].children))]")
    assert titles == ["Status", "Metrics", "Logs", "Endpoints", "Scale"]
    # the Status tab draws the topology with every node coloured ready, and the Metrics tab saw the post
    assert kernel.value("get_panel(f).topology_html.value.count('<title>up</title>')") == 1
    poll_for(lambda: kernel.value("get_panel(f).plot_data().get('gateway', {}).get('requests', [0])[-1]") >= 2,
             timeout=20, interval=0.5, what="the panel's plot data to count the requests")

    # without ipywidgets the same call falls back to HTML and text
    _, displays = kernel.run("import sys; _w = sys.modules.pop('ipywidgets'); sys.modules['ipywidgets'] = None\n"
                             "try:\n    display(f)\nfinally:\n    sys.modules['ipywidgets'] = _w")
    assert set(displays[0]) == {"text/plain", "text/html"}


def test_magic_starts_binds_and_stops(kernel: Kernel, tmp_path: Path) -> None:
    name = f"nbk-{RUN}-magic"
    kernel.run("%load_ext orchestra_nb.notebook")
    cell = f"""%%orchestra g --no-panel --gpus 0
jtype: Flow
with: {{name: {name}, protocol: [grpc, http]}}
executors:
  - name: up
    uses: Upper
"""
    kernel.run(cell)
    assert kernel.value("g.post('/up', [Doc(text='m')]).texts") == ["M"]
    assert kernel.value("(g.spec.executors[0].uses is Upper, g.spec.executors[0].gpus)") == (True, 0)
    first = ours(name)
    kernel.run(cell)  # a re-run replaces the running one
    assert len(ours(name)) == len(first) and not set(first) & set(ours(name))
    out, _ = kernel.run("%orchestra ls")
    assert name in out and "g " in out
    kernel.run("%orchestra stop g")
    poll_for(lambda: not ours(name), timeout=10, what="the magic's flow to stop")
    out, _ = kernel.run("%orchestra status nothing", allow_error=True)
    assert "no orchestration called 'nothing'" in out

    # a running Flow of the same name that another cell started is only replaced with --replace
    kernel.run(start_cell(name).replace("f = ", "other = ").replace("f.", "other."))
    out, _ = kernel.run(cell.replace("g --no-panel", "g2 --no-panel"), allow_error=True)
    assert "--replace" in out and kernel.value("other.state.value") == "ready"
    exported = tmp_path / "magic.yml"
    kernel.run(cell.replace("g --no-panel", f"g2 --no-panel --replace --export yaml {exported}"))
    assert kernel.value("(other.state.value, g2.state.value)") == ("closed", "ready")
    assert f"name: {name}" in exported.read_text()
    kernel.run("%orchestra stop g2")


def test_load_ext_of_the_package_registers_the_magics(kernel: Kernel) -> None:
    import orchestra_nb

    if "load_ipython_extension" not in vars(orchestra_nb):
        pytest.skip("orchestra_nb/__init__.py does not define load_ipython_extension yet")
    kernel.run("%load_ext orchestra_nb")
    out, _ = kernel.run("%orchestra ls")
    assert out.strip() == "no orchestration is running" or "nbk-" in out


def test_kernel_sigkill_leaves_no_process() -> None:
    name = f"nbk-{RUN}-kill"
    k = Kernel()
    try:
        k.run(SETUP)
        k.run(start_cell(name))
        assert len(ours(name)) == 2
        os.kill(k.pid, signal.SIGKILL)  # the kernel only, not its group: the children must notice
        poll_for(lambda: not ours(name), timeout=5, what="no process of ours 5 s after SIGKILL of the kernel")
    finally:
        k.shutdown()


def test_kernel_restart_leaves_no_process_and_the_flow_starts_again() -> None:
    """Jupyter's "Restart kernel": the old kernel's Flow goes, and the same cells run again."""
    name = f"nbk-{RUN}-restart"
    k = Kernel()
    try:
        k.run(SETUP)
        k.run(start_cell(name))
        first = ours(name)
        assert len(first) == 2
        k.km.restart_kernel(now=False)
        k.kc.wait_for_ready(timeout=60)
        poll_for(lambda: not ours(name), timeout=5, what="no process of ours 5 s after a kernel restart")
        k.run(SETUP)
        out, _ = k.run(start_cell(name))
        assert out.startswith("['HI']") and len(ours(name)) == 2 and not set(first) & set(ours(name))
    finally:
        k.shutdown()


def _progress_messages(kernel: Kernel, code: str) -> list[str]:
    """Run `code`; return the text/plain of each display and in-place update it published, in order."""
    seen: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] in ("display_data", "update_display_data") and "orchestra-progress" in \
                msg["content"]["data"].get("text/html", ""):
            seen.append(msg["content"]["data"]["text/plain"])
        assert msg["msg_type"] != "error", "\n".join(msg["content"]["traceback"])

    reply = kernel.kc.execute_interactive(textwrap.dedent(code), timeout=90, output_hook=hook)
    assert reply["content"]["status"] == "ok"
    return seen


def _phases(texts: list[str], executor: str) -> list[str]:
    shown = [m.group(1) for t in texts if (m := re.search(rf"^{executor}\s+\d/\d ready\s+(\w+)", t, re.M))]
    return [p for i, p in enumerate(shown) if i == 0 or shown[i - 1] != p]


def test_start_progress_is_shown_in_the_cell_while_it_blocks(kernel: Kernel) -> None:
    """show_start_progress: one output, updated in place through the phases, ending with the time."""
    texts = _progress_messages(kernel, f"""
        from orchestra_nb.notebook.display import show_start_progress
        from orchestra_nb.progress import StartupProgress
        from orchestra_nb.runtime.supervisor import Supervisor
        from tests.test_progress import Sleepy
        spec = Flow(name='nbk-{RUN}-progress').add(uses=Sleepy, name='sleepy', uses_with={{'seconds': 1.5}}).flow_spec()
        model = StartupProgress.for_spec(spec)
        sup = Supervisor(spec, echo=False, on_phase=model.update)
        end = show_start_progress(model, interval=0.2)
        try:
            sup.start()
            model.finish(True)
        finally:
            end()
            sup.close()
    """)
    phases = _phases(texts, "sleepy")
    assert phases[0] == "waiting" and "loading" in phases and phases[-1] == "ready", phases
    assert phases == [p for p in ("waiting", "spawning", "importing", "loading", "serving", "ready") if p in phases]
    assert re.search(rf"nbk-{RUN}-progress ready after \d+\.\d s$", texts[-1]), texts[-1]
    assert len([t for t in texts if "loading" in t]) >= 3  # the timer ticks while the model loads


def test_blocking_start_in_a_cell_shows_its_progress(kernel: Kernel) -> None:
    name = f"nbk-{RUN}-blocking"
    texts = _progress_messages(kernel, f"""
        from tests.test_progress import Sleepy
        slow = Flow(name={name!r}).add(uses=Sleepy, name='sleepy', uses_with={{'seconds': 1.5}})
        slow.start()
        slow.close()
    """)
    assert "loading" in _phases(texts, "sleepy")
    assert re.search(rf"{name} ready after \d+\.\d s$", texts[-1]), texts


# last of the tests that use the module's kernel: it shuts that kernel down
def test_kernel_shutdown_leaves_no_process(kernel: Kernel) -> None:
    kernel.run(start_cell(f"nbk-{RUN}-shutdown"))
    assert len(ours(f"nbk-{RUN}-", prefix=True)) >= 4  # this flow and those earlier tests left running
    kernel.shutdown()
    poll_for(lambda: not ours(f"nbk-{RUN}-", prefix=True), timeout=5, what="no process of ours after kernel shutdown")
