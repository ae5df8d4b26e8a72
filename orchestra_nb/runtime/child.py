"""Inside a child process: bootstrap shared by worker replicas and the gateway.

The parent starts ``python -m orchestra_nb.runtime.child`` — a fresh interpreter, which is what the
`spawn` start method gives, minus its re-import of the parent's `__main__` (the step that breaks scripts
without a main guard and notebook-defined classes). The child then:

1. reads its config from stdin: a length-prefixed cloudpickle written by the parent that started it (a
   trusted local pipe; nothing that arrives over the network is ever unpickled);
2. keeps stdin as a lifeline and control channel (JSON lines from the parent, e.g. a new token): EOF means the parent died (SIGKILL included), and the child exits at once.
   (Linux's PR_SET_PDEATHSIG is not used: it fires when the *thread* that started the child exits, which
   would kill replicas started or restarted from short-lived threads. The pipe has no such catch: the
   kernel closes it when the parent dies, however it dies, and only the parent holds its write end.);
3. ignores SIGINT (Jupyter's stop button signals the whole process group) and treats SIGTERM as a
   graceful stop;
4. sets its process title, e.g. ``orchestra-nb: flow/encoder/0``;
5. reports ``ready`` or ``failed`` (with the traceback) as JSON lines on the status pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any

__all__ = ["Status", "install_stop_handler", "main", "on_control"]


class Status:
    """JSON-line events to the parent over the status pipe."""

    def __init__(self, fd: int | None) -> None:
        self._file = os.fdopen(fd, "w", buffering=1) if fd is not None else None
        self._lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        line = json.dumps({"event": event, **fields}, default=str)
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._file.write(line + "\n")
            self._file.flush()


_control_handlers: list[Any] = []


def on_control(handler: Any, status: Status) -> None:
    """Register `handler(message: dict)` (sync or async), run on the child's event loop for each control
    message; when the message carries an `ack` id, the parent is told once the handler has finished."""
    loop = asyncio.get_running_loop()

    async def run(message: dict[str, Any]) -> None:
        try:
            result = handler(message)
            if asyncio.iscoroutine(result):
                await result
        finally:
            if "ack" in message:
                status.send("ack", id=message["ack"])

    _control_handlers.append((loop, run))


def _dispatch(message: dict[str, Any]) -> None:
    for loop, run in list(_control_handlers):
        loop.call_soon_threadsafe(lambda m=message, r=run: asyncio.ensure_future(r(m)))


def _watch_lifeline(socket_path: str | None) -> None:
    """Read control messages (JSON lines from the parent) until EOF; EOF means the parent is gone."""
    parent = os.getppid()

    def watch() -> None:
        with contextlib.suppress(Exception):
            for line in sys.stdin.buffer:
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict):
                        _dispatch(message)
        if socket_path:
            _tidy_after_parent(parent, socket_path)
        os._exit(0)

    threading.Thread(target=watch, name="orchestra-nb-lifeline", daemon=True).start()


def _tidy_after_parent(parent: int, socket_path: str) -> None:
    """A parent that died without closing (SIGKILL, a killed kernel) cannot remove its private socket
    folder: each replica removes its own socket, and whichever empties the folder removes it too.

    A parent that is alive closes the lifeline only after stopping its children, and removes the folder
    itself; the kernel closes a dying parent's pipes before it re-parents the children, so wait briefly
    to tell the two apart.
    """
    deadline = time.monotonic() + 0.5
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)
    if os.getppid() == parent:
        return
    folder = os.path.dirname(socket_path)
    with contextlib.suppress(OSError):
        os.unlink(socket_path)
    if os.path.basename(folder).startswith("orchestra-nb-"):
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only when empty: the last replica out removes it


def read_config() -> dict[str, Any]:
    import cloudpickle

    head = sys.stdin.buffer.read(8)
    if len(head) != 8:
        raise SystemExit("orchestra-nb child: no config on stdin (this module is started by orchestra-nb)")
    (size,) = struct.unpack("<Q", head)
    data = sys.stdin.buffer.read(size)
    config: dict[str, Any] = cloudpickle.loads(data)
    return config


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the parent's sys.path, in the parent's order, so classes sent by reference import the same way
    entries = [e for e in os.environ.pop("ORCHESTRA_SYS_PATH", "").split(os.pathsep) if e]
    sys.path[:] = entries + [p for p in sys.path if p not in entries]
    config = read_config()
    fd = os.environ.pop("ORCHESTRA_STATUS_FD", None)
    status = Status(int(fd) if fd else None)
    if config.get("lifeline", True):
        _watch_lifeline(config.get("stream_path"))
    with contextlib.suppress(Exception):
        import setproctitle

        setproctitle.setproctitle(config["title"])
    from orchestra_nb import logs

    logs.setup_child(config.get("log_config"), name=config.get("log_name", ""),
                     replica=config.get("replica_id"))
    status.send("phase", phase="importing")  # the runtime, then the executor's own modules
    try:
        if config["kind"] == "worker":
            from orchestra_nb.runtime.worker import run_worker as run
        else:
            from orchestra_nb.runtime.gateway import run_gateway as run
        asyncio.run(run(config, status))
    except BaseException as exc:  # report every start-up failure with its traceback
        if not isinstance(exc, SystemExit) or exc.code not in (0, None):
            from orchestra_nb.errors import ConfigError

            # a ConfigError already says what is wrong and how to fix it: our internals add nothing
            tb = str(exc) if isinstance(exc, ConfigError) else traceback.format_exc()
            status.send("failed", message=f"{type(exc).__name__}: {exc}", traceback=tb)
            sys.stderr.flush()
            os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def install_stop_handler(stop: asyncio.Event) -> None:
    """SIGTERM sets `stop` (graceful); SIGINT stays ignored."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)


if __name__ == "__main__":
    # run the imported module's main, not this __main__ copy: worker and gateway code import
    # orchestra_nb.runtime.child, and the control handlers they register must be the ones dispatched to
    from orchestra_nb.runtime.child import main as _main

    _main()
