"""What Deployment and Flow share: the lifecycle over a Supervisor, and posting through a client.

States: created → starting → ready → closing → closed (or failed when start fails). `close()` is
idempotent; `post` on anything but a ready orchestration raises `LifecycleError` saying what to do.
The sync API runs over one loop thread owned by the object (DESIGN.md decision 2).
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import threading
from typing import Any, TypeVar

from orchestra_nb.docs import DocList
from orchestra_nb.errors import LifecycleError
from orchestra_nb.spec.models import FlowSpec

__all__ = ["Orchestration", "State"]

OrchestrationT = TypeVar("OrchestrationT", bound="Orchestration")


class State(str, enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


class Orchestration:
    """Base class of Deployment and Flow."""

    _kind = "orchestration"

    def __init__(self) -> None:
        self.state = State.CREATED
        self.base_dir: str | None = None
        self._supervisor: Any = None
        self._loop: Any = None
        self._client: Any = None
        self._lock = threading.RLock()
        self._listeners: list[Any] = []
        self._reloader: Any = None
        self.progress: Any = None  # a StartupProgress from the latest start()
        self._poster: Any = None
        self._ready_event: threading.Event | None = None
        self._start_error: BaseException | None = None

    # ---- spec ----------------------------------------------------------------------------------
    _spec: Any

    @classmethod
    def from_spec(cls: type[OrchestrationT], spec: Any, base_dir: str | None = None) -> OrchestrationT:
        """Build from a spec (what `load_config` does); `base_dir` anchors relative `py_modules`."""
        obj = cls.__new__(cls)
        Orchestration.__init__(obj)
        obj._spec = spec
        obj.base_dir = base_dir
        return obj

    @property
    def name(self) -> str:
        return self.flow_spec().name

    def flow_spec(self) -> FlowSpec:
        raise NotImplementedError

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self, wait: bool = True) -> Orchestration:
        """Start every process and wait until all are ready; raises ExecutorStartupError on failure.

        With `wait=False` it returns at once and the replicas come up in the background (the notebook
        panel shows their progress); `post()` then waits for readiness, and `wait_ready()` waits
        explicitly, raising the start-up error if there was one.
        """
        from orchestra_nb.orchestration import registry
        from orchestra_nb.runtime.supervisor import Supervisor, check_start_method
        from orchestra_nb.spec.topology import validate_topology

        with self._lock:
            if self.state is State.READY:
                return self
            if self.state is State.STARTING:
                if wait:
                    self.wait_ready()
                return self
            if self.state not in (State.CREATED, State.CLOSED, State.FAILED):
                raise LifecycleError(f"cannot start a {self._kind} that is {self.state.value}")
            spec = self.flow_spec()
            validate_topology(spec)
            check_start_method()
            tls = spec.gateway.tls_files(self.base_dir)  # a missing PEM file fails here, before any process
            if tls is not None:
                spec = spec.model_copy(update={"gateway": spec.gateway.model_copy(
                    update={"ssl_certfile": tls[0], "ssl_keyfile": tls[1]})})
            from orchestra_nb.logs import level_from_env

            level_from_env()  # a bad ORCHESTRA_LOG_LEVEL fails here, before any process starts
            if spec.gateway.expose:  # a missing authtoken or HTTP door fails here, before any process
                from orchestra_nb.notebook.tunnel import check_expose

                check_expose(self, spec.gateway.expose)
            registry.register(self)
            self.state = State.STARTING
            self._start_error = None
            self._ready_event = threading.Event()
            from orchestra_nb.progress import StartupProgress

            self.progress = StartupProgress.for_spec(spec)
            self._supervisor = Supervisor(spec, base_dir=self.base_dir, echo=not registry.in_notebook(),
                                          on_line=self._on_line, on_phase=self.progress.update)
        if wait:
            self._bring_up(spec, show_progress=True)
        else:
            def background() -> None:
                with contextlib.suppress(BaseException):  # kept in _start_error for wait_ready()
                    self._bring_up(spec)

            threading.Thread(target=background, name=f"orchestra-nb-start-{spec.name}", daemon=True).start()
        return self

    def wait_ready(self, timeout: float | None = None) -> Orchestration:
        """Wait until a `start(wait=False)` has finished; raise its error if it failed."""
        event = self._ready_event
        if event is not None and not event.wait(timeout):
            raise TimeoutError(f"{self._kind} {self.name!r} was not ready within {timeout} s")
        if self._start_error is not None:
            raise self._start_error
        return self

    def _bring_up(self, spec: FlowSpec, show_progress: bool = False) -> None:
        from orchestra_nb.orchestration import registry
        from orchestra_nb.runtime.loop import LoopThread

        ready_event = self._ready_event
        assert ready_event is not None

        end_progress = self._show_progress() if show_progress else None
        try:
            self._supervisor.start()
            self._loop = LoopThread(f"orchestra-nb-{spec.name}")
            from orchestra_nb.client import AsyncClient, GrpcPoster

            gw = spec.gateway
            protocol = "grpc" if "grpc" in gw.protocol else "http"
            host = "127.0.0.1" if gw.host in ("0.0.0.0", "") else gw.host
            self._client = AsyncClient(host, self._supervisor.ports[protocol], protocol, token=gw.token,
                                       tls=bool(gw.ssl_certfile), ca_file=gw.ssl_certfile,
                                       max_message_size=gw.max_message_size)
            if protocol == "grpc":
                self._poster = GrpcPoster(host, self._supervisor.ports["grpc"], token=gw.token,
                                          tls=bool(gw.ssl_certfile), ca_file=gw.ssl_certfile,
                                          max_message_size=gw.max_message_size)
            with self._lock:
                if self.state is not State.STARTING:  # closed while starting
                    raise LifecycleError(f"{self._kind} {self.name!r} was closed while it started")
                self.state = State.READY
            self.progress.finish(True)
        except BaseException as exc:
            self.progress.finish(False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self._start_error = exc
            with self._lock:
                closed = self.state in (State.CLOSING, State.CLOSED)
                self.state = State.CLOSED if closed else State.FAILED
            self._teardown()
            registry.unregister(self)
            ready_event.set()
            raise
        finally:
            if end_progress is not None:
                end_progress()
        try:
            self._after_ready(spec, announce=show_progress)
        finally:
            ready_event.set()  # wait_ready() and post() go on once the tunnel and reloader are in place

    def _after_ready(self, spec: FlowSpec, announce: bool) -> None:
        from orchestra_nb.orchestration import registry

        if spec.log_config:
            from orchestra_nb import logs
            from orchestra_nb.logconfig import apply_log_config

            apply_log_config(spec.log_config, logs.ContextFilter(spec.name, None))
        if spec.gateway.expose:
            try:
                self.expose(spec.gateway.expose)
            except BaseException:
                self.close()
                raise
        if announce and not registry.in_notebook() and os.environ.get("ORCHESTRA_QUIET", "") != "1":
            # only from the caller's thread (start(wait=True)): a background start must not print into
            # whatever the user is writing at that moment
            from orchestra_nb.summary import print_summary

            print_summary(self)  # on stdout: stderr carries the log records (JSON lines with a JSON config)
            sys.stdout.flush()
        if any(ex.reload for ex in spec.executors):
            from orchestra_nb.runtime.reloader import Reloader

            self._reloader = Reloader(self, self.base_dir)
            self._reloader.start()

    def _show_progress(self) -> Any:
        """Show start-up progress on stderr outside notebooks (ORCHESTRA_QUIET=1 or
        ORCHESTRA_PROGRESS=0 turn it off); returns the function that ends it, or None."""
        from orchestra_nb.orchestration import registry

        if os.environ.get("ORCHESTRA_QUIET", "") == "1" or os.environ.get("ORCHESTRA_PROGRESS", "1") == "0":
            return None
        if registry.in_notebook():  # in the cell's own output, updated in place
            from orchestra_nb.notebook.display import show_start_progress

            return show_start_progress(self.progress)
        from orchestra_nb.progress import ConsoleProgress

        display = ConsoleProgress(self.progress)
        if not display.live:
            # not a terminal: the replicas' own log lines tell the story, and stderr stays machine-
            # readable (every line JSON with a JSON log config)
            return None
        sup = self._supervisor
        relay = None
        if display.live:  # child output goes above the live bars, not through them
            sup.echo = False
            relay = lambda key, line: display.log(line)  # noqa: E731
            self._listeners.append(relay)
        display.start()

        def end() -> None:
            display.stop()
            if relay is not None:
                self._listeners.remove(relay)
                sup.echo = True
        return end

    def plot(self, path: str | None = None, states: dict[str, str] | None = None) -> Any:
        """Draw the topology; in a notebook the result shows itself. With `path`, also write it
        (.svg, .png/.pdf with Graphviz, .mmd/.md Mermaid, .dot). While running, nodes are coloured
        by state."""
        from orchestra_nb.plot import plot, states_from_processes

        if states is None and self._supervisor is not None and self.state is State.READY:
            states = states_from_processes([{"key": c.key, "state": c.state}
                                            for c in self._supervisor.children()])
        return plot(self, path, states)

    def _on_line(self, key: str, line: str) -> None:
        for listener in list(self._listeners):
            listener(key, line)

    def _teardown(self) -> None:
        if "_tunnel" in self.__dict__:  # the public URL goes first, while the gateway still runs
            from orchestra_nb.notebook.tunnel import unexpose

            with contextlib.suppress(Exception):
                unexpose(self)
        if self._reloader is not None:
            self._reloader.stop()
            self._reloader = None
        if self._loop is not None and self._client is not None:
            try:
                self._loop.run(self._client.close(), timeout=5)
            except Exception:  # the loop may already be gone at interpreter exit
                pass
        if self._poster is not None:
            self._poster.close()
            self._poster = None
        if self._loop is not None:
            self._loop.stop()
        if self._supervisor is not None:
            self._supervisor.close()
        self._client = None
        self._loop = None

    def close(self) -> None:
        """Stop every process and release every port; safe to call more than once."""
        from orchestra_nb.orchestration import registry

        with self._lock:
            if self.state in (State.CLOSED, State.CREATED, State.FAILED):
                return
            starting = self.state is State.STARTING
            self.state = State.CLOSING
        if starting and self._supervisor is not None:
            self._supervisor.close(grace=1.0)  # the background start then fails and tears down
            if self._ready_event is not None:
                self._ready_event.wait(30)
        with self._lock:
            try:
                self._teardown()
            finally:
                self.state = State.CLOSED
                registry.unregister(self)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Any:
        import asyncio

        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        await asyncio.to_thread(self.close)

    def block(self, stop_event: threading.Event | None = None) -> None:
        """Serve until `stop_event` is set (or forever); Ctrl-C returns after closing."""
        if self.state is not State.READY:
            self.start()
        event = stop_event or threading.Event()
        try:
            while not event.wait(0.5):
                if self.state is not State.READY:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    # ---- requests ------------------------------------------------------------------------------
    def _ready_client(self, action: str = "post to") -> tuple[Any, Any]:
        if self.state is State.STARTING and self._ready_event is not None:
            self.wait_ready()
        if self.state is not State.READY or self._client is None:
            hint = "use `with f:` or call f.start() first" if self.state in (State.CREATED, State.CLOSED) else \
                "wait until it is ready"
            raise LifecycleError(f"cannot {action} {self._kind} {self.name!r}: it is {self.state.value}; {hint}")
        gateway = self._supervisor.gateway if self._supervisor is not None else None
        if gateway is not None and gateway.state in ("exited", "failed"):  # the gateway is never restarted
            code = gateway.proc.returncode if gateway.proc is not None else "?"
            raise LifecycleError(f"cannot {action} {self._kind} {self.name!r}: its gateway exited (code {code}) "
                                 "and is not restarted; call close() and start() again")
        return self._client, self._loop

    def post(self, on: str, inputs: Any = None, parameters: dict[str, Any] | None = None, **kwargs: Any) -> DocList[Any]:
        """Send docs to endpoint `on`; returns the docs that come back, as a DocList with `.results`.

        Args:
            on: the endpoint, like `'/index'`.
            inputs: a Doc, a list or any iterable of Docs (or plain dicts); None sends an empty request.
            parameters: a dict every handler receives (keys like `'encoder__top_k'` go to the executor
                named `encoder` only).
            **kwargs: `request_size=100` (docs per request; big tensors are also split at ~2 MB),
                `target_executor` (a regular expression on executor names), `timeout` (seconds),
                `return_type` (the Doc subclass to build), `prefetch=8` (requests in flight).

        `.results` holds the dicts handlers returned, by executor name: the dict itself for one request,
        a list of them (one per request) when the inputs were split.
        """
        client, loop = self._ready_client()
        if self._poster is not None:
            return self._poster.post(on, inputs, parameters, **kwargs)  # type: ignore[no-any-return]
        return loop.run(client.post(on, inputs, parameters, **kwargs))  # type: ignore[no-any-return]

    async def post_async(self, on: str, inputs: Any = None, parameters: dict[str, Any] | None = None,
                         **kwargs: Any) -> DocList[Any]:
        client, loop = self._ready_client()
        return await loop.run_async(client.post(on, inputs, parameters, **kwargs))  # type: ignore[no-any-return]

    # ---- introspection -------------------------------------------------------------------------
    @property
    def port(self) -> int | None:
        """The gateway's first port (known once started, or when given)."""
        if self._supervisor is not None and self._supervisor.ports:
            return int(next(iter(self._supervisor.ports.values())))
        gw = self.flow_spec().gateway
        return gw.port[0] if gw.port else None

    @property
    def ports(self) -> dict[str, int]:
        """The gateway's port per protocol while it runs (empty before start and after close)."""
        if self._supervisor is None or self.state not in (State.STARTING, State.READY):
            return {}
        return dict(self._supervisor.ports)

    @property
    def protocols(self) -> list[str]:
        return list(self.flow_spec().gateway.protocol)

    def is_ready(self) -> bool:
        if self.state is not State.READY:
            return False
        try:
            info = self.status()
        except Exception:
            return False
        return all(r.get("state") == "ready" for reps in info.get("executors", {}).values() for r in reps)

    def status(self) -> dict[str, Any]:
        """Topology, every replica's state, pid, device, counters and latency, from the gateway."""
        client, loop = self._ready_client("get the status of")
        info: dict[str, Any] = loop.run(client.info(), timeout=15)
        sup = self._supervisor
        processes = []
        for child in sup.children():
            processes.append({"key": child.key, "pid": child.pid, "state": child.state,
                              "restarts": child.restarts})
        info["processes"] = processes
        info["state"] = self.state.value
        return info

    def pids(self) -> list[int]:
        return self._supervisor.pids() if self._supervisor is not None else []

    def logs(self, key: str | None = None, n: int = 100) -> list[str]:
        """The last log lines of one process (e.g. 'encoder/0', 'gateway') or of all."""
        if self._supervisor is None:
            return []
        children = self._supervisor.children()
        chosen = [c for c in children if key is None or c.key == key or c.key.split("/")[0] == key]
        if key is not None and not chosen:
            raise KeyError(f"no process {key!r}; use an executor name, a replica like "
                           f"{children[0].key if children else 'name/0'!r}, or 'gateway': {[c.key for c in children]}")
        out: list[str] = []
        for child in chosen:
            out.extend(list(child.logs)[-n:])
        return out

    # ---- config and export ---------------------------------------------------------------------
    @classmethod
    def load_config(cls: type[OrchestrationT], source: str, context: dict[str, Any] | None = None) -> OrchestrationT:
        """Load from a YAML file or YAML text (`jtype` must name this class)."""
        from orchestra_nb.errors import ConfigError
        from orchestra_nb.spec.yaml import load_config

        obj = load_config(source, context=context)
        if not isinstance(obj, cls):
            raise ConfigError(f"{source!r} describes a {type(obj).__name__}, not a {cls.__name__} (see its jtype)")
        return obj

    def save_config(self, path: str) -> None:
        """Write the spec as YAML; classes from a notebook or `__main__` go to a module beside it."""
        from orchestra_nb.spec.yaml import save_config

        save_config(self, path)  # type: ignore[arg-type]

    def to_docker_compose_yaml(self, output_path: str | None = None, **kwargs: Any) -> str:
        """Write a Docker Compose file (and build contexts) that runs this spec; returns its text."""
        from orchestra_nb.export import to_docker_compose_yaml

        kwargs.setdefault("base_dir", self.base_dir)
        return str(to_docker_compose_yaml(self.flow_spec(), output_path, **kwargs))

    def to_kubernetes_yaml(self, output_base_path: str, k8s_namespace: str | None = None, **kwargs: Any) -> str:
        """Write a folder of Kubernetes manifests that `kubectl apply -f` accepts as it stands."""
        from orchestra_nb.export import to_kubernetes_yaml

        kwargs.setdefault("base_dir", self.base_dir)
        return str(to_kubernetes_yaml(self.flow_spec(), output_base_path, k8s_namespace=k8s_namespace, **kwargs))

    # ---- notebook and tunnel hooks (implemented in orchestra_nb.notebook) ----------------------------
    def _repr_html_(self) -> str:
        from orchestra_nb.notebook.display import repr_html

        return repr_html(self)

    def _ipython_display_(self) -> None:
        from orchestra_nb.notebook.display import ipython_display

        ipython_display(self)

    def panel(self) -> Any:
        """A live widget with status, logs, endpoints and metrics (needs the notebook extra)."""
        from orchestra_nb.notebook.panel import make_panel

        return make_panel(self)

    def expose(self, provider: str = "ngrok", token: str | None = None, **kwargs: Any) -> Any:
        """Open a public URL to the HTTP gateway; turns on token auth. Returns the URL and token."""
        from orchestra_nb.notebook.tunnel import expose

        return expose(self, provider, token, **kwargs)

    def unexpose(self) -> None:
        from orchestra_nb.notebook.tunnel import unexpose

        unexpose(self)

    def set_token(self, token: str | None) -> None:
        """Require `token` on every gateway request from now on (None turns auth off)."""
        self._ready_client("set a token on")
        sup = self._supervisor
        if sup.gateway is not None and not sup.gateway.control({"cmd": "set_token", "token": token}):
            raise LifecycleError("the gateway did not confirm the new token")
        self._client.token = token
        if self._poster is not None:
            self._poster.token = token

    def scale(self, name: str, replicas: int) -> None:
        """Change an executor's replicas while serving; no request fails on the way."""
        self._ready_client("scale")
        self._supervisor.scale(name, replicas)
        self._sync_spec()

    def reload(self, name: str, uses: Any = None, **changes: Any) -> None:
        """Roll an executor's replicas one by one onto a new class (or re-imported code), no request lost.

        In a notebook: re-run the cell that defines the class, then `f.reload('name', NewClass)`.
        """
        self._ready_client("reload")
        current = self._supervisor.spec.executor(name)
        update = dict(changes)
        if uses is not None:
            update["uses"] = uses
        self._supervisor.reload(name, current.model_copy(update=update) if update else None)
        self._sync_spec()

    def _sync_spec(self) -> None:
        """Carry replica counts and classes changed at run time back into this object's spec."""

    def dry_run(self) -> bool:
        """Send an empty request through the whole graph; True when every hop answered."""
        client, loop = self._ready_client("dry-run")
        loop.run(client.post("/_dry_run", None), timeout=30)
        return True

    def __repr__(self) -> str:
        ports = ", ".join(f"{p}:{n}" for p, n in self.ports.items())
        return f"<{type(self).__name__} {self.name!r} {self.state.value}{' ' + ports if ports else ''}>"

    def __del__(self) -> None:
        # an orchestration nobody can reach any more must not keep processes and ports
        if getattr(self, "state", None) is State.READY:
            with contextlib.suppress(Exception):
                self.close()
