from orchestra_nb import Doc, Executor, Flow, requests
from orchestra_nb.errors import ExecutorError


class Picky(Executor):
    @requests(on="/run")
    def run(self, docs, parameters):
        if parameters.get("fail"):
            raise ValueError("I only take requests without 'fail'")


with Flow().add(uses=Picky, name="picky") as f:
    try:
        f.post("/run", [Doc(text="x")], parameters={"fail": True})
    except ExecutorError as err:
        print(err.executor, err.endpoint, err.exc_type)  # picky /run ValueError
        print(err.message)  # I only take requests without 'fail'
        # err.remote_traceback holds the traceback from inside the replica

    # the replica is still serving: one failed request does not take it down
    print(f.post("/run", [Doc(text="x")]).texts)  # ['x']
