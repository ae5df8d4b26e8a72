"""Hot reload: watch executors' source files (watchfiles) and roll their replicas when they change.

Only executors with `reload=True` are watched. Their files are found without importing user code in the
parent: the `py_modules` files, the source file of a class given by reference, or the module file a
dotted `uses` names (found with `importlib.util.find_spec`). A class defined in a notebook cell has no
file; re-run its cell and call `f.reload('name', NewClass)` instead.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import threading
from typing import Any

from orchestra_nb.logs import get_logger
from orchestra_nb.spec.models import ExecutorSpec

__all__ = ["Reloader", "watched_files"]

log = get_logger("reload")


def watched_files(ex: ExecutorSpec, base_dir: str | None) -> list[str]:
    files: list[str] = []
    for path in ex.py_modules:
        files.append(os.path.abspath(os.path.join(base_dir or os.getcwd(), path)))
    uses = ex.uses
    if isinstance(uses, type) and uses.__module__ != "__main__":
        try:
            source = inspect.getsourcefile(uses)
        except TypeError:
            source = None
        if source:
            files.append(os.path.abspath(source))
    elif isinstance(uses, str) and "." in uses and not uses.endswith((".yml", ".yaml")) and not ex.py_modules:
        try:
            spec = importlib.util.find_spec(uses.rpartition(".")[0])
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            files.append(os.path.abspath(spec.origin))
    elif isinstance(uses, str) and uses.endswith((".yml", ".yaml")):
        files.append(os.path.abspath(os.path.join(base_dir or os.getcwd(), uses)))
    return sorted(set(files))


class Reloader:
    """A daemon thread that rolls an executor's replicas when one of its files changes."""

    def __init__(self, orchestration: Any, base_dir: str | None) -> None:
        self.orchestration = orchestration
        self.targets: dict[str, list[str]] = {}
        for ex in orchestration.flow_spec().executors:
            if ex.reload and ex.name:
                files = watched_files(ex, base_dir)
                if files:
                    self.targets[ex.name] = files
                else:
                    log.warning("reload=True on %r, but it has no source file to watch (defined in a notebook?)"
                                "; use f.reload(%r, NewClass) after re-running its cell", ex.name, ex.name)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0

    def start(self) -> None:
        if not self.targets:
            return
        self._thread = threading.Thread(target=self._run, name="orchestra-nb-reloader", daemon=True)
        self._thread.start()
        self._ready.wait(10)  # edits made after start() returns are seen

    def _run(self) -> None:
        import watchfiles

        folders = sorted({os.path.dirname(f) for files in self.targets.values() for f in files})
        for changes in watchfiles.watch(*folders, stop_event=self._stop, debounce=200, step=50,
                                        raise_interrupt=False, yield_on_timeout=True, rust_timeout=200):
            self._ready.set()  # the first (empty) yield comes once the watcher is in place
            changed = {os.path.abspath(path) for _, path in changes}
            for name, files in self.targets.items():
                if changed & set(files):
                    log.info("source of %r changed: rolling its replicas", name)
                    try:
                        self.orchestration.reload(name)
                        self.reloads += 1
                    except Exception as exc:  # keep watching: the old replicas still serve
                        log.error("reload of %r failed, the old replicas keep serving: %s", name, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
