# A script without an `if __name__ == "__main__":` guard, with its Executor defined in __main__:
# both work, because replicas start in a fresh interpreter that never re-imports this file.
import os

from orchestra_nb import Doc, Executor, Flow, requests


class WhoAmI(Executor):
    @requests(on="/pid")
    def pid(self, docs, parameters):
        for doc in docs:
            doc.tags["pid"] = os.getpid()


with Flow().add(uses=WhoAmI, name="who") as f:
    (doc,) = f.post("/pid", [Doc()])
    print(doc.tags["pid"] != os.getpid())  # True: the handler ran in its own process
