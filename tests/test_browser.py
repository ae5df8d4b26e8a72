"""The notebook experience in a real browser: JupyterLab, the quickstart notebook, the live panel.

A widget that renders in a unit test can still be blank in a browser, so this drives the real thing:
JupyterLab on loopback with a token, Debian's chromium through Playwright (`executable_path`, since
Playwright's own browser downloads are not possible in CI; `.ci/install-browser.sh` installs it), the
quickstart notebook run top to bottom in a real kernel, then the panel: every executor ready, the Scale
tab changes a replica count, the Logs tab shows the line of a request just sent. The screenshot goes to
docs/img/notebook-panel.png (which the docs show) when ORCHESTRA_UPDATE_SCREENSHOT=1, else to a temp dir.

Marked `slow` (`pytest -m "not slow"` leaves it out locally); it skips (saying why) where chromium,
Playwright or JupyterLab is missing, unless ORCHESTRA_REQUIRE_BROWSER=1 (set by CI), where a missing
piece fails the test instead, so CI cannot pass without having run it. Everything it
starts is stopped by fixtures: the kernel through Jupyter's API (which takes the Flow's processes down
with it), then the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from orchestra_nb.runtime.ports import free_port
from tests.helpers import orchestra_processes, pid_alive, poll_for

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
SCREENSHOT = ROOT / "docs" / "img" / "notebook-panel.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _missing(what: str) -> NoReturn:
    """Skip for a developer without the browser stack; fail where CI asked for the browser test."""
    if os.environ.get("ORCHESTRA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"ORCHESTRA_REQUIRE_BROWSER=1 but {what}")
    pytest.skip(what)


class Lab:
    """A running JupyterLab server: its URL, token and REST API."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, token: str, log: Path) -> None:
        self.proc, self.port, self.token, self.log = proc, port, token, log
        self.url = f"http://127.0.0.1:{port}"

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    def up(self) -> bool:
        assert self.proc.poll() is None, f"JupyterLab exited:\n{self.log.read_text()[-3000:]}"
        with contextlib.suppress(OSError):
            return bool(self.api("status"))
        return False


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        _missing("JupyterLab is not installed: pip install jupyterlab")
    if not NOTEBOOK.is_file():
        pytest.fail(f"{NOTEBOOK} is missing: the browser test runs the quickstart notebook")
    # a copy, so autosave never writes outputs into the repository's notebook
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    for name, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                      ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")]:
        env[name] = str(tmp_path / "jupyter" / sub)
    env.pop("JUPYTERHUB_SERVICE_PREFIX", None)
    log = tmp_path / "jupyterlab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
             "--LabApp.expose_app_in_browser=True",
             f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
             f"--LabApp.user_settings_dir={tmp_path / 'settings'}"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(proc, port, token, log)
    try:
        poll_for(server.up, timeout=60, interval=0.2, what="JupyterLab to answer")
        yield server
    finally:
        # kernels first: a kernel that exits closes its Flows (and the replicas watch it anyway)
        with contextlib.suppress(OSError, ValueError):
            for kernel in server.api("kernels"):
                server.api(f"kernels/{kernel['id']}", method="DELETE")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright import sync_api
    except ImportError:
        _missing("Playwright is not installed: pip install playwright")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"{CHROMIUM} is missing: run .ci/install-browser.sh (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _status_rows(panel: Any, executor: str | None = None) -> list[tuple[str, str]]:
    """(key, state) of each replica row the panel's Status tab shows."""
    rows = panel.locator("table.orchestra-nb-status tr[data-key]")
    out = []
    for i in range(rows.count()):
        row = rows.nth(i)
        key = row.get_attribute("data-key") or ""
        state = row.locator("[data-state]").first.get_attribute("data-state") or ""
        if executor is None or key.split("/")[0] == executor:
            out.append((key, state))
    return out


def test_quickstart_panel_in_jupyterlab(lab: Lab, browser: Any, tmp_path: Path) -> None:
    before = set(orchestra_processes())
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # open the notebook and run every cell in a real kernel
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}")
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return !!k && k.connectionStatus === 'connected'; }", timeout=90_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.locator(".jp-OutputArea-output pre", has_text="quickstart: all checks passed").wait_for(timeout=150_000)
    errors_shown = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                has_text="Error")
    assert errors_shown.count() == 0, errors_shown.first.inner_text()

    # the panel is the live widget (not the HTML fallback), and every executor is ready
    panel = page.locator(".jp-OutputArea-output .widget-vbox", has=page.locator(".widget-tab")).first
    panel.wait_for(timeout=30_000)
    panel.scroll_into_view_if_needed()
    header = panel.locator(".widget-html-content", has_text="ready").first
    assert "Flow quickstart" in header.inner_text()
    initial = poll_for(lambda: (rows := _status_rows(panel)) and all(s == "ready" for _, s in rows) and rows,
                       timeout=60, interval=0.2, what="every replica in the panel to be ready")
    executors = {key.split("/")[0] for key, _ in initial}
    assert executors == {"upper", "exclaim"}, initial

    # Scale tab: one more replica of `upper`
    panel.get_by_role("tab", name="Scale").click()
    row = panel.locator(".widget-hbox", has=page.locator("label", has_text="upper")).first
    count = int(row.locator("input").input_value())
    assert count == len(_status_rows(panel, "upper")) == 2
    row.locator("input").fill(str(count + 1))
    row.locator("input").press("Enter")
    row.get_by_role("button", name="apply").click()
    panel.get_by_text(f"upper: {count + 1} replica(s)").wait_for(timeout=60_000)
    panel.get_by_role("tab", name="Status").click()
    scaled = poll_for(lambda: (rows := _status_rows(panel, "upper")) and len(rows) == count + 1
                      and all(s == "ready" for _, s in rows) and rows,
                      timeout=60, interval=0.2, what=f"{count + 1} ready replicas of 'upper' in the panel")
    assert sorted(k for k, _ in scaled) == [f"upper/{i}" for i in range(count + 1)]
    # the docs' copy is refreshed only on request, so a test run leaves the working tree clean
    shot = SCREENSHOT if os.environ.get("ORCHESTRA_UPDATE_SCREENSHOT") == "1" else tmp_path / SCREENSHOT.name
    page.locator(".jp-Cell", has=panel).screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    # Logs tab: the line of a request sent now (a doc without text makes Upper's handler raise)
    panel.get_by_role("tab", name="Logs").click()
    logs = panel.locator("pre").first
    logs.wait_for(timeout=10_000)
    assert "raised AttributeError" not in logs.inner_text()
    http_port = re.search(r"http (\d+)", header.inner_text())
    assert http_port, header.inner_text()
    request = urllib.request.Request(f"http://127.0.0.1:{http_port.group(1)}/post", method="POST",
                                     data=json.dumps({"on": "/up", "docs": [{"id": "from-the-browser-test"}]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with contextlib.suppress(urllib.error.HTTPError):  # the request fails on purpose
        urllib.request.urlopen(request, timeout=30).close()
    poll_for(lambda: "raised AttributeError" in logs.inner_text(), timeout=30, interval=0.2,
             what="the failed request's log line in the Logs tab")
    assert re.search(r"ERROR\s+upper/\d: handler for /up raised AttributeError", logs.inner_text())
    assert not errors, f"JavaScript errors in the page: {errors}"

    # shutting the kernel down must take every process of the Flow down with it
    started = [p for p in orchestra_processes() if p not in before]
    assert len(started) >= len(scaled) + 2  # replicas of both executors and the gateway
    page.close()
    for kernel in lab.api("kernels"):
        lab.api(f"kernels/{kernel['id']}", method="DELETE")
    poll_for(lambda: not [p for p in started if pid_alive(p)], timeout=30,
             what=f"the Flow's processes {started} to exit with the kernel")
