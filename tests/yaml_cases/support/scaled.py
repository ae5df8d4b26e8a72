"""An Executor whose constructor takes arguments, for the `uses_with` cases (parsed, never imported)."""

from orchestra_nb import Executor, requests


class Scaled(Executor):
    def __init__(self, factor: float, *, label: str = "x", **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    @requests(on="/run")
    def run(self, docs, parameters):
        return docs
