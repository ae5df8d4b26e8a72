"""One child process as the parent sees it: start, readiness, logs, exit, stop.

The child is a fresh interpreter (see child.py for why not `multiprocessing`'s spawn). The parent keeps
the write end of the child's stdin (the lifeline), reads JSON events from a status pipe and log lines
from the child's stdout/stderr, each in a small daemon thread that only updates state and never prints
into a notebook cell.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import cloudpickle

__all__ = ["ChildProcess"]


class ChildProcess:
    """A worker replica or gateway process."""

    def __init__(self, key: str, config: dict[str, Any], env: dict[str, str], *,
                 on_line: Callable[[ChildProcess, str], None] | None = None,
                 on_exit: Callable[[ChildProcess], None] | None = None,
                 on_event: Callable[[ChildProcess, dict[str, Any]], None] | None = None,
                 log_lines: int = 1000) -> None:
        self.key = key
        self.config = config
        self.env = env
        self.on_line = on_line
        self.on_exit = on_exit
        self.on_event = on_event
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: collections.deque[str] = collections.deque(maxlen=log_lines)
        self.ready = threading.Event()
        self.done = threading.Event()
        self.failure: dict[str, Any] | None = None
        self.info: dict[str, Any] = {}
        self.state = "created"
        self.restarts = 0
        self.started_at = 0.0
        self.stopping = False
        self._threads: list[threading.Thread] = []
        self._acks: set[int] = set()
        self._ack_cond = threading.Condition()
        self._next_ack = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.ready.clear()
        self.done.clear()
        self.failure = None
        self.stopping = False
        self.state = "starting"
        self.started_at = time.monotonic()
        self._emit({"event": "phase", "phase": "spawning"})
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env.update(self.env)
        env["ORCHESTRA_STATUS_FD"] = str(write_fd)
        env["ORCHESTRA_SYS_PATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        env["PYTHONUNBUFFERED"] = "1"
        data = cloudpickle.dumps(self.config)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestra_nb.runtime.child"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(write_fd,), env=env)
        finally:
            os.close(write_fd)
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
        self.proc.stdin.flush()
        proc = self.proc
        self._threads = [
            threading.Thread(target=self._read_status, args=(read_fd,), daemon=True,
                             name=f"orchestra-nb-status-{self.key}"),
            threading.Thread(target=self._read_output, args=(proc,), daemon=True,
                             name=f"orchestra-nb-output-{self.key}"),
        ]
        for t in self._threads:
            t.start()

    def _read_status(self, fd: int) -> None:
        with os.fdopen(fd, "r") as stream:
            for line in stream:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    self._event(event)
        # the status pipe closes when the child exits
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.wait()
        if not self.ready.is_set() and self.failure is None:
            self.failure = {"message": f"the process exited with code {self.proc.returncode if self.proc else '?'} "
                                       "before it was ready", "traceback": ""}
            self._emit({"event": "phase", "phase": "stopped"} if self.stopping else
                       {"event": "failed", "message": self.failure["message"]})
        self.state = "stopped" if self.stopping else ("failed" if self.failure else "exited")
        self.done.set()
        self.ready.set()  # wake anyone waiting for readiness
        if self.on_exit is not None:
            self.on_exit(self)

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            with contextlib.suppress(Exception):  # a display must never break the runtime
                self.on_event(self, {**event, "at": time.monotonic()})

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in ("phase", "ready", "failed"):
            self._emit(event)
        if kind == "ready":
            self.info = event
            self.state = "ready"
            self.ready.set()
        elif kind == "failed":
            self.failure = event
            self.state = "failed"
            # keep the reason with the output: tail() and f.logs() then say why a restart failed
            for line in str(event.get("traceback") or event.get("message") or "").splitlines():
                self.logs.append(line)
        elif kind == "stopped":
            self.state = "stopping"
        elif kind == "ack":
            with self._ack_cond:
                self._acks.add(int(event.get("id", -1)))
                self._ack_cond.notify_all()

    def _read_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.logs.append(line)
            if self.on_line is not None:
                with contextlib.suppress(Exception):
                    self.on_line(self, line)
        proc.stdout.close()

    def send_control(self, message: dict[str, Any]) -> None:
        """Send a control message to the child (a JSON line on its stdin)."""
        if self.proc is None or self.proc.stdin is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()

    def control(self, message: dict[str, Any], timeout: float = 10.0) -> bool:
        """Send a control message and wait until the child says it has applied it."""
        with self._ack_cond:
            self._next_ack += 1
            ack = self._next_ack
        self.send_control({**message, "ack": ack})
        deadline = time.monotonic() + timeout
        with self._ack_cond:
            while ack not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0 or self.done.is_set():
                    return False
                self._ack_cond.wait(min(left, 0.1))
            self._acks.discard(ack)
        return True

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.wait(timeout) and self.failure is None and self.state == "ready"

    def terminate(self) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def join(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def release(self) -> None:
        """Close the lifeline and reap; after this the process is surely gone."""
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if not self.join(2.0):
            self.kill()
            self.join(5.0)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(2.0)

    def tail(self, n: int = 30) -> str:
        return "\n".join(list(self.logs)[-n:])
