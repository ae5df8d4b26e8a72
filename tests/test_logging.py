"""`log_config`: handlers, formatters, levels; JSON lines from every process of a running Flow."""

from __future__ import annotations

import json
import logging
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra_nb import Doc, Flow
from orchestra_nb.errors import ConfigError
from orchestra_nb.logconfig import JsonFormatter, apply_log_config, check_log_config
from orchestra_nb.logs import ContextFilter
from tests.helpers import poll_for
from tests.test_cli import EXAMPLES, OrchestraProcess

JSON_CONFIG = EXAMPLES / "logging.json.yml"
FIELDS = {"asctime", "process", "levelname", "message", "name", "executor", "replica"}


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored (handlers, level) after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_concept_page_json_config_gives_json_with_configured_fields(
        root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    apply_log_config(str(JSON_CONFIG), ContextFilter("encoder", 2))
    logging.getLogger("some.library").info("hello %s", "world")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == FIELDS
    assert (first["message"], first["name"], first["executor"], first["replica"]) == ("hello world", "encoder", "encoder", 2)
    assert first["levelname"] == "INFO" and isinstance(first["process"], int)
    assert "ValueError: boom" in second["exc_info"]


def test_plain_format_fills_name_placeholder(root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    apply_log_config({"handlers": ["StreamHandler"], "level": "DEBUG",
                      "configs": {"StreamHandler": {"format": "{name:>8}@[%(levelname).1s]:%(message)s"}}},
                     ContextFilter("enc", 0))
    logging.getLogger("y").debug("\x1b[31mred\x1b[0m 100%")
    assert capsys.readouterr().err == "     enc@[D]:red 100%\n"


def test_file_handler_and_level(root_logger: logging.Logger, tmp_path: Path) -> None:
    target = tmp_path / "{name}.log"
    apply_log_config({"handlers": ["FileHandler"], "level": "WARNING",
                      "configs": {"FileHandler": {"output": str(target), "formatter": "JsonFormatter",
                                                  "format": "%(levelname)s %(message)s"}}},
                     ContextFilter("ranker", 1))
    logging.getLogger("z").info("dropped")
    logging.getLogger("z").warning("kept")
    for handler in root_logger.handlers:
        handler.flush()
    lines = (tmp_path / "ranker.log").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"levelname": "WARNING", "message": "kept", "executor": "ranker", "replica": 1}]


def test_env_level_wins(root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRA_LOG_LEVEL", "error")
    apply_log_config({"handlers": ["StreamHandler"], "level": "DEBUG"}, ContextFilter("a", None))
    assert root_logger.level == logging.ERROR


def test_syslog_handler_sends_to_the_configured_address(root_logger: logging.Logger) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        apply_log_config({"handlers": ["SysLogHandler"],
                          "configs": {"SysLogHandler": {"host": "127.0.0.1", "port": port, "ident": "orch",
                                                        "format": "{name}: %(message)s"}}},
                         ContextFilter("enc", 0))
        logging.getLogger("s").warning("to syslog")
        data = server.recv(4096).decode()
    assert "orch: enc: to syslog" in data


def test_rich_handler(root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    apply_log_config({"handlers": ["RichHandler"], "configs": {"RichHandler": {"show_path": False}}},
                     ContextFilter("enc", 0))
    logging.getLogger("r").warning("rich line")
    err = capsys.readouterr().err
    assert "rich line" in err and "WARNING" in err


def test_dict_config_is_passed_through(root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    apply_log_config({"version": 1, "disable_existing_loggers": False,
                      "formatters": {"j": {"()": JsonFormatter, "fmt": "%(levelname)s"}},
                      "handlers": {"h": {"class": "logging.StreamHandler", "formatter": "j"}},
                      "root": {"handlers": ["h"], "level": "INFO"}}, ContextFilter("dc", 3))
    logging.getLogger("d").info("std")
    assert json.loads(capsys.readouterr().err) == {"levelname": "INFO", "message": "std", "executor": "dc", "replica": 3}


@pytest.mark.parametrize(("config", "hint"), [
    ({"handlers": ["StreamHandlr"]}, "did you mean 'StreamHandler'?"),
    ({"handlers": ["StreamHandler"], "configs": {"StreamHandler": {"formatter": "JSONFormatter"}}},
     "did you mean 'JsonFormatter'?"),
    ({"handlers": ["StreamHandler"], "configs": {"StreamHandler": {"fromat": "x"}}}, "unknown option(s) ['fromat']"),
    ({"handler": ["StreamHandler"]}, "unknown key(s) ['handler']"),
    ({"level": "LOUD"}, "unknown level 'LOUD'"),
    ("/nonexistent/logging.yml", "/nonexistent/logging.yml does not exist"),
])
def test_config_errors_say_what_to_fix(root_logger: logging.Logger, config: object, hint: str) -> None:
    handlers = list(root_logger.handlers)
    with pytest.raises(ConfigError) as checked:  # what YAML loading runs: the same error, no side effect
        check_log_config(config)  # type: ignore[arg-type]
    assert hint in str(checked.value)
    assert root_logger.handlers == handlers
    with pytest.raises(ConfigError) as info:
        apply_log_config(config, ContextFilter("a", None))  # type: ignore[arg-type]
    assert hint in str(info.value)


def test_flow_log_config_applies_in_every_child(capfd: pytest.CaptureFixture[str]) -> None:
    with Flow(name="logs", log_config=str(JSON_CONFIG)).add(name="first").add(name="second", replicas=2) as flow:
        flow.post("/", [Doc(text="x")])
    flow.close()
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert {(r["executor"], r["replica"]) for r in records} >= {("first", 0), ("second", 0), ("second", 1),
                                                              ("gateway", None)}
    assert all(set(r) >= FIELDS and r["executor"] for r in records)


def test_cli_with_json_config_writes_only_json_lines() -> None:
    proc = OrchestraProcess("flow", "--uses", str(EXAMPLES / "flow-json-logs.yml"))
    try:
        # the start-up summary is a JSON record too, not a panel on stdout
        poll_for(lambda: proc.proc.poll() is None and any("is ready to serve: grpc grpc://" in line
                                                          for line in proc.stderr),
                 timeout=60, what="the start-up summary as a JSON record")
        assert proc.stop(signal.SIGINT) == 0
        proc.close()
        records = [json.loads(line) for line in proc.stderr if line.strip()]
    except BaseException:
        print(proc.output())
        raise
    finally:
        proc.close()
    assert records, proc.output()
    assert [line for line in proc.stdout if line.strip()] == []  # every line of the process is JSON
    assert all(set(r) >= FIELDS and r["executor"] for r in records), records
    executors = {r["executor"] for r in records}
    assert {"upper", "gateway", "shout-json"} <= executors
    assert any(r["message"] == "Flow 'shout-json' stopped" for r in records)
