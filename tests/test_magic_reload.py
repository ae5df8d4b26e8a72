"""`%orchestra reload NAME EXECUTOR [CLASS]` rolls an executor onto the class a re-run cell defined."""

from __future__ import annotations

import types

import pytest

from orchestra_nb import Doc, DocList, Executor, Flow, requests
from orchestra_nb.notebook.magics import OrchestraMagics


class Greeter(Executor):
    @requests
    def greet(self, docs: DocList[Doc]) -> None:
        for d in docs:
            d.text = "hello"


def test_reload_magic_swaps_the_class_in_a_running_flow(capsys: pytest.CaptureFixture[str]) -> None:
    # the namespace a kernel would hold after the class's cell was edited and re-run
    class Greeter2(Executor):
        @requests
        def greet(self, docs: DocList[Doc]) -> None:
            for d in docs:
                d.text = "bonjour"

    f = Flow(name="greeting").add(uses=Greeter, name="greet")
    with f:
        shell = types.SimpleNamespace(user_ns={"f": f, "Greeter": Greeter2})
        magics = OrchestraMagics(shell)
        assert f.post("/x", Doc())[0].text == "hello"
        magics.line("reload f greet")
        assert f.post("/x", Doc())[0].text == "bonjour"
        assert "every replica rolled" in capsys.readouterr().out
        with pytest.raises(Exception, match="no executor 'nope'"):
            magics.line("reload f nope")
        with pytest.raises(Exception, match="no Executor class 'Missing'"):
            magics.line("reload f greet Missing")
