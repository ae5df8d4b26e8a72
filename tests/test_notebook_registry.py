"""The per-process registry behind safe re-runs: `running()`, `close_all()`, and closing at exit.

Run in a fresh interpreter, because exiting is the point: the script leaves one Flow running on
purpose, and the test checks that the atexit hook closed it *gracefully* (its executor's `close()`
wrote a file), which the children's parent-death watch alone would not do.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import orchestra_processes, poll_for

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
import orchestra_nb
from orchestra_nb import Flow
from tests.executors import Closer

out = sys.argv[1]
a = Flow(name="reg-a").add(uses=Closer, name="c", uses_with={"path": out + "/a"}).start()
b = Flow(name="reg-b").add(name="plain").start()
again = Flow(name="reg-b").add(name="plain").start()  # outside a kernel the same name may run twice
print("running", sorted(o.name for o in orchestra_nb.running()), b.state.value, flush=True)
orchestra_nb.close_all()
print("after close_all", orchestra_nb.running(), a.state.value, b.state.value, again.state.value, flush=True)
Flow(name="reg-exit").add(uses=Closer, name="c", uses_with={"path": out + "/exit"}).start()
print("leaving one running", flush=True)
"""


def _titles(prefix: str) -> list[int]:
    out = []
    for pid in orchestra_processes():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read().startswith(f"orchestra-nb: {prefix}".encode()):
                    out.append(pid)
        except OSError:
            continue
    return out


def test_running_close_all_and_close_at_exit(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=90, env={"ORCHESTRA_QUIET": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "running ['reg-a', 'reg-b', 'reg-b'] ready" in lines, proc.stdout
    assert "after close_all [] closed closed closed" in lines, proc.stdout
    assert (tmp_path / "a").read_text() == "closed c/0"  # close_all closes gracefully
    assert (tmp_path / "exit").read_text() == "closed c/0"  # so does the exit hook
    poll_for(lambda: not _titles("reg-"), timeout=5, what="no process of the script's flows")
