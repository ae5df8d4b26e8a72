"""Notebook support: the display bundle, the live panel and the `%orchestra` magics.

Nothing here is imported by `import orchestra_nb`; IPython and ipywidgets are imported only when a
notebook asks for them (displaying an orchestration, `f.panel()`, `%load_ext`). `%load_ext
orchestra_nb.notebook` registers the magics through `load_ipython_extension` below.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Register `%orchestra` and `%%orchestra` in `ipython` (called by `%load_ext`)."""
    from orchestra_nb.notebook.magics import load_ipython_extension as load

    load(ipython)
