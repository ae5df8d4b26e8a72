import numpy as np

from orchestra_nb import Doc, DocList, Executor, Flow, requests


class TextDoc(Doc):
    lang: str = "en"  # a typed schema: Doc's fields plus your own


class Embedder(Executor):
    def __init__(self, dim: int = 4, **kwargs):
        super().__init__(**kwargs)  # runtime_args (name, replica_id, device, ...) are set by now
        self.dim = dim  # load your model here, once per replica

    @requests(on="/embed")
    def embed(self, docs: DocList[TextDoc], parameters) -> DocList[TextDoc]:
        scale = parameters.get("scale", 1.0)
        for doc in docs:
            doc.embedding = np.full(self.dim, len(doc.text) * scale, dtype=np.float32)
        return docs

    @requests(on="/lang")
    async def lang(self, docs: DocList[TextDoc], parameters):  # async handlers run on the event loop
        for doc in docs:
            doc.tags["lang"] = doc.lang

    def close(self) -> None:  # called when the replica stops
        pass


f = Flow().add(uses=Embedder, name="embedder", uses_with={"dim": 3})

with f:
    (doc,) = f.post("/embed", [TextDoc(text="four")], parameters={"scale": 0.5})
    print(doc.embedding)  # [2. 2. 2.]
    (doc,) = f.post("/lang", [TextDoc(text="vier", lang="de")])
    print(doc.tags)  # {'lang': 'de'}
