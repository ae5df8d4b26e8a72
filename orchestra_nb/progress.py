"""Start-up progress: which phase every replica is in while a Flow starts, for the console and the panel.

Loading a model can take a minute; a cell that shows nothing meanwhile looks hung. Each child process
goes through the phases in `PHASES` (the parent marks `spawning` when it starts the process; the child
reports `importing` before it resolves the executor class, `loading` before it constructs it, `serving`
once its server is up; `ready` is the readiness handshake). A replica that fails is `failed`.

The model, `StartupProgress`, is plain data behind a lock: `update(key, phase)` is called from the
supervisor's status-reader threads, `finish(ok, reason)` once start() returns or raises. Readers either
take a `snapshot()` (a JSON-able dict, what the panel's widgets and `progress_html` render) or
`subscribe` a callback, which runs on the updating thread and must only record or assign, never block.
Phases are stamped with the parent's monotonic clock on arrival, so a child's clock never matters.

Each executor's row shows its least advanced replica: the slow one is what the user waits for. Its bar
is the mean over its replicas of how far each got through the phases.

`ConsoleProgress` draws the model with rich. On a terminal it is a live display, one bar per executor
with the current phase and the time spent in it, ticking while nothing else happens; elsewhere (CI
logs, a redirected stderr) a live display would only show its last frame, so it prints one line per
phase change instead. Either way it ends with one line saying ready in how long, or what failed and why.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.text import Text

__all__ = ["FAILED", "PHASES", "ConsoleProgress", "ReplicaProgress", "StartupProgress", "executor_of",
           "progress_html", "progress_text"]

PHASES = ("spawning", "importing", "loading", "serving", "ready")
FAILED = "failed"
Listener = Callable[["StartupProgress"], None]


def executor_of(key: str) -> str:
    """The executor a replica key belongs to: 'encoder/shard1/0' -> 'encoder', 'gateway' -> 'gateway'."""
    return key.split("/", 1)[0]


@dataclass
class ReplicaProgress:
    key: str
    phase: str
    since: float
    history: list[tuple[str, float]] = field(default_factory=list)
    detail: str | None = None

    @property
    def fraction(self) -> float:
        """How far through PHASES (an unknown phase counts as the last known one before it)."""
        if self.phase == FAILED:
            return 1.0
        known = [p for p, _ in self.history if p in PHASES]
        if not known:
            return 0.0
        return PHASES.index(known[-1]) / (len(PHASES) - 1)

    @property
    def rank(self) -> int:
        known = [p for p, _ in self.history if p in PHASES]
        return PHASES.index(known[-1]) if known else -1


class StartupProgress:
    """Per-replica start-up phases of one orchestration (thread-safe)."""

    def __init__(self, name: str = "flow", keys: Iterable[str] = (), *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.clock = clock
        self.started = clock()
        self.ended: float | None = None
        self.ok: bool | None = None
        self.reason: str | None = None
        self.replicas: dict[str, ReplicaProgress] = {}
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        for key in keys:
            self.replicas[key] = ReplicaProgress(key, "waiting", self.started)

    @classmethod
    def for_spec(cls, spec: Any) -> StartupProgress:
        """One row per replica of a FlowSpec (keys as the supervisor names them) plus the gateway."""
        from orchestra_nb.runtime.supervisor import ReplicaKey

        keys = [str(ReplicaKey(ex.name or "executor", s, r)) for ex in spec.executors
                for s in range(ex.shards) for r in range(ex.replicas)]
        return cls(spec.name, [*keys, "gateway"])

    # ---- writing -------------------------------------------------------------------------------
    def update(self, key: str, phase: str, at: float | None = None, detail: str | None = None) -> None:
        """Record that replica `key` entered `phase` (at `at`, the monotonic clock; now by default).

        The signature is what `Supervisor(on_phase=...)` calls, so `on_phase=progress.update` fits.
        """
        now = self.clock() if at is None else at
        with self._lock:
            rep = self.replicas.get(key)
            if rep is None:
                rep = self.replicas[key] = ReplicaProgress(key, phase, now)
            rep.phase, rep.since, rep.detail = phase, now, detail
            rep.history.append((phase, now))
        self._notify()

    def finish(self, ok: bool, reason: str | None = None) -> None:
        """Start-up ended: everything ready (`ok`), or failed with `reason`."""
        with self._lock:
            if self.ended is not None:
                return
            self.ended, self.ok, self.reason = self.clock(), ok, reason
        self._notify()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(self)` after every change; returns a function that unsubscribes it."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(self)

    # ---- reading -------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.ended is not None

    def elapsed(self) -> float:
        return (self.ended if self.ended is not None else self.clock()) - self.started

    def executors(self) -> dict[str, list[ReplicaProgress]]:
        with self._lock:
            out: dict[str, list[ReplicaProgress]] = {}
            for key, rep in self.replicas.items():
                out.setdefault(executor_of(key), []).append(rep)
            return out

    def snapshot(self) -> dict[str, Any]:
        """Plain data for UIs: per executor its replicas, how many are ready, its slowest phase."""
        now = self.clock() if self.ended is None else self.ended
        with self._lock:
            executors = {}
            for name, reps in self.executors().items():
                failed = [r for r in reps if r.phase == FAILED]
                slowest = failed[0] if failed else min(reps, key=lambda r: (r.rank, r.since))
                executors[name] = {
                    "replicas": len(reps),
                    "ready": sum(r.phase == "ready" for r in reps),
                    "phase": slowest.phase,
                    "detail": slowest.detail,
                    "phase_s": round(max(0.0, now - slowest.since), 3),
                    "fraction": round(sum(r.fraction for r in reps) / len(reps), 4),
                    "failed": bool(failed),
                    # when the last replica became ready, from the start (None until all are)
                    "ready_s": round(max(r.since for r in reps) - self.started, 3)
                    if all(r.phase == "ready" for r in reps) else None,
                    "keys": {r.key: r.phase for r in reps},
                    "history": {r.key: [p for p, _ in r.history] for r in reps},
                }
            return {"name": self.name, "finished": self.finished, "ok": self.ok, "reason": self.reason,
                    "elapsed_s": round(self.elapsed(), 3), "executors": executors}


# ---- HTML (for the panel and _repr_html_) ---------------------------------------------------------
def progress_html(snapshot: dict[str, Any], *, bars: bool = True) -> str:
    """A table of progress bars, one per executor, from `StartupProgress.snapshot()`.

    With `bars=False` only the closing line is drawn (the panel's view once everything is ready).
    """
    esc = html.escape
    rows = []
    for name, ex in snapshot["executors"].items() if bars else ():
        colour = "#d9534f" if ex["failed"] else ("#5cb85c" if ex["ready"] == ex["replicas"] else "#f0ad4e")
        pct = int(ex["fraction"] * 100)
        phase = ex["phase"] + (f" ({ex['detail']})" if ex.get("detail") else "")
        rows.append(
            f"<tr data-executor='{esc(name)}' data-phase='{esc(ex['phase'])}'>"
            f"<td style='text-align:left;padding-right:8px'><b>{esc(name)}</b></td>"
            f"<td><div style='width:160px;height:10px;background:#e9ecef;border-radius:3px'>"
            f"<div data-fraction='{ex['fraction']}' style='width:{pct}%;height:10px;background:{colour};"
            f"border-radius:3px'></div></div></td>"
            f"<td style='text-align:left;padding-left:8px'>{ex['ready']}/{ex['replicas']} ready</td>"
            f"<td style='text-align:left;padding-left:8px'>{esc(phase)} {ex['phase_s']:.1f} s</td></tr>")
    if snapshot["finished"]:
        # the reason goes last: it can be long, and the time should not trail behind it
        reason = "" if snapshot["ok"] else f": {snapshot['reason'] or 'unknown reason'}"
        word = "ready" if snapshot["ok"] else "failed"
        footer = (f"<div>{esc(snapshot['name'])} {word} after {snapshot['elapsed_s']:.1f} s"
                  f"{esc(reason)}</div>")
    else:
        footer = f"<div>{esc(snapshot['name'])} starting… {snapshot['elapsed_s']:.1f} s</div>"
    table = f"<table>{''.join(rows)}</table>" if rows else ""
    return f"<div class='orchestra-progress'>{table}{footer}</div>"


def progress_text(snapshot: dict[str, Any]) -> str:
    """The same as `progress_html` in plain text (the `text/plain` of a notebook output)."""
    lines = []
    for name, ex in snapshot["executors"].items():
        detail = f" ({ex['detail']})" if ex.get("detail") else ""
        lines.append(f"{name:<16} {ex['ready']}/{ex['replicas']} ready  {ex['phase']} {ex['phase_s']:.1f} s{detail}")
    if snapshot["finished"]:
        reason = "" if snapshot["ok"] else f": {snapshot['reason'] or 'unknown reason'}"
        lines.append(f"{snapshot['name']} {'ready' if snapshot['ok'] else 'failed'} after "
                     f"{snapshot['elapsed_s']:.1f} s{reason}")
    else:
        lines.append(f"{snapshot['name']} starting… {snapshot['elapsed_s']:.1f} s")
    return "\n".join(lines)


# ---- rich console ---------------------------------------------------------------------------------
class _PhaseColumn(ProgressColumn):
    """The executor's slowest phase and the time spent in it, read from the model at each render."""

    def __init__(self, model: StartupProgress) -> None:
        super().__init__()
        self.model = model

    def render(self, task: Task) -> Text:
        ex = self.model.snapshot()["executors"].get(task.fields["executor"])
        if ex is None:
            return Text("")
        style = "red" if ex["failed"] else ("green" if ex["ready"] == ex["replicas"] else "yellow")
        if ex["ready_s"] is not None:
            return Text(f"{ex['ready']}/{ex['replicas']} ready after {ex['ready_s']:.1f}s", style=style,
                        no_wrap=True, overflow="ellipsis")
        detail = f" ({ex['detail']})" if ex.get("detail") else ""
        return Text(f"{ex['ready']}/{ex['replicas']} ready  {ex['phase']} {ex['phase_s']:.1f}s{detail}",
                    style=style, no_wrap=True, overflow="ellipsis")


class ConsoleProgress:
    """Shows a StartupProgress on a rich Console; `live=None` picks live bars on a terminal only."""

    def __init__(self, model: StartupProgress, console: Console | None = None, *,
                 live: bool | None = None, auto_refresh: bool = True) -> None:
        self.model = model
        self.console = console or Console(stderr=True)
        self.live = (self.console.is_terminal and not self.console.is_jupyter) if live is None else live
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._seen: dict[str, int] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._lock = threading.RLock()
        self._done = False
        if self.live:
            self._progress = Progress(SpinnerColumn(finished_text="•"), TextColumn("[bold]{task.description}"),
                                      BarColumn(bar_width=20), _PhaseColumn(model), console=self.console,
                                      auto_refresh=auto_refresh, transient=False)

    def start(self) -> ConsoleProgress:
        if self._progress is not None:
            self._progress.start()
        self._unsubscribe = self.model.subscribe(self._changed)
        self._changed(self.model)
        return self

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with self._lock:
            if self._progress is not None and self._progress.live.is_started:
                self._render_bars()
                self._progress.stop()

    def __enter__(self) -> ConsoleProgress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def refresh(self) -> None:
        """Redraw now (the live display also redraws by itself unless auto_refresh is off)."""
        with self._lock:
            if self._progress is not None and not self._done:
                self._render_bars()

    def log(self, line: str) -> None:
        """Print a line (a child's output) above the live bars instead of through them."""
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _changed(self, model: StartupProgress) -> None:
        with self._lock:
            if self._done:
                return
            if self._progress is not None:
                self._render_bars()
            else:
                self._print_changes()
            if model.finished:
                self._done = True
                if self._progress is not None:
                    self._progress.stop()
                self._print_end()

    def _render_bars(self) -> None:
        assert self._progress is not None
        for name, ex in self.model.snapshot()["executors"].items():
            task = self._tasks.get(name)
            if task is None:
                task = self._tasks[name] = self._progress.add_task(name, total=1.0, executor=name)
            self._progress.update(task, completed=ex["fraction"])
            if ex["ready"] == ex["replicas"] or ex["failed"]:
                self._progress.stop_task(task)
        self._progress.refresh()

    def _print_changes(self) -> None:
        events = []
        with self.model._lock:
            for key, rep in self.model.replicas.items():
                for phase, at in rep.history[self._seen.get(key, 0):]:
                    detail = f" ({rep.detail})" if rep.detail and phase == rep.phase else ""
                    events.append((at, key, f"{phase}{detail}"))
                self._seen[key] = len(rep.history)
        for at, key, what in sorted(events):
            self.console.print(f"{at - self.model.started:6.1f}s  {key:<24} {what}", markup=False,
                               highlight=False, soft_wrap=True)

    def _print_end(self) -> None:
        elapsed = self.model.elapsed()
        if self.model.ok:
            self.console.print(f"✓ {self.model.name!r} ready in {elapsed:.1f}s", style="green",
                               markup=False, highlight=False, soft_wrap=True)
        else:
            self.console.print(f"✗ {self.model.name!r} failed after {elapsed:.1f}s: "
                               f"{self.model.reason or 'unknown reason'}", style="red", markup=False,
                               highlight=False, soft_wrap=True)
