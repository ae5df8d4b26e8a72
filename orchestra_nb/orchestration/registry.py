"""The per-process registry of running orchestrations.

In a notebook kernel, starting an orchestration with the name of a running one closes the old one first,
so re-running a cell never leaves a second copy bound to ports. Everything still running is closed at
interpreter exit.
"""

from __future__ import annotations

import atexit
import sys
import threading
import weakref
from typing import Any

__all__ = ["close_all", "in_notebook", "register", "running", "unregister"]

_lock = threading.Lock()
_running: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def in_notebook() -> bool:
    """True inside a Jupyter/Colab kernel (checked without importing IPython)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def register(obj: Any) -> None:
    """Record a starting orchestration; in a kernel, close a running one of the same name first."""
    with _lock:
        same = [o for o in _running.values() if o is not obj and o.name == obj.name]
    if in_notebook():
        for old in same:
            old.close()
    with _lock:
        _running[id(obj)] = obj


def unregister(obj: Any) -> None:
    with _lock:
        _running.pop(id(obj), None)


def running() -> list[Any]:
    """The orchestrations of this process that are running now."""
    with _lock:
        return list(_running.values())


def close_all() -> None:
    """Close every running orchestration of this process."""
    for obj in running():
        try:
            obj.close()
        except Exception:  # closing at exit must reach every one of them
            pass


atexit.register(close_all)
