"""`log_config`: a YAML file (Jina's format) that replaces the default log handlers in every process.

```yaml
handlers: [StreamHandler]        # any of StreamHandler, FileHandler, RichHandler, SysLogHandler
level: INFO                      # ORCHESTRA_LOG_LEVEL, when set, wins (one switch for a whole run)
configs:
  StreamHandler:
    format: '%(asctime)s:{name:>15}@%(process)2d[%(levelname).1s]:%(message)s'
    formatter: JsonFormatter     # or PlainFormatter (the default)
  FileHandler: {output: 'orchestra-{uptime}.log', format: ..., formatter: ...}
  SysLogHandler: {host: ..., port: ..., ident: ..., format: ...}
  RichHandler: {markup: false, rich_tracebacks: true, show_path: false, log_time_format: '[%x %X]'}
```

Decisions:

* `{name}` (with any format spec, `{name:>15}`) stands for the executor's name, `{replica}` for its
  replica and `{uptime}` for the start time, as in Jina. Only these placeholders are replaced, so a
  format that itself contains braces stays intact.
* `JsonFormatter` writes one JSON object per record with the fields the format names (`%(process)d`
  gives `"process"`, `{name}` gives `"name"`) plus `message`, `executor` and `replica` always, so every
  line of every process parses as JSON and says where it came from. It ignores the format's layout:
  a JSON line has no layout. Tracebacks go into `exc_info` inside the same line.
* The context filter (`orchestra_nb.logs.ContextFilter`) sits on every handler, not on loggers, so
  records from any library logger carry `executor` and `replica` too.
* A mapping with `version: 1` is handed to `logging.config.dictConfig` as it is (the standard format).
"""

from __future__ import annotations

import difflib
import json
import logging
import logging.config
import logging.handlers
import os
import re
import sys
import time
from typing import Any

from orchestra_nb.errors import ConfigError

__all__ = ["HANDLERS", "JsonFormatter", "PlainFormatter", "apply_log_config", "check_log_config",
           "read_log_config"]

HANDLERS = ("FileHandler", "RichHandler", "StreamHandler", "SysLogHandler")
FORMATTERS = ("JsonFormatter", "PlainFormatter")
_PLACEHOLDER = re.compile(r"\{(name|replica|uptime)(![rsa])?(:[^{}]*)?\}")
_PERCENT_FIELD = re.compile(r"%\((\w+)\)")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_UPTIME = time.strftime("%Y%m%d%H%M%S")
_HANDLER_KEYS = {
    "StreamHandler": {"format", "formatter", "level", "stream"},
    "FileHandler": {"format", "formatter", "level", "output", "filename", "mode"},
    "RichHandler": {"format", "formatter", "level", "markup", "rich_tracebacks", "show_path",
                    "log_time_format", "show_time", "show_level"},
    "SysLogHandler": {"format", "formatter", "level", "host", "port", "ident", "facility"},
}


def _fill(fmt: str, context: logging.Filter) -> str:
    values = {"name": getattr(context, "executor", "") or "orchestra",
              "replica": "" if getattr(context, "replica", None) is None else context.replica,  # type: ignore[attr-defined]
              "uptime": _UPTIME}

    def repl(match: re.Match[str]) -> str:
        spec = "{0" + (match[2] or "") + (match[3] or "") + "}"
        return spec.format(values[match[1]]).replace("%", "%%")

    return _PLACEHOLDER.sub(repl, fmt)


class PlainFormatter(logging.Formatter):
    """The format as given, with ANSI colour codes removed (for files and pipes)."""

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the fields the format names, plus message, executor and replica."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, *, fields: list[str] | None = None) -> None:
        super().__init__(fmt, datefmt)
        names = fields if fields is not None else _PERCENT_FIELD.findall(fmt or "")
        if fmt and _PLACEHOLDER.search(fmt) and "name" not in names:
            names.append("name")
        self.fields = list(dict.fromkeys([*names, "message", "executor", "replica"]))

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {}
        for key in self.fields:
            if key == "message":
                out[key] = _ANSI.sub("", record.getMessage())
            elif key == "asctime":
                out[key] = self.formatTime(record, self.datefmt)
            elif key == "name":
                out[key] = getattr(record, "executor", None) or record.name
            else:
                out[key] = getattr(record, key, None)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def read_log_config(log_config: str | dict[str, Any]) -> dict[str, Any]:
    """The config mapping of a path or mapping; ConfigError names the file and what is wrong."""
    if isinstance(log_config, dict):
        return log_config
    path = os.path.abspath(os.path.expanduser(log_config))
    if not os.path.isfile(path):
        raise ConfigError(f"log_config file {log_config!r} not found: {path} does not exist")
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: log_config is not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"log_config {path} must be a mapping with `handlers:`, got {data!r}")
    return data


def check_log_config(log_config: str | dict[str, Any]) -> None:
    """Raise the ConfigError that `apply_log_config` would, without touching logging or opening files
    (YAML loading calls it, so a bad file is reported with the Flow YAML's file:line before a start)."""
    data = read_log_config(log_config)
    if "version" in data:
        return
    unknown = set(data) - {"handlers", "level", "configs"}
    if unknown:
        raise ConfigError(f"log_config: unknown key(s) {sorted(unknown)}; valid: ['configs', 'handlers', "
                          "'level'] (or a logging.config dict with `version: 1`)")
    names = data.get("handlers") or ["StreamHandler"]
    configs = data.get("configs") or {}
    if not isinstance(configs, dict):
        raise ConfigError(f"log_config: `configs` must map handler names to options, got {configs!r}")
    for name in [names] if isinstance(names, str) else names:
        if name not in HANDLERS:
            close = difflib.get_close_matches(str(name), HANDLERS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"log_config: unknown handler {name!r}; {hint}use any of {list(HANDLERS)}")
        cfg = configs.get(name) or {}
        unknown = set(cfg) - _HANDLER_KEYS[name]
        if unknown:
            raise ConfigError(f"log_config: unknown option(s) {sorted(unknown)} for {name}; valid: "
                              f"{sorted(_HANDLER_KEYS[name])}")
        formatter = cfg.get("formatter")
        if formatter is not None and formatter not in FORMATTERS:
            close = difflib.get_close_matches(str(formatter), FORMATTERS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"log_config: unknown formatter {formatter!r}; {hint}use one of {list(FORMATTERS)}")
    level = data.get("level")
    if level is not None and not isinstance(logging.getLevelName(str(level).upper()), int):
        raise ConfigError(f"log_config: unknown level {str(level).upper()!r}; use DEBUG, INFO, WARNING, "
                          "ERROR or CRITICAL")


def _formatter(name: str, fmt: str, raw: str) -> logging.Formatter:
    """A formatter by name (check_log_config has already refused unknown names)."""
    return JsonFormatter(raw) if name == "JsonFormatter" else PlainFormatter(fmt)


def _handler(kind: str, cfg: dict[str, Any], context: logging.Filter) -> logging.Handler:
    handler: logging.Handler
    default_fmt = "%(message)s" if kind == "RichHandler" else \
        "%(asctime)s %(levelname)-7s {name}: %(message)s"
    raw = str(cfg.get("format") or default_fmt)
    fmt = _fill(raw, context)
    if kind == "StreamHandler":
        handler = logging.StreamHandler(sys.stdout if cfg.get("stream") == "stdout" else sys.stderr)
    elif kind == "FileHandler":
        output = str(cfg.get("output") or cfg.get("filename") or "orchestra-{uptime}.log")
        handler = logging.FileHandler(_PLACEHOLDER.sub(lambda m: _fill(m[0], context), output),
                                      mode=str(cfg.get("mode", "a")), encoding="utf-8")
    elif kind == "SysLogHandler":
        address: Any = (cfg["host"], int(cfg.get("port") or 514)) if cfg.get("host") else \
            ("/dev/log" if os.path.exists("/dev/log") else ("localhost", 514))
        handler = logging.handlers.SysLogHandler(address=address)
        if cfg.get("ident"):
            handler.ident = f"{cfg['ident']}: "
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), markup=bool(cfg.get("markup", False)),
                              rich_tracebacks=bool(cfg.get("rich_tracebacks", True)),
                              show_path=bool(cfg.get("show_path", False)),
                              show_time=bool(cfg.get("show_time", True)),
                              show_level=bool(cfg.get("show_level", True)),
                              log_time_format=str(cfg.get("log_time_format", "[%X]")))
    if cfg.get("formatter") or kind != "RichHandler":
        handler.setFormatter(_formatter(str(cfg.get("formatter") or "PlainFormatter"), fmt, raw))
    else:
        handler.setFormatter(logging.Formatter(fmt))
    if cfg.get("level"):
        handler.setLevel(str(cfg["level"]).upper())
    handler.addFilter(context)
    return handler


def _level(value: Any) -> int:
    name = str(os.environ.get("ORCHESTRA_LOG_LEVEL") or value or "INFO").upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise ConfigError(f"log_config: unknown level {name!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def apply_log_config(log_config: str | dict[str, Any], context: logging.Filter) -> None:
    """Replace the root logger's handlers with those `log_config` describes; `context` tags records."""
    data = read_log_config(log_config)
    root = logging.getLogger()
    if "version" in data:
        logging.config.dictConfig(data)
        for handler in root.handlers:
            handler.addFilter(context)
        return
    check_log_config(data)  # keys, handler names, options and formatters: one place checks them
    names = data.get("handlers") or ["StreamHandler"]
    if isinstance(names, str):
        names = [names]
    configs = data.get("configs") or {}
    handlers = [_handler(name, dict(configs.get(name) or {}), context) for name in names]
    level = _level(data.get("level"))
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("uvicorn.access", "uvicorn.error", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
