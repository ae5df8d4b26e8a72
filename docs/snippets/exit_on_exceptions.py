import time

from orchestra_nb import Doc, Executor, Flow, requests
from orchestra_nb.errors import ExecutorError


class Leaky(Executor):
    @requests(on="/run")
    def run(self, docs, parameters):
        raise MemoryError("the GPU is out of memory")


# a MemoryError leaves the replica in a state we do not trust: stop it, and let it be restarted
f = Flow().add(uses=Leaky, name="leaky", exit_on_exceptions=["MemoryError"])
with f:
    try:
        f.post("/run", [Doc(text="x")])
    except ExecutorError as err:
        print(err.exc_type)  # MemoryError

    # restart="on-failure" (the default) brings a fresh replica up in its place
    def restarts() -> int:
        return next(p["restarts"] for p in f.status()["processes"] if p["key"] == "leaky/0")

    deadline = time.monotonic() + 30
    while not (restarts() == 1 and f.is_ready()):
        assert time.monotonic() < deadline, "the replica was not restarted"
        time.sleep(0.2)
    print(restarts())  # 1
