"""Ready-made executors around real models (the `torch` extra).

Importing this package is light: each model module imports torch and its libraries only inside the
executor, in the replica process, so the parent (often a notebook kernel) never loads torch or touches
CUDA. Reference an executor as `uses=MiniLMEncoder` after importing it from here, or as
`uses='orchestra_nb.models.MiniLMEncoder'` in YAML.
"""

from __future__ import annotations

from orchestra_nb.models.minilm import MiniLMEncoder

__all__ = ["MiniLMEncoder"]
