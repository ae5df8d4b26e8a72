"""The Quickstart demo: a 3-executor Flow serving real requests over gRPC and HTTP.

    pip install -e . && python examples/demo.py

The executors are defined right here in `__main__` (as they would be in a notebook cell); each replica
runs in its own spawned process, and everything stops when the `with` block ends.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from typing import Any

import numpy as np

from orchestra_nb import Doc, DocList, Executor, Flow, requests

DIM = 64


class Normalize(Executor):
    """Lower-case and strip the text."""

    @requests
    def clean(self, docs: DocList[Doc]) -> None:
        for d in docs:
            d.text = " ".join((d.text or "").lower().split())


class HashEmbed(Executor):
    """A tiny bag-of-words embedding (hashing trick): no model download needed for the demo."""

    @requests
    def embed(self, docs: DocList[Doc]) -> None:
        for d in docs:
            vec = np.zeros(DIM, dtype=np.float32)
            for word in (d.text or "").split():
                vec[int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
            norm = float(np.linalg.norm(vec)) or 1.0
            d.embedding = vec / norm


class MemoryIndex(Executor):
    """Keeps indexed docs in memory; /search returns the closest ones as matches."""

    def __init__(self, top_k: int = 2, **kwargs: Any) -> None:
        self.top_k = top_k
        self.docs: list[Doc] = []

    @requests(on="/index")
    def index(self, docs: DocList[Doc]) -> dict[str, Any]:
        self.docs.extend(docs)
        return {"indexed": len(self.docs)}

    @requests(on="/search")
    def search(self, docs: DocList[Doc], parameters: dict[str, Any]) -> None:
        top_k = int(parameters.get("top_k", self.top_k))
        matrix = np.stack([d.embedding for d in self.docs]) if self.docs else np.zeros((0, DIM))
        for d in docs:
            scores = matrix @ d.embedding if len(matrix) else np.zeros(0)
            best = np.argsort(-scores)[:top_k]
            d.matches = [Doc(id=self.docs[i].id, text=self.docs[i].text, scores={"cosine": float(scores[i])})
                         for i in best]


def main() -> None:
    flow = (Flow(name="demo", protocol=["grpc", "http"])
            .add(uses=Normalize, name="normalize")
            .add(uses=HashEmbed, name="embed", replicas=2)
            .add(uses=MemoryIndex, name="index", uses_with={"top_k": 2}))
    with flow:
        print(f"serving: gRPC on port {flow.ports['grpc']}, HTTP on port {flow.ports['http']}")
        corpus = ["The cat sat on the mat", "Dogs chase cats in the park", "Stock markets fell sharply today",
                  "A kitten sleeps on a warm mat", "Interest rates and the stock market"]
        out = flow.post("/index", [Doc(text=t) for t in corpus])
        print(f"indexed {out.results['index']['indexed']} docs over gRPC")
        for query in ("cat on the mat", "stock market news"):
            hit = flow.post("/search", Doc(text=query))[0]
            print(f"gRPC  search {query!r}:")
            for m in hit.matches:
                print(f"    {m.scores['cosine']:.3f}  {m.text}")
        body = json.dumps({"docs": [{"text": "sleeping kitten"}], "parameters": {"top_k": 1}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{flow.ports['http']}/search", data=body,
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        best = answer["docs"][0]["matches"][0]
        print(f"HTTP  search 'sleeping kitten': {best['scores']['cosine']:.3f}  {best['text']}")
        status = flow.status()
        pids = {name: [r["pid"] for r in reps] for name, reps in status["executors"].items()}
        print(f"replica processes: {pids}")
    print("closed: no process or port left behind")


if __name__ == "__main__":
    main()
