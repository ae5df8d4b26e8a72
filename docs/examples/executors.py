"""Executors used by the example YAML files in this folder."""

from orchestra_nb import Executor, requests


class Upper(Executor):
    """Upper-cases every document's text."""

    @requests(on="/run")
    def upper(self, docs, parameters):
        for doc in docs:
            doc.text = (doc.text or "").upper()


class Suffix(Executor):
    """Appends a suffix (set with `uses_with`) to every document's text."""

    def __init__(self, suffix: str = "!", **kwargs):
        super().__init__(**kwargs)
        self.suffix = suffix

    @requests(on="/run")
    def add(self, docs, parameters):
        for doc in docs:
            doc.text = (doc.text or "") + self.suffix
