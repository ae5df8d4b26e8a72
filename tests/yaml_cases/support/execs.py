"""Executors the malformed-YAML corpus refers to (parsed with ast by the loader, never imported)."""

from orchestra_nb import Executor, requests


class Good(Executor):
    @requests(on="/run")
    def encode(self, docs, parameters):
        return docs


class Other(Good):
    def rank(self, docs, parameters):
        return docs


class NotAnExecutor:
    pass
