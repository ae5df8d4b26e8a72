"""The exception hierarchy of orchestra-nb, in one place.

```
OrchestraError
 ├── ConfigError              a spec, YAML file or argument is wrong (file:line when known)
 │    └── TopologyError       cycles, unknown or duplicate names in a Flow
 ├── LifecycleError           an illegal call for the current state (post on a stopped Flow)
 ├── ExecutorStartupError     a replica failed to start; carries the child's traceback
 ├── ExecutorError            a handler raised; carries executor, endpoint, type, remote traceback
 ├── BadRequestError          the request itself is wrong (unknown endpoint, bad docs)
 ├── TransportError           a hop failed: unreachable, timed out, all replicas failed
 ├── WireError                a payload cannot be decoded (never unpickled)
 ├── DeviceError              GPUs asked for that do not exist
 └── MissingExtraError        an optional extra is not installed (names the pip command)
```
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "ConfigError",
    "DeviceError",
    "ExecutorError",
    "ExecutorStartupError",
    "LifecycleError",
    "MissingExtraError",
    "OrchestraError",
    "TopologyError",
    "TransportError",
    "WireError",
]


class OrchestraError(Exception):
    """Base class of every error raised by orchestra-nb."""


class ConfigError(OrchestraError, ValueError):
    """A spec, YAML file or argument is invalid."""


class TopologyError(ConfigError):
    """A Flow's graph is invalid: a cycle, an unknown or a duplicate name."""


class LifecycleError(OrchestraError, RuntimeError):
    """A call that is illegal in the object's current state."""


class ExecutorStartupError(OrchestraError, RuntimeError):
    """A replica failed to start; `remote_traceback` holds the child's traceback."""

    def __init__(self, message: str, *, executor: str = "", replica: int | None = None,
                 remote_traceback: str = "") -> None:
        self.executor = executor
        self.replica = replica
        self.remote_traceback = remote_traceback
        full = message
        if remote_traceback:
            full = f"{message}\n\n--- traceback in the replica ---\n{remote_traceback.rstrip()}"
        super().__init__(full)


class ExecutorError(OrchestraError, RuntimeError):
    """A handler raised an exception inside an executor."""

    def __init__(self, message: str, *, executor: str = "", endpoint: str = "",
                 exc_type: str = "", remote_traceback: str = "") -> None:
        self.executor = executor
        self.endpoint = endpoint
        self.exc_type = exc_type
        self.message = message
        self.remote_traceback = remote_traceback
        head = f"executor {executor!r} failed on endpoint {endpoint!r}: {exc_type}: {message}"
        if remote_traceback:
            head = f"{head}\n\n--- remote traceback ---\n{remote_traceback.rstrip()}"
        super().__init__(head)


class BadRequestError(OrchestraError, ValueError):
    """The request is invalid: unknown endpoint, documents of the wrong shape."""

    def __init__(self, message: str, *, executor: str = "", endpoint: str = "") -> None:
        self.executor = executor
        self.endpoint = endpoint
        super().__init__(message)


class TransportError(OrchestraError, ConnectionError):
    """A hop failed: the target was unreachable, timed out, or every replica failed."""


class WireError(OrchestraError, ValueError):
    """A payload could not be decoded. Payloads are never unpickled."""


class DeviceError(ConfigError):
    """GPUs were requested that do not exist."""


class MissingExtraError(OrchestraError, ImportError):
    """An optional dependency is missing; the message names the `pip install` to run."""
