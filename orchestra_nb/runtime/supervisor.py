"""The parent side of the runtime: make the running world match a FlowSpec.

`Supervisor.start()` picks free ports, assigns devices, starts every replica and the gateway at the same
time, and waits until all report ready. When any of them fails, it stops everything it started and raises
`ExecutorStartupError` with the child's traceback. While running, a replica that exits unexpectedly is
restarted (`restart='on-failure'`) with backoff on the same port, so the gateway's channels reconnect;
after `MAX_RESTARTS` failures in a row it stays failed with its last output kept. `close()` is idempotent:
the gateway stops first (so requests in flight finish), then the workers; SIGTERM, wait, SIGKILL.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from orchestra_nb.errors import ExecutorStartupError, LifecycleError
from orchestra_nb.logs import get_logger
from orchestra_nb.runtime.ports import check_free, free_port
from orchestra_nb.runtime.process import ChildProcess
from orchestra_nb.spec.models import ExecutorSpec, FlowSpec

__all__ = ["MAX_RESTARTS", "ReplicaKey", "Supervisor", "check_start_method", "gateway_view"]

log = get_logger("supervisor")
MAX_RESTARTS = 5


@dataclass(frozen=True)
class ReplicaKey:
    executor: str
    shard: int
    replica: int

    def __str__(self) -> str:
        shard = f"/shard{self.shard}" if self.shard else ""
        return f"{self.executor}{shard}/{self.replica}"


def check_start_method() -> None:
    """Children are always fresh interpreters (spawn semantics); say so when another method is asked."""
    method = os.environ.get("ORCHESTRA_MP_START_METHOD", "spawn").strip().lower()
    if method not in ("", "spawn"):
        from orchestra_nb.errors import ConfigError

        raise ConfigError(
            f"ORCHESTRA_MP_START_METHOD={method!r} is not supported: every replica starts as a fresh "
            "interpreter (spawn semantics), which keeps CUDA out of forked children and lets classes "
            "defined in a notebook cell or __main__ travel by value. Unset the variable or set it to 'spawn'.")


def gateway_view(spec: FlowSpec) -> FlowSpec:
    """The spec as the gateway sees it: no user classes, only labels."""
    return spec.model_copy(update={"executors": [
        ex.model_copy(update={"uses": ex.uses_label, "uses_with": {}}) for ex in spec.executors]})


_SOCKET_DIR = re.compile(r"orchestra-nb-(\d+)-")
_LONGEST_SOCKET_ROOT = 60  # + '/orchestra-nb-<pid>-<8 chars>/r<n>.sock' stays under AF_UNIX's limit


def _sweep_socket_dirs(root: str) -> None:
    """Remove the socket folders of orchestrations whose process died before it could (a kernel that
    Jupyter killed, together with its replicas): nothing else would ever remove them."""
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            match = _SOCKET_DIR.match(entry.name)
            if match is None or int(match.group(1)) == os.getpid():
                continue
            try:
                os.kill(int(match.group(1)), 0)
            except ProcessLookupError:
                shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:  # alive, someone else's
                pass


class Supervisor:
    """Starts, watches and stops the processes of one orchestration."""

    def __init__(self, spec: FlowSpec, *, base_dir: str | None = None, echo: bool = True,
                 on_line: Any = None, on_phase: Any = None) -> None:
        self.spec = spec
        self.base_dir = base_dir
        self.echo = echo
        self.on_line = on_line
        self.on_phase = on_phase
        self.workers: dict[ReplicaKey, ChildProcess] = {}
        self.gateway: ChildProcess | None = None
        self.ports: dict[str, int] = {}
        self.addresses: dict[str, list[list[str]]] = {}
        self.devices: dict[ReplicaKey, dict[str, str]] = {}
        self.running = False
        self._closing = False
        self._lock = threading.Lock()
        self._socket_dir: str | None = None
        self._sockets = 0

    # ---- start ---------------------------------------------------------------------------------
    def _address(self, host: str, port: int) -> str:
        """`host:port` for gRPC, plus `#/path.sock` for the gateway's local stream hop."""
        if self._socket_dir is None or os.environ.get("ORCHESTRA_INTERNAL_TRANSPORT", "stream") == "grpc":
            return f"{host}:{port}"
        self._sockets += 1
        return f"{host}:{port}#{os.path.join(self._socket_dir, f'r{self._sockets}.sock')}"

    def _check_fixed_ports(self) -> None:
        """Ports the spec fixes must be free before any process starts: a clear error, nothing left."""
        gw = self.spec.gateway
        for ex in self.spec.executors:
            for port in ex.fixed_ports()[:ex.shards * ex.replicas]:
                check_free(ex.host, port, f"executor {ex.name or 'executor'!r}")
        for protocol in gw.protocol:
            front = gw.port_for(protocol)
            if front:
                check_free(gw.host, front, f"the gateway's {protocol} front door")

    def plan(self) -> None:
        import tempfile

        from orchestra_nb.runtime.devices import assign_devices, discover

        self._check_fixed_ports()
        if self._socket_dir is None and sys.platform != "win32":
            root = tempfile.gettempdir()
            if len(root) > _LONGEST_SOCKET_ROOT and os.path.isdir("/tmp"):
                root = "/tmp"  # a Unix socket's path must fit in about 107 bytes
            _sweep_socket_dirs(root)
            # mode 0700: this user only; the pid tells a later sweep whether its owner still runs
            self._socket_dir = tempfile.mkdtemp(prefix=f"orchestra-nb-{os.getpid()}-", dir=root)

        self.addresses = {}
        for ex in self.spec.executors:
            name = ex.name or "executor"
            fixed = ex.fixed_ports()
            shards = []
            index = 0
            for _shard in range(ex.shards):
                reps = []
                for _r in range(ex.replicas):
                    port = fixed[index] if index < len(fixed) else free_port(ex.host)
                    index += 1
                    reps.append(self._address(ex.host, port))
                shards.append(reps)
            self.addresses[name] = shards
        gw = self.spec.gateway
        self.ports = {p: gw.port_for(p) or free_port(gw.host) for p in gw.protocol}
        self.devices = {}
        inventory = discover() if any(ex.gpus not in (None, 0) or "CUDA_VISIBLE_DEVICES" in ex.env
                                      for ex in self.spec.executors) else None
        placed: collections.Counter[str] = collections.Counter()  # 'auto' spreads over the whole Flow
        for ex in self.spec.executors:
            for key, env in assign_devices(ex, inventory=inventory, placed=placed).items():
                self.devices[ReplicaKey(ex.name or "executor", key[0], key[1])] = env

    def _worker_config(self, ex: ExecutorSpec, shard: int, replica: int, address: str,
                       device_env: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        grpc_address, _, stream_path = address.partition("#")
        host, _, port = grpc_address.rpartition(":")
        name = ex.name or "executor"
        config = {
            "stream_path": stream_path or None,
            "kind": "worker", "spec": ex, "replica_id": replica, "shard_id": shard, "host": host,
            "port": int(port), "base_dir": self.base_dir, "device": device_env.pop("_device", "cpu"),
            "title": f"orchestra-nb: {self.spec.name}/{name}/{replica}" + (f"/shard{shard}" if ex.shards > 1 else ""),
            "log_name": f"{name}/shard{shard}" if ex.shards > 1 else name, "log_config": self.spec.log_config,
            "metrics_port": free_port(host) if self.spec.gateway.metrics else None,
            "tracing": self._tracing(f"{name}/{replica}" + (f"/shard{shard}" if ex.shards > 1 else "")),
        }
        env = {**self.spec.env, **ex.env, **device_env}
        return config, env

    def _tracing(self, who: str) -> dict[str, Any] | None:
        """What a child needs to export spans (tracing=True): its service name and the OTLP endpoint."""
        gw = self.spec.gateway
        return {"service": f"{self.spec.name}/{who}", "endpoint": gw.traces_endpoint} if gw.tracing else None

    def _make_workers(self) -> None:
        self.workers = {}
        for ex in self.spec.executors:
            name = ex.name or "executor"
            for shard, reps in enumerate(self.addresses[name]):
                for replica, address in enumerate(reps):
                    key = ReplicaKey(name, shard, replica)
                    device_env = dict(self.devices.get(key, {}))
                    config, env = self._worker_config(ex, shard, replica, address, device_env)
                    self.workers[key] = ChildProcess(str(key), config, env, on_line=self._line,
                                                     on_exit=self._exited, on_event=self._event)

    def _make_gateway(self) -> None:
        gw = self.spec.gateway
        config = {"kind": "gateway", "spec": gateway_view(self.spec), "addresses": self.addresses,
                  "ports": self.ports, "host": gw.host, "title": f"orchestra-nb: {self.spec.name}/gateway",
                  "log_name": "gateway", "log_config": self.spec.log_config,
                  "metrics_port": free_port(gw.host) if gw.metrics else None,
                  "tracing": self._tracing("gateway")}
        self.gateway = ChildProcess("gateway", config, {**self.spec.env, **gw.env}, on_line=self._line,
                                    on_exit=self._exited, on_event=self._event)

    def start(self) -> None:
        """Start everything and wait until ready; on failure stop it all and raise."""
        try:  # a plan that fails half way (a device it cannot assign) leaves no socket folder either
            self.plan()
            self._make_workers()
            self._make_gateway()
            assert self.gateway is not None
            children = [*self.workers.values(), self.gateway]
            for child in children:
                if self._closing:
                    raise LifecycleError("closed while starting")
                child.start()
            timeout = max([ex.timeout_ready for ex in self.spec.executors] + [self.spec.gateway.timeout_ready])
            deadline = time.monotonic() + timeout
            self._wait_all(children, deadline)
        except BaseException:
            self.close(grace=1.0)  # nothing is serving yet: no need to wait long
            raise
        self.running = True

    def _wait_all(self, children: list[ChildProcess], deadline: float) -> None:
        pending = list(children)
        while pending:
            if self._closing:
                raise LifecycleError("closed while starting")
            for child in list(pending):
                if child.ready.is_set():
                    pending.remove(child)
                    if child.failure is not None or child.state != "ready":
                        raise self._startup_error(child)
            if not pending:
                break
            if time.monotonic() > deadline:
                slow = pending[0]
                raise ExecutorStartupError(
                    f"{self._describe(slow)} was not ready within the timeout; its last output:\n{slow.tail()}",
                    executor=slow.key.split("/")[0])
            pending[0].ready.wait(min(0.05, max(0.0, deadline - time.monotonic())))

    def _describe(self, child: ChildProcess) -> str:
        return "the gateway" if child.key == "gateway" else f"replica {child.key!r}"

    def _startup_error(self, child: ChildProcess) -> ExecutorStartupError:
        failure = child.failure or {}
        executor = child.key.split("/")[0]
        replica = None if child.key == "gateway" else int(child.key.rsplit("/", 1)[1])
        message = failure.get("message") or "it exited"
        tb = failure.get("traceback") or ""
        if not tb:
            tb = child.tail()
        what = "the gateway" if child.key == "gateway" else f"executor {executor!r} (replica {replica})"
        return ExecutorStartupError(f"{what} failed to start: {message}", executor=executor, replica=replica,
                                    remote_traceback=tb)

    # ---- logs and exits ------------------------------------------------------------------------
    def _line(self, child: ChildProcess, line: str) -> None:
        if self.echo:
            os.write(2, (line + "\n").encode(errors="replace"))
        if self.on_line is not None:
            self.on_line(child.key, line)

    def _event(self, child: ChildProcess, event: dict[str, Any]) -> None:
        """Start-up phases to `on_phase(key, phase, at, detail)`: spawning, importing, loading,
        serving, ready or failed, stamped with the parent's monotonic clock."""
        if self.on_phase is None:
            return
        kind = event.get("event")
        phase = event.get("phase") if kind == "phase" else kind
        detail = event.get("detail") if kind == "phase" else event.get("message")
        self.on_phase(child.key, str(phase), float(event["at"]), detail)

    def _exited(self, child: ChildProcess) -> None:
        if not self.running or self._closing or child.stopping:
            return
        spec = self._spec_of(child)
        if child.key == "gateway" or spec is None or spec.restart == "never":
            log.warning("%s exited (code %s)", self._describe(child), child.proc.returncode if child.proc else "?")
            return
        if child.restarts >= MAX_RESTARTS:
            child.state = "failed"
            log.error("%s failed %d times; it stays down. Last output:\n%s", self._describe(child),
                      child.restarts, child.tail())
            return
        child.restarts += 1
        delay = min(0.1 * 2 ** (child.restarts - 1), 5.0)
        threading.Timer(delay, self._restart, args=(child,)).start()

    def _restart(self, child: ChildProcess) -> None:
        with self._lock:
            if self._closing or not self.running:
                return
            log.warning("restarting %s (restart %d)", self._describe(child), child.restarts)
            child.release()
            child.start()

    def _spec_of(self, child: ChildProcess) -> ExecutorSpec | None:
        spec = child.config.get("spec")
        return spec if isinstance(spec, ExecutorSpec) else None

    # ---- changes while running: scale, rolling reload ---------------------------------------------
    def _executor_index(self, name: str) -> int:
        for i, ex in enumerate(self.spec.executors):
            if ex.name == name:
                return i
        raise KeyError(f"no executor named {name!r}; the Flow has {[e.name for e in self.spec.executors]}")

    def _replace_spec(self, name: str, new: ExecutorSpec) -> None:
        index = self._executor_index(name)
        executors = list(self.spec.executors)
        executors[index] = new
        self.spec = self.spec.model_copy(update={"executors": executors})

    def _start_replica(self, ex: ExecutorSpec, shard: int, replica: int) -> tuple[ChildProcess, str]:
        from orchestra_nb.runtime.devices import assign_devices

        name = ex.name or "executor"
        address = self._address(ex.host, free_port(ex.host))
        envs = assign_devices(ex.model_copy(update={"replicas": max(ex.replicas, replica + 1)}))
        device_env = dict(envs.get((shard, replica), {"_device": "cpu"}))
        config, env = self._worker_config(ex, shard, replica, address, device_env)
        child = ChildProcess(str(ReplicaKey(name, shard, replica)), config, env, on_line=self._line,
                             on_exit=self._exited, on_event=self._event)
        child.start()
        if not child.wait_ready(ex.timeout_ready):
            error = self._startup_error(child)
            child.terminate()
            child.release()
            raise error
        return child, address

    def _publish(self, name: str) -> None:
        """Tell the gateway the executor's current replica addresses and wait until it applied them."""
        assert self.gateway is not None
        if not self.gateway.control({"cmd": "set_addresses", "executor": name, "addresses": self.addresses[name]}):
            raise RuntimeError("the gateway did not confirm the new replica addresses")

    def _retire(self, child: ChildProcess) -> None:
        child.terminate()
        if not child.join(10):
            child.kill()
        child.release()

    def scale(self, name: str, replicas: int) -> None:
        """Change the number of replicas per shard while serving, without failing a request."""
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        with self._lock:
            ex = self.spec.executors[self._executor_index(name)]
            current = ex.replicas
            if replicas == current:
                return
            new_spec = ex.model_copy(update={"replicas": replicas})
            if replicas > current:
                for shard in range(ex.shards):
                    for r in range(current, replicas):
                        child, address = self._start_replica(new_spec, shard, r)
                        self.workers[ReplicaKey(name, shard, r)] = child
                        self.addresses[name][shard].append(address)
                self._replace_spec(name, new_spec)
                self._publish(name)
                return
            retired = []
            for shard in range(ex.shards):
                del self.addresses[name][shard][replicas:]
                for r in range(replicas, current):
                    retired.append(self.workers.pop(ReplicaKey(name, shard, r)))
            self._replace_spec(name, new_spec)
            self._publish(name)
        for child in retired:
            self._retire(child)

    def reload(self, name: str, new_spec: ExecutorSpec | None = None) -> None:
        """Roll every replica of an executor, one at a time: start the new one, wait until it is
        ready, switch the gateway to it, then stop the old one."""
        with self._lock:
            ex = new_spec or self.spec.executors[self._executor_index(name)]
            if ex.replicas != self.spec.executors[self._executor_index(name)].replicas:
                raise ValueError("reload keeps the number of replicas; use scale() to change it")
            self._replace_spec(name, ex)
            for shard in range(ex.shards):
                for r in range(ex.replicas):
                    key = ReplicaKey(name, shard, r)
                    old = self.workers[key]
                    child, address = self._start_replica(ex, shard, r)
                    self.workers[key] = child
                    self.addresses[name][shard][r] = address
                    self._publish(name)
                    old.stopping = True
                    self._retire(old)

    # ---- stop ----------------------------------------------------------------------------------
    def close(self, grace: float = 5.0) -> None:
        """Stop every child. Safe to call again (and from another thread while start() runs): each
        call stops whatever is still running."""
        self._closing = True
        self.running = False
        groups: list[list[ChildProcess]] = []
        if self.gateway is not None:
            groups.append([self.gateway])
        groups.append(list(self.workers.values()))
        for group in groups:
            for child in group:
                child.terminate()
            deadline = time.monotonic() + grace
            for child in group:
                if not child.join(max(0.0, deadline - time.monotonic())):
                    child.kill()
            for child in group:
                child.release()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def children(self) -> list[ChildProcess]:
        return [*self.workers.values(), *([self.gateway] if self.gateway else [])]

    def pids(self) -> list[int]:
        return [c.pid for c in self.children() if c.pid is not None]
