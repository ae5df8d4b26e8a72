"""`%%orchestra` and `%orchestra` with the mistakes people make in cells, and the line commands on a
running Flow; driven through OrchestraMagics with a namespace like a kernel's (the real-kernel run of
the magics is in test_notebook_kernel.py)."""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("IPython")

from IPython.core.error import UsageError

import orchestra_nb
from orchestra_nb import Doc, DocList, Executor, requests
from orchestra_nb.notebook.magics import OrchestraMagics


class Upper(Executor):
    @requests(on="/up")
    def up(self, docs: DocList[Doc], parameters: dict[str, Any]) -> None:
        for d in docs:
            d.text = (d.text or "").upper()


BODY = "jtype: Flow\nwith: {{name: {name}}}\nexecutors:\n  - name: up\n    uses: {uses}\n"


def magics(**ns: Any) -> OrchestraMagics:
    return OrchestraMagics(types.SimpleNamespace(user_ns={"Upper": Upper, **ns}))


@pytest.mark.parametrize(("line", "body", "expected"), [
    ("g", "jtype: Flow\nexecutors:\n  - name: up\n   uses: Upper\n",
     r"^%%orchestra: cell line 5, column 4: invalid YAML: this line's indentation"),
    ("g", "jtype: Flow\nexecutor:\n  - name: up\n", r"cell line 3, column 1: .*did you mean 'executors'\?"),
    ("g", "jtype: Flwo\nexecutors: []\n", r"cell line 2, column 8: .*did you mean 'Flow'\?"),
    ("g", BODY.format(name="m", uses="Uper"), r"(?s)cell line 6.*uses: 'Uper' is not a class of this "
                                              r"notebook; did you mean 'Upper'\?"),
    ("g", BODY.format(name="m", uses="Nothing"), r"'Nothing' is not a class of this notebook \(its Executor "
                                                 r"classes: Upper\); define it in a cell above"),
    ("g --gpus abc", BODY.format(name="m", uses="Upper"), r"^%%orchestra --gpus abc: gpus='abc' is not understood"),
    ("g --export yml x.yml", BODY.format(name="m", uses="Upper"), r"--export: unknown format 'yml'; use one of yaml"),
    ("g --replcae", BODY.format(name="m", uses="Upper"), r"unrecognized arguments: --replcae"),
    ("1g", BODY.format(name="m", uses="Upper"), r"'1g' is not a valid Python variable name"),
    ("g", "  \n", r"the cell is empty"),
])
def test_cell_mistakes_are_one_line_usage_errors_in_cell_terms(line: str, body: str, expected: str) -> None:
    with pytest.raises(UsageError) as info:
        magics().cell(line, body)
    message = str(info.value)
    assert re.search(expected, message), message
    assert "<string>" not in message and "orchestra_nb.notebook.cell." not in message
    assert not orchestra_nb.running()  # nothing was started on the way


def test_line_commands_on_a_running_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = magics()
    m.cell("f --no-panel", BODY.format(name="magic-lines", uses="Upper"))
    f = m.shell.user_ns["f"]
    try:
        assert f.post("/up", [Doc(text="a")]).texts == ["A"]
        m.line("scale f up 2")
        assert "'up' of 'magic-lines' now runs 2 replica(s)" in capsys.readouterr().out
        assert len(f.status()["executors"]["up"]) == 2
        m.line("status f")  # outside a kernel the display is its text/plain
        assert "magic-lines" in capsys.readouterr().out
        m.line("logs f 5")
        assert "serving up" in capsys.readouterr().out
        m.line(f"export magic-lines yaml {tmp_path / 'f.yml'}")  # by the Flow's name, too
        assert "name: magic-lines" in (tmp_path / "f.yml").read_text()
        assert f"wrote {tmp_path / 'f.yml'}" in capsys.readouterr().out
        for bad, expected in [("scale f up two", "N (the replica count) must be a whole number of at least 1, "
                                                 "got 'two'"),
                              ("scale f up 0", "got '0'"),
                              ("scale f nope 2", "no executor named 'nope'; the Flow has ['up']"),
                              ("logs f x", "N (how many lines per process) must be a whole number"),
                              ("status", "expected 1 argument(s), got 0"),
                              ("sacle f up 2", "unknown command 'sacle'; did you mean 'scale'?"),
                              ("stop nothing", "no orchestration called 'nothing'; known: f, magic-lines")]:
            with pytest.raises(UsageError) as info:
                m.line(bad)
            assert expected in str(info.value), (bad, str(info.value))
        m.line("stop f")
        assert capsys.readouterr().out.strip() == "stopped Flow 'magic-lines'"
        m.line("stop f")
        assert capsys.readouterr().out.strip() == "Flow 'magic-lines' was already closed"
        with pytest.raises(UsageError, match=r"'magic-lines' is closed, not serving; start it first"):
            m.line("scale f up 1")
    finally:
        f.close()


def test_tunnel_option_exposes_and_the_panel_shows_the_public_url(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`%%orchestra NAME --tunnel` (ngrok faked at the binary: the one thing that cannot exist here):
    the public URL and a curl line carrying the token reach the Endpoints tab."""
    pytest.importorskip("pyngrok")
    pytest.importorskip("ipywidgets")
    from orchestra_nb.notebook.panel import Panel
    from orchestra_nb.notebook.tunnel import tunnel_of
    from tests import fake_ngrok
    from tests.test_auth import http_call

    monkeypatch.setenv("NGROK_AUTHTOKEN", "ngrok-authtoken-for-tests")
    monkeypatch.setenv("PYNGROK_NGROK_PATH", str(fake_ngrok.install(tmp_path)))
    monkeypatch.setenv("FAKE_NGROK_RECORD", str(tmp_path / "ngrok-starts.jsonl"))
    m = magics()
    body = BODY.format(name="magic-tunnel", uses="Upper").replace("jtype: Flow\nwith: {name: magic-tunnel}",
                                                                  "jtype: Flow\nwith: {name: magic-tunnel, "
                                                                  "protocol: [grpc, http]}")
    m.cell("t --no-panel --tunnel", body)
    t = m.shell.user_ns["t"]
    try:
        tunnel = tunnel_of(t)
        assert tunnel is not None and tunnel.provider == "ngrok"
        status, data = http_call(tunnel.url, "/post", {"on": "/up", "docs": [{"text": "pub"}]},
                                 headers={"Authorization": f"Bearer {tunnel.token}"})
        assert (status, [d["text"] for d in data["docs"]]) == (200, ["PUB"])
        panel = Panel(t, start=False)
        try:
            eps = panel.endpoints_html.value
            assert f">{tunnel.url}</a>" in eps  # a link the user can click
            assert f"Bearer {tunnel.token}" in eps and f"{tunnel.url.rstrip('/')}/post" in eps
        finally:
            panel.close()
    finally:
        t.close()
