"""Logging: rich console in the parent, plain or JSON lines in children, relayed to the parent.

Every child writes its log records to stderr, one record per line, tagged with the executor name and
replica; the parent reads those lines, keeps the last ones per process (the panel's Logs tab) and echoes
them to its own console unless it runs in a notebook. `log_config` (a YAML file) replaces the default
handlers in every process.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["ContextFilter", "get_logger", "setup_child"]

LOGGER = "orchestra_nb"
DEFAULT_FORMAT = "%(asctime)s %(levelname)-7s %(executor)s%(replica_suffix)s: %(message)s"


class ContextFilter(logging.Filter):
    """Adds `executor`, `replica` and `replica_suffix` to every record."""

    def __init__(self, name: str, replica: int | None) -> None:
        super().__init__()
        self.executor = name
        self.replica = replica

    def filter(self, record: logging.LogRecord) -> bool:
        record.executor = self.executor
        record.replica = self.replica
        record.replica_suffix = "" if self.replica is None else f"/{self.replica}"
        return True


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)


def level_from_env(default: str = "INFO") -> int:
    level = os.environ.get("ORCHESTRA_LOG_LEVEL", default).upper()
    value = logging.getLevelName(level)
    if not isinstance(value, int):
        from orchestra_nb.errors import ConfigError

        raise ConfigError(f"ORCHESTRA_LOG_LEVEL={level!r} is not a log level; use DEBUG, INFO, WARNING, "
                          "ERROR or CRITICAL")
    return value


def setup_child(log_config: Any, *, name: str, replica: int | None) -> None:
    """Configure logging inside a child process: every record carries executor and replica."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    context = ContextFilter(name, replica)
    if log_config:
        from orchestra_nb.logconfig import apply_log_config

        apply_log_config(log_config, context)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(DEFAULT_FORMAT, "%H:%M:%S"))
    handler.addFilter(context)
    root.addHandler(handler)
    root.setLevel(level_from_env())
    for noisy in ("uvicorn.access", "uvicorn.error", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
