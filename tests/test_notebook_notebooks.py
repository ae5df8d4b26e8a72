"""Every notebook in notebooks/ runs top to bottom in a real kernel, and its own asserts pass.

Executed with nbclient, storing widget state as a saved notebook would, so the quickstart's stored panel
can be checked: what someone opening the executed notebook sees must show every executor ready.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import orchestra_processes, poll_for

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@functools.cache  # each notebook runs once per session; both tests read the executed copy
def execute(path: Path) -> Any:
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3", store_widget_state=True,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


def _titles(flow: str) -> list[int]:
    out = []
    for pid in orchestra_processes():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read().startswith(f"orchestra-nb: {flow}/".encode()):
                    out.append(pid)
        except OSError:
            continue
    return out


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs_and_its_asserts_pass(path: Path) -> None:
    nb = execute(path)  # raises CellExecutionError, with the failing cell, if any cell fails
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "colab-badge" in first.source
    install = nb.cells[1]
    assert "find_spec(\"orchestra_nb\") is None" in install.source  # a no-op where it is installed
    last_outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert "all checks passed" in "".join(o.get("text", "") for o in last_outputs)


def test_quickstart_stored_panel_shows_every_executor_ready() -> None:
    nb = execute(NOTEBOOKS / "quickstart.ipynb")
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]
    values = [m["state"].get("value", "") for m in state.values() if m["model_name"] == "HTMLModel"]
    status = [v for v in values if 'class="orchestra-nb-status"' in v]
    assert status, "no Status table among the stored widgets"
    table = status[-1]
    keys = re.findall(r'data-key="([^"]+)"', table)
    assert sorted(keys) == ["exclaim/0", "upper/0", "upper/1"]
    assert table.count('data-state="ready"') == len(keys) + 1  # every replica and the gateway
    # the Status tab's picture: every node coloured ready; the start-up progress folded into its end line
    from orchestra_nb.plot import STATE_COLOURS

    picture = [v for v in values if 'class="orchestra-topology"' in v][-1]
    fills = dict(re.findall(r'class="node"[^>]*>\s*<title>([^<]+)</title>.*?fill="(#[0-9a-f]{6})"', picture, re.S))
    assert fills == dict.fromkeys(["gateway", "upper", "exclaim", "gateway:out"], STATE_COLOURS["ready"])
    progress = [v for v in values if "class='orchestra-progress'" in v][-1]
    assert re.search(r"quickstart ready after \d+\.\d s", progress) and "data-phase" not in progress
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(shown) == 1 and {"text/html", "text/plain"} <= set(shown[0]["data"])
    poll_for(lambda: not _titles("quickstart"), timeout=10, what="the quickstart Flow to stop with its kernel")
