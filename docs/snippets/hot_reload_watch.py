import pathlib
import time

from orchestra_nb import Doc, Flow

pathlib.Path("shout.py").write_text(
    "from orchestra_nb import Executor, requests\n"
    "class Shout(Executor):\n"
    "    @requests(on='/run')\n"
    "    def run(self, docs, parameters):\n"
    "        for d in docs: d.text = d.text.upper()\n"
)

# reload=True watches the executor's source files and rolls its replicas when they change
f = Flow().add(uses="Shout", py_modules=["shout.py"], name="shout", reload=True)
with f:
    print(f.post("/run", [Doc(text="hi")]).texts)  # ['HI']
    source = pathlib.Path("shout.py").read_text()
    pathlib.Path("shout.py").write_text(source.replace("d.text.upper()", "d.text.upper() + '!'"))

    deadline = time.monotonic() + 30  # the replicas pick the change up within a moment
    while f.post("/run", [Doc(text="hi")]).texts != ["HI!"]:
        assert time.monotonic() < deadline, "the edit was not picked up"
        time.sleep(0.2)
    print(f.post("/run", [Doc(text="hi")]).texts)  # ['HI!']
